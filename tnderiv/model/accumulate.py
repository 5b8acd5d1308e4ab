"""Quantities over many batches and ranks, equal to those of one batch that concatenates them all.

With ``reduction="mean"`` batch ``b`` divides its loss by ``D_b`` (samples, or kept positions); the
concatenation divides by ``D = Σ_b D_b``. Every quantity is kept as a sum in the scale of the summed loss
(``D_b``× for quantities linear in the loss, ``D_b²``× for squares of gradients), summed over batches and —
under ``torch.distributed`` — all-reduced over ranks, then divided by the global ``D`` (or ``D²``).
KFAC's input factors are averages over rows (samples, times positions for ``expand``) and are weighted
by their rows. Per-sample quantities are concatenated (each rank keeps its own samples).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from tnderiv.model.batch import rebuild_kfac
from tnderiv.model.quantities import parse_quantities
from tnderiv.model.reduce import ExactCurvature
from tnderiv.model.result import CurvatureResult

# how each per-parameter quantity scales with the loss: power of D_b, and whether batches concatenate
_SCALE = {
    "grad": (1, False),
    "per_sample_grad": (1, True),
    "sum_grad_squared": (2, False),
    "batch_l2": (2, True),
    "ggn_diag": (1, False),
    "ggn_block": (1, False),
    "per_sample_ggn_diag": (1, True),
    "bl89": (1, False),
    "hesscale": (1, False),
    "hesscale_gn": (1, False),
}
_SINGLE_BATCH = ("batch_dot", "ggn_gram")


def _group(process_group: Any) -> Any:
    """The process group to all-reduce over, or None for one process."""
    import torch.distributed as dist

    if process_group is not None:
        return process_group
    if dist.is_available() and dist.is_initialized():
        return dist.group.WORLD
    return None


def _all_reduce(t: torch.Tensor, group: Any) -> torch.Tensor:
    import torch.distributed as dist

    if group is not None:
        # contiguous: ranks may hold the same values in differently permuted layouts (a sum of batches vs one
        # batch's einsum result), and the collective sums storage element by element
        t = t.contiguous()
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def compute_over(curv: Any, batches: Iterable[tuple[Any, torch.Tensor]], quantities: str | Sequence[str], *, set_grad: bool = True) -> CurvatureResult:
    """See ``Curvature.compute_over``."""
    names = curv._check(quantities, set_grad)
    group = _group(curv.process_group)
    world = 1 if group is None else torch.distributed.get_world_size(group)
    inner = list(dict.fromkeys(("grad", *names, *(("sum_grad_squared",) if "variance" in names else ()))))
    single = [q for q in names if q in _SINGLE_BATCH]
    sums: dict[str, dict[str, torch.Tensor]] = {}
    concat: dict[str, dict[str, list[torch.Tensor]]] = {}
    kfac: dict[str, list[tuple[Any, int, int, int]]] = {}
    loss_sum, d_local, n_local, count, last = 0.0, 0, 0, 0, None
    for x, y in batches:
        count += 1
        if single and (count > 1 or world > 1):
            raise ValueError(f"{single} pair samples across batches or ranks: compute them with compute() on one batch")
        res = curv.compute(x, y, tuple(inner), set_grad=False)
        run_d = res._divisor
        loss_sum += float(res.loss) * run_d
        d_local += run_d
        n_local += res.n
        last = res
        for module, entry in res._modules.items():
            for q, value in entry.items():
                if q == "kfac":
                    kfac.setdefault(module, []).append((value, run_d, res.n, _rows(res, module)))
                    continue
                if q in _SINGLE_BATCH or q == "variance":
                    continue
                power, cat = _SCALE[q]
                for local, t in value.items():
                    key = f"{module}.{local}" if module else local
                    scaled = t * run_d**power
                    if cat:
                        concat.setdefault(q, {}).setdefault(key, []).append(scaled)
                    else:
                        sums.setdefault(q, {})[key] = scaled if key not in sums.get(q, {}) else sums[q][key] + scaled
    if last is None:
        raise ValueError("compute_over got no batches")
    like = next(iter(curv.selection.params.values()))
    totals = _all_reduce(torch.tensor([loss_sum, float(d_local), float(n_local)], dtype=torch.float64, device=like.device), group)
    d, n = float(totals[1]), int(totals[2])
    if curv.loss.reduction == "sum":  # each batch's divisor is 1, and so is the concatenation's (not the batch count)
        d = 1.0
    values: dict[str, dict[str, Any]] = {}
    for q, per in sums.items():
        for key, t in per.items():
            values.setdefault(key, {})[q] = _all_reduce(t, group) / d ** _SCALE[q][0]
    for q, per in concat.items():
        for key, parts in per.items():
            values.setdefault(key, {})[q] = torch.cat(parts) / d ** _SCALE[q][0]
    if "variance" in names:
        for per in values.values():
            s1, s2 = per["grad"], per["sum_grad_squared"]
            per["variance"] = s2 / n - (s1 / n) ** 2
    for key in list(values):
        for q in list(values[key]):
            if q not in names:
                del values[key][q]
    if single:
        for key, per in last._per_param().items():
            for q in single:
                if q in per:
                    values.setdefault(key, {})[q] = per[q]
    curvature = {m: _combine_kfac(parts, d, n, curv.options, group) for m, parts in kfac.items()}
    grads = {c: values.get(c, {}).get("grad") for c in curv.selection.params}
    if "grad" not in names:
        grads = {c: _all_reduce(sums["grad"][c], group) / d if c in sums.get("grad", {}) else None for c in curv.selection.params}
    if set_grad:
        accumulate_grads(curv.model, grads)
    loss = torch.tensor(float(totals[0]) / d, dtype=last.loss.dtype)
    gram = last.ggn_gram if "ggn_gram" in names else None
    return CurvatureResult(loss, names, values, curvature, grads, gram, last.rows, n, last.notes, divisor=int(d))


def _rows(res: CurvatureResult, module: str) -> int:
    """Rows behind KFAC's input factor: samples (reduce) or samples × positions (expand)."""
    return res.n * res._positions.get(module, 1)


