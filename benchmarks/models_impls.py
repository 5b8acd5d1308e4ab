"""What the model benchmark times: one *configuration* per (library, task) on a whole network and a batch.

A configuration's ``setup(model, x, y)`` does the one-time work (copying and extending the model, building
an operator) and returns a ``Prepared``: ``call()`` is timed; ``extract(call())`` converts its result to
tnderiv's conventions (``docs/whole-models.md``, ``docs/conventions.md``) for the float64 check:
``{canonical parameter name: {quantity: tensor}}`` and, for KFAC, ``{module name: {"A": …, "G": …}}``
(``A`` and ``G`` without the leading group axis). Every call starts from ``.grad = None`` (as a training
loop's ``zero_grad``) and leaves no results on the model, so that consecutive calls see the same memory.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

Extracted = dict[str, dict[str, torch.Tensor]]
STATS = ("sum_grad_squared", "batch_l2", "variance")
# task → the tnderiv quantities it asks for, and its fisher
TASKS: dict[str, tuple[tuple[str, ...], str]] = {
    "grad": (("grad",), "type-2"),
    "per_sample_grad": (("per_sample_grad",), "type-2"),
    "sum_grad_squared": (("sum_grad_squared",), "type-2"),
    "batch_l2": (("batch_l2",), "type-2"),
    "variance": (("variance",), "type-2"),
    "first_order": (STATS, "type-2"),
    "kfac_mc": (("kfac",), "mc"),
    "kfac": (("kfac",), "type-2"),
    "ggn_diag": (("ggn_diag",), "type-2"),
    "ggn_diag_mc": (("ggn_diag",), "mc"),
}
TITLES = {
    "grad": "gradient step (forward + loss.backward())",
    "per_sample_grad": "per-sample gradients",
    "sum_grad_squared": "sum of squared per-sample gradients",
    "batch_l2": "per-sample gradient norms²",
    "variance": "gradient variance",
    "first_order": "first-order statistics (sum_grad_squared + batch_l2 + variance, one call)",
    "kfac_mc": "KFAC, MC Fisher (1 sample)",
    "kfac": "KFAC, type-2 (exact loss-Hessian root; BackPACK: KFLR)",
    "ggn_diag": "exact GGN diagonal",
    "ggn_diag_mc": "GGN diagonal, MC (1 sample)",
}


class Unsupported(Exception):
    """The library refuses this model (a documented limitation, reported as such)."""


@dataclass(frozen=True)
class Prepared:
    call: Callable[[], Any]
    extract: Callable[[Any], Extracted]
    note: str = ""


@dataclass(frozen=True)
class Config:
    library: str
    task: str
    setup: Callable[[nn.Module, torch.Tensor, torch.Tensor], Prepared]

    @property
    def id(self) -> str:
        return f"{self.library}/{self.task}"


def _clear_grads(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


def kfac_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The modules every library gives a KFAC: ``Linear`` and ``Conv2d`` (what BackPACK and curvlinops support)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


# ----- plain torch ------------------------------------------------------------------------------------------
def grad_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Prepared:
    loss_fn = nn.CrossEntropyLoss()

    def call() -> dict[str, torch.Tensor]:
        _clear_grads(model)
        loss_fn(model(x), y).backward()
        return {n: p.grad for n, p in model.named_parameters()}

    return Prepared(call, lambda r: {n: {"grad": g} for n, g in r.items()})


def vmap_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Prepared:
    """``torch.func.vmap(grad)`` over the samples, with ``functional_call`` (the mean loss's ``1/N`` included)."""
    from torch.func import functional_call, grad, vmap

    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    n = x.shape[0]

    def loss_one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return nn.functional.cross_entropy(out, yi.unsqueeze(0)) / n

    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))
    return Prepared(lambda: per_sample(params, x, y), lambda r: {k: {"per_sample_grad": v} for k, v in r.items()})


