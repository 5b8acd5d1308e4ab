"""Independent float64 oracles of the model benchmark's quantities, and the check of a configuration against them.

Nothing here calls tnderiv or a peer: per-sample gradients are one ``torch.autograd.grad`` per sample;
the statistics are reductions of them; the exact GGN diagonal sums ``(J_nᵀ s_{n,c})²`` over the columns
``s`` of the mean cross-entropy's Hessian root, ``(diag √p − p √pᵀ)/√N``, one backward per (sample,
column); KFAC's factors follow ``docs/conventions.md`` (expand: ``A = 1/(N·S) Σ a aᵀ`` of the unfolded
inputs, ``G = Σ g gᵀ`` of the root columns pulled back to the layer output; BackPACK's ``G`` sums ``g``
over positions first) for every ``Linear`` and ``Conv2d`` (zero padding, no groups: where the peers are right).
Monte-Carlo quantities are random: their ``A`` is checked, their ``G`` and MC GGN diagonal by shape only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from benchmarks.models_impls import Extracted, Prepared, Unsupported, kfac_modules
from benchmarks.runner import compare

TOLERANCE = 1e-7
SHAPE_ONLY = {"ggn_diag_mc"}


def ce_root(logits: torch.Tensor) -> torch.Tensor:
    """Columns of the mean cross-entropy's Hessian root per sample: ``[N, C, C]`` (``H_n = S_n S_nᵀ``)."""
    p = logits.softmax(-1)
    q = p.sqrt()
    return (torch.diag_embed(q) - p.unsqueeze(-1) * q.unsqueeze(-2)) / logits.shape[0] ** 0.5


def oracle(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Extracted:
    """Every checked quantity in tnderiv's conventions, from autograd alone (float64, small batch)."""
    params = {n: p for n, p in model.named_parameters()}
    n = x.shape[0]
    out: Extracted = {name: {} for name in params}
    # per-sample gradients and their statistics
    psg = {name: [] for name in params}
    for i in range(n):
        loss = nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]) / n
        for name, g in zip(params, torch.autograd.grad(loss, list(params.values()))):
            psg[name].append(g)
    for name, gs in psg.items():
        g = torch.stack(gs)
        out[name].update(
            per_sample_grad=g, sum_grad_squared=(g**2).sum(0), batch_l2=(g**2).flatten(1).sum(1),
            variance=(g**2).mean(0) - g.mean(0) ** 2, grad=g.sum(0),
        )
    # the exact GGN diagonal, one backward per (sample, root column)
    with torch.no_grad():
        roots = ce_root(model(x))  # [N, C, C]: column c of sample n is roots[n, :, c]
    diag = {name: torch.zeros_like(p) for name, p in params.items()}
    for i in range(n):
        logits = model(x[i : i + 1])[0]
        for c in range(roots.shape[-1]):
            grads = torch.autograd.grad(logits @ roots[i, :, c], list(params.values()), retain_graph=True)
            for name, g in zip(params, grads):
                diag[name] += g**2
    for name, d in diag.items():
        out[name]["ggn_diag"] = d
        out[name]["ggn_diag_mc"] = d  # compared by shape only
    out.update(_kfac(model, x, roots))
    return out


def _kfac(model: nn.Module, x: torch.Tensor, roots: torch.Tensor) -> Extracted:
    modules = kfac_modules(model)
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Any:
        def record(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            inputs[name], outputs[name] = args[0].detach(), output

        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in modules.items()]
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    names = list(modules)
    columns: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for c in range(roots.shape[-1]):  # samples are independent: one backward gives column c of every sample
        grads = torch.autograd.grad(logits, [outputs[k] for k in names], grad_outputs=roots[:, :, c], retain_graph=True)
        for name, g in zip(names, grads):
            columns[name].append(g)
    out: Extracted = {}
    for name, module in modules.items():
        a = _rows(module, inputs[name])  # [N, S, d_in]
        g = torch.stack(columns[name])  # [C, N, C_out, *O] or [C, N, *S, C_out]
        if isinstance(module, nn.Conv2d):
            g = g.flatten(3).transpose(2, 3)  # [C, N, S, C_out]
        else:
            g = g.reshape(g.shape[0], g.shape[1], -1, g.shape[-1])
        rows = a.shape[0] * a.shape[1]
        A = torch.einsum("nsi,nsj->ij", a, a) / rows
        out[name] = {"A": A, "G": torch.einsum("cnsi,cnsj->ij", g, g)}
        g_bar = g.sum(2)
        out[name]["G_reduce"] = torch.einsum("cni,cnj->ij", g_bar, g_bar)
    return out