def _combine_kfac(parts: list[tuple[Any, int, int, int]], d: float, n: int, opts: Any, group: Any) -> Any:
    first = parts[0][0]
    if isinstance(first, ExactCurvature):
        total = _all_reduce(sum(p.matrix * db for p, db, _, _ in parts), group) / d
        return ExactCurvature(first.kind, first.names, first.shapes, total)
    rows = _all_reduce(torch.tensor(float(sum(r for _, _, _, r in parts)), dtype=torch.float64), group)
    A = _all_reduce(sum(k.A * r for k, _, _, r in parts), group) / float(rows)
    A_bias = None if first.A_bias is None else _all_reduce(sum(k.A_bias * r for k, _, _, r in parts), group) / float(rows)
    if opts.fisher == "forward-only":
        return rebuild_kfac(first, A=A, A_bias=A_bias)
    if opts.fisher == "empirical":
        # G_b = c_b Σ g_b g_bᵀ with g_b ∝ 1/D_b; the concatenation has g ∝ 1/D and c = c(N, rows)
        def weight(db: int, nb: int, rb: int) -> float:
            return (db / d) ** 2 / _c(opts.loss_average, nb, rb)

        c = _c(opts.loss_average, n, float(rows) if opts.approx == "expand" else n)
        G = _all_reduce(sum(k.G * weight(db, nb, rb) for k, db, nb, rb in parts), group) * c
        G_bias = None if first.G_bias is None else _all_reduce(sum(k.G_bias * weight(db, nb, rb) for k, db, nb, rb in parts), group) * c
    else:
        G = _all_reduce(sum(k.G * db for k, db, _, _ in parts), group) / d
        G_bias = None if first.G_bias is None else _all_reduce(sum(k.G_bias * db for k, db, _, _ in parts), group) / d
    return rebuild_kfac(first, A=A, A_bias=A_bias, G=G, G_bias=G_bias)


def _c(loss_average: str | None, n: float, rows: float) -> float:
    return {None: 1.0, "batch": float(n), "batch+positions": float(rows)}[loss_average]


def accumulate_grads(model: torch.nn.Module, grads: dict[str, torch.Tensor | None]) -> None:
    """``.grad`` as ``loss.backward()`` leaves it: accumulated into what was there."""
    params = dict(model.named_parameters())
    for name, g in grads.items():
        if g is None:
            continue
        p = params[name]
        if p.grad is None:
            p.grad = g.detach().clone()
        else:
            p.grad.add_(g.detach())


__all__ = ["accumulate_grads", "compute_over", "parse_quantities"]