# ----- tnderiv ---------------------------------------------------------------------------------------------
def tnderiv_setup(task: str) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], Prepared]:
    def setup(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Prepared:
        from tnderiv.model import Curvature

        quantities, fisher = TASKS[task]
        gen = torch.Generator().manual_seed(0)
        curv = Curvature(model, nn.CrossEntropyLoss(), fisher=fisher, mc_samples=1, generator=gen)

        def call() -> Any:
            _clear_grads(model)
            return curv.compute(x, y, quantities)

        return Prepared(call, lambda res: tnderiv_extract(res, quantities, task), "")

    return setup


def tnderiv_extract(res: Any, quantities: tuple[str, ...], task: str) -> Extracted:
    out: Extracted = {}
    for module in res:
        for q, value in res[module].items():
            if q == "kfac":
                if hasattr(value, "A"):
                    out[module] = {"A": value.A[0], "G": value.G[0]}
                continue
            label = "ggn_diag_mc" if (task == "ggn_diag_mc" and q == "ggn_diag") else q
            for local, t in value.items():
                out.setdefault(f"{module}.{local}" if module else local, {})[label] = t
    return out


# ----- BackPACK -----------------------------------------------------------------------------------------------
BACKPACK_EXTENSIONS = {
    "per_sample_grad": (("BatchGrad", "grad_batch", "per_sample_grad"),),
    "sum_grad_squared": (("SumGradSquared", "sum_grad_squared", "sum_grad_squared"),),
    "batch_l2": (("BatchL2Grad", "batch_l2", "batch_l2"),),
    "variance": (("Variance", "variance", "variance"),),
    "first_order": (("SumGradSquared", "sum_grad_squared", "sum_grad_squared"), ("BatchL2Grad", "batch_l2", "batch_l2"),
                    ("Variance", "variance", "variance")),
    "kfac_mc": (("KFAC", "kfac", "kfac"),),
    "kfac": (("KFLR", "kflr", "kfac"),),
    "ggn_diag": (("DiagGGNExact", "diag_ggn_exact", "ggn_diag"),),
    "ggn_diag_mc": (("DiagGGNMC", "diag_ggn_mc", "ggn_diag_mc"),),
}


FIRST_ORDER = ("per_sample_grad", *STATS, "first_order")


def _has_skip_connections(model: nn.Module) -> bool:
    return not isinstance(model, nn.Sequential)


def backpack_setup(task: str) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], Prepared]:
    def setup(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Prepared:
        import backpack
        import backpack.extensions as ext

        base = copy.deepcopy(model)
        names = {id(p): n for n, p in base.named_parameters()}
        spatial = _output_positions(base, x)
        # BackPACK's second-order extensions need its torch.fx converter on graphs that are not a Sequential
        converter = _has_skip_connections(base) and task not in FIRST_ORDER
        try:
            bp_model = backpack.extend(base, use_converter=converter)
        except Exception as error:  # noqa: BLE001 — BackPACK's refusal of the model
            raise Unsupported(f"backpack.extend: {type(error).__name__}: {str(error)[:160]}") from None
        loss_fn = backpack.extend(nn.CrossEntropyLoss())
        specs = BACKPACK_EXTENSIONS[task]
        extensions = [getattr(ext, cls)(mc_samples=1) if cls in ("KFAC", "DiagGGNMC") else getattr(ext, cls)() for cls, _, _ in specs]
        params = [(names[id(p)], p) for p in bp_model.parameters() if id(p) in names]

        def call() -> dict[str, dict[str, Any]]:
            _clear_grads(bp_model)
            with backpack.backpack(*extensions):
                loss_fn(bp_model(x), y).backward()
            out: dict[str, dict[str, Any]] = {}
            for name, p in params:
                for _, attribute, label in specs:
                    if hasattr(p, attribute):
                        out.setdefault(name, {})[label] = getattr(p, attribute)
                        delattr(p, attribute)
            return out

        def extract(raw: dict[str, dict[str, Any]]) -> Extracted:
            out: Extracted = {}
            for name, values in raw.items():
                module, _, local = name.rpartition(".")
                for label, value in values.items():
                    if label != "kfac":
                        out.setdefault(name, {})[label] = value
                    elif local == "weight":  # [G, A], A = S · tnderiv's expand A; G summed over positions (reduce)
                        out[module] = {"A": value[-1] / spatial.get(module, 1), "G_reduce": value[0]}
            return out

        note = "torch.fx converter (use_converter=True)" if converter else ""
        return Prepared(call, extract, note)

    return setup


def _output_positions(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Weight-sharing positions of each Conv2d's output (one forward with hooks)."""
    found: dict[str, int] = {}
    handles = [
        m.register_forward_hook(lambda mod, i, o, name=name: found.__setitem__(name, math.prod(o.shape[2:])))
        for name, m in model.named_modules() if isinstance(m, nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return found


# ----- curvlinops -------------------------------------------------------------------------------------------
def curvlinops_setup(task: str) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], Prepared]:
    def setup(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Prepared:
        from curvlinops import KFACLinearOperator

        base = copy.deepcopy(model)
        modules = kfac_modules(base)
        params = [p for m in modules.values() for p in m.parameters(recurse=False)]
        covered = sum(p.numel() for p in params)
        total = sum(p.numel() for p in base.parameters())
        op = KFACLinearOperator(
            base, nn.CrossEntropyLoss(), params, [(x, y)], check_deterministic=False,
            fisher_type="mc" if task == "kfac_mc" else "type-2", mc_samples=1, kfac_approx="expand",
        )

        def call() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
            _clear_grads(base)
            op._input_covariances, op._gradient_covariances = {}, {}
            op.compute_kronecker_factors()
            return op._input_covariances, op._gradient_covariances

        def extract(raw: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]) -> Extracted:
            inputs, outputs = raw
            return {name: {"A": inputs[name], "G": outputs[name]} for name in inputs}

        note = "" if covered == total else f"Linear/Conv2d parameters only ({covered / total:.1%} of the parameters)"
        return Prepared(call, extract, note)

    return setup


# ----- the configurations ---------------------------------------------------------------------------------------
def configurations(tasks: tuple[str, ...]) -> list[Config]:
    """Every (library, task) pair to run for ``tasks``; the gradient step first (every ratio's baseline)."""
    out = [Config("torch", "grad", grad_step)]
    for task in tasks:
        if task == "grad":
            continue
        out.append(Config("tnderiv", task, tnderiv_setup(task)))
        out.append(Config("backpack", task, backpack_setup(task)))
        if task == "per_sample_grad":
            out.append(Config("torch.func", task, vmap_grad))
        if task in ("kfac", "kfac_mc"):
            out.append(Config("curvlinops", task, curvlinops_setup(task)))
    return out


__all__ = ["STATS", "TASKS", "TITLES", "Config", "Prepared", "Unsupported", "configurations", "kfac_modules"]