def _rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input rows per sample and weight-sharing position: ``[N, S, d_in]``."""
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or module.groups != 1 or isinstance(module.padding, str):
            raise Unsupported("the KFAC oracle unfolds with zero padding and one group")
        u = nn.functional.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)  # [N, d_in, S]
        return u.transpose(1, 2)
    return x.reshape(x.shape[0], -1, x.shape[-1])


def check(prepared: Prepared, task: str, reference: Extracted, *, complete: bool, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """``{status, note, rel_error}`` of one configuration's float64 result against the oracle.

    Every quantity the configuration returns is compared (relative Frobenius error ≤ ``tolerance``); with
    ``complete``, a parameter or module of the oracle that it does not return is an error too.
    """
    result = prepared.extract(prepared.call())
    worst, notes, wrong, checked, missing = 0.0, [], False, 0, []
    mc = task in ("kfac_mc", "ggn_diag_mc")
    scale: dict[str, float] = {}  # per quantity, the largest norm over parameters
    for wanted in reference.values():
        for q, want in wanted.items():
            scale[q] = max(scale.get(q, 0.0), float(want.norm()))
    for key, wanted in reference.items():
        got = result.get(key)
        expect = _expected(task, wanted)
        if not expect:
            continue
        if got is None:
            missing.append(key)
            continue
        for q, want in expect.items():
            value = got.get(q)
            if value is None:
                continue
            checked += 1
            value = value.detach().to(want.dtype)
            if q in SHAPE_ONLY or (mc and q in ("G", "G_reduce")):
                if tuple(value.shape) != tuple(want.shape) or not torch.isfinite(value).all():
                    wrong = True
                    notes.append(f"{key} {q}: shape {list(value.shape)}, expected {list(want.shape)} (or not finite)")
                continue
            if float(want.norm()) <= 1e-6 * scale[q] and value.shape == want.shape:
                # (numerically) zero, e.g. the gradient of attention's key bias: absolute error on the quantity's scale
                error = float((value - want).norm()) / scale[q]
                status, note = ("ok", "") if error <= tolerance else ("wrong", f"absolute error {error:.2e} of the largest")
            else:
                status, note, error = compare(value.to(want.dtype), want, tolerance)
            worst = max(worst, error or 0.0)
            if status != "ok":
                wrong = True
                notes.append(f"{key} {q}: {note}")
    if complete and missing:
        wrong = True
        notes.append(f"missing: {', '.join(missing[:4])}")
    elif missing:
        notes.append(f"not covered: {len(missing)} of {len(missing) + len({k for k in result if k in reference})}")
    if checked == 0:
        return {"status": "wrong", "note": "returned none of the checked quantities", "rel_error": None}
    if task == "kfac_mc":
        notes.append("Monte-Carlo: A checked, G by shape")
    elif task == "ggn_diag_mc":
        notes.append("Monte-Carlo: checked by shape")
    return {"status": "wrong" if wrong else "ok", "note": "; ".join(notes[:4]), "rel_error": worst}


def _expected(task: str, wanted: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if "A" in wanted:  # a KFAC module
        if task not in ("kfac", "kfac_mc"):
            return {}
        return {k: v for k, v in wanted.items() if k in ("A", "G", "G_reduce")}
    keys = {"first_order": ("sum_grad_squared", "batch_l2", "variance")}.get(task, (task,))
    return {k: wanted[k] for k in keys if k in wanted}


__all__ = ["TOLERANCE", "ce_root", "check", "oracle"]
