"""``tnderiv.Curvature``: every quantity for every layer of a torch model from one forward and one backward.

Forward hooks record each layer's input; one backward gives the loss, the gradients and every layer's
output gradient; the loss-Hessian square root at the model's output is pulled back to every layer in one
batched backward. Modules between the layers are carried by autograd. Per layer, the quantities are the
derived diagrams of the layer engine; modules without a spec fall back to ``torch.func`` (see ``report()``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from tnderiv.calculus.kfac import Approx, BiasMode, parse_loss_average
from tnderiv.model import vivit
from tnderiv.model.accumulate import accumulate_grads, compute_over
from tnderiv.model.batch import BatchValues, Options, compute_batch
from tnderiv.model.columns import Pass, run_model
from tnderiv.model.loss import FISHERS, ModelLoss
from tnderiv.model.quantities import GGN, HESSIAN_DIAGONALS, SAMPLE_WISE, needs_columns, parse_quantities
from tnderiv.model.record import Recorder
from tnderiv.model.result import CurvatureResult
from tnderiv.model.units import Owner, ParamSelector, owners, select
from tnderiv.model.vivit import DirectionalDerivatives, GGNEigen
from tnderiv.plan.memory import MEMORY_LIMIT, SET_BUDGET, SMALLER_BATCH, check_fits

Fisher = Literal["type-2", "mc", "empirical", "forward-only"]


class Curvature:
    """Curvature and gradient statistics of ``model`` under ``loss_fn`` (``CrossEntropyLoss``, ``MSELoss``,
    ``BCEWithLogitsLoss``; reduction ``mean`` or ``sum``).

    ``fisher``: ``"type-2"`` (exact loss-Hessian square root), ``"mc"`` (``mc_samples`` sampled columns from
    ``generator``), ``"empirical"`` (the gradients), or, for KFAC only, ``"forward-only"`` (``G = I``).
    ``approx``, ``loss_average`` and ``kfac_bias`` mean what ``approx``, ``loss_average`` and ``bias_mode`` mean
    for ``tnderiv.kfac``. ``params`` selects parameters (names, modules or a predicate ``(name, p) → bool``;
    default: all trainable). ``memory_limit`` (bytes) chunks the pulled-back columns. A module without a KFAC
    (fallback, tied or repeated parameters) gets its exact GGN block, or its diagonal when it has more than
    ``max_block`` parameters.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        *,
        fisher: Fisher = "type-2",
        approx: Literal["expand", "reduce"] = "expand",
        loss_average: Literal["batch", "batch+positions"] | None = "batch",
        kfac_bias: Literal["separate", "append"] = "separate",
        mc_samples: int = 1,
        generator: torch.Generator | None = None,
        params: ParamSelector = None,
        memory_limit: int | None = None,
        max_block: int = 4096,
        process_group: Any = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.loss_fn = loss_fn
        self.loss = ModelLoss.from_module(loss_fn)
        if fisher not in FISHERS:
            raise ValueError(f"fisher={fisher!r} is not supported; expected one of {list(FISHERS)}")
        if not isinstance(mc_samples, int) or isinstance(mc_samples, bool) or mc_samples < 1:
            raise ValueError(f"mc_samples={mc_samples!r}: expected an int ≥ 1")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if memory_limit is not None and (not isinstance(memory_limit, int) or isinstance(memory_limit, bool) or memory_limit < 1):
            raise ValueError(f"memory_limit={memory_limit!r}: expected a number of bytes ≥ 1, or None")
        if not isinstance(max_block, int) or max_block < 1:
            raise ValueError(f"max_block={max_block!r}: expected an int ≥ 1")
        self.options = Options(
            fisher,
            Approx.parse(approx).value,
            parse_loss_average(loss_average),
            BiasMode.parse(kfac_bias, "kfac_bias").value,
            mc_samples,
            generator,
            memory_limit,
            max_block,
        )
        self.selection = select(model, params)
        self.process_group = process_group

    def __repr__(self) -> str:
        o = self.options
        return (
            f"Curvature({type(self.model).__name__}, loss={self.loss.name}/{self.loss.reduction}, fisher={o.fisher!r}, "
            f"approx={o.approx!r}, params={len(self.selection.params)})"
        )

    # ----- one batch -----------------------------------------------------------------------------
    def compute(self, x: Any, y: torch.Tensor, quantities: str | Sequence[str] = ("grad",), *, set_grad: bool = True) -> CurvatureResult:
        """The requested quantities on the batch ``(x, y)`` (``x`` a tensor, a tuple ``model(*x)`` or a dict
        ``model(**x)``; the batch size is ``y.shape[0]``). ``set_grad``: fill ``.grad`` as ``loss.backward()`` would."""
        names = self._check(quantities, set_grad)
        run, values = self._run(x, y, names)
        self._hessian_diagonals(x, y, names, values)
        result = self._result(run, values, names)
        if set_grad:
            accumulate_grads(self.model, run.param_grads)
        return result

    def _check(self, quantities: Any, set_grad: Any) -> tuple[str, ...]:
        names = parse_quantities(quantities)
        if not isinstance(set_grad, bool):
            raise TypeError(f"set_grad={set_grad!r}: expected a bool")
        fisher = self.options.fisher
        if fisher == "forward-only" and any(q in GGN for q in names):
            raise ValueError("fisher='forward-only' (G = I) is defined for 'kfac' only; use 'type-2', 'mc' or 'empirical' for GGN quantities")
        coupled = [(n, m) for n, m in self.model.named_modules() if _couples_samples(m)]
        if coupled:
            name, module = coupled[0]
            # the empirical Fisher's columns are per-sample gradients: undefined when samples are coupled
            sample_wise = [q for q in names if q in SAMPLE_WISE or (fisher == "empirical" and q in GGN)]
            if sample_wise or needs_columns(names, fisher):
                what = sample_wise or [q for q in names if q in GGN or q == "kfac"]
                raise ValueError(
                    f"{what} are not defined for this model: module {name} ({type(module).__name__}) is in train mode and "
                    "couples the samples of a batch; put it in eval mode, or ask for batch-level quantities "
                    "('grad', 'kfac' with fisher='empirical' or 'forward-only')"
                )
            selected = {id(p) for p in self.selection.params.values()}
            held = [(n, m) for n, m in coupled if any(id(p) in selected for p in m.parameters(recurse=False))]
            if "kfac" in names and held:
                name, module = held[0]
                raise ValueError(
                    f"'kfac' is not defined for module {name} ({type(module).__name__}): it is in train mode and couples the "
                    "samples of a batch; put it in eval mode, or exclude its parameters with params="
                )
        return names

    def recorded_pass(self, x: Any, y: torch.Tensor) -> tuple[Pass, list[Owner]]:
        """One recorded forward and backward of the batch, and the owners that compute the selected parameters."""
        sel = self.selection
        trainable = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        run = run_model(self.model, self.loss, Recorder(sel.record), x, y, trainable)
        for uses in run.uses.values():
            for use in uses:
                use.check_unchanged()
        called = {name for name, uses in run.uses.items() if uses}
        found, self._unused = owners(sel, called, [c for c in sel.params if run.param_grads.get(c) is None])
        return run, found

    def square_root(self, run: Pass) -> torch.Tensor | None:
        """The loss-Hessian square root ``[M, N, *F]`` at the output (type-2, mc), checked against the memory
        budget before it is allocated; None for the empirical Fisher (its columns are the gradients)."""
        o = self.options
        if o.fisher not in ("type-2", "mc"):
            return None
        _check_columns_fit(run, o)
        return self.loss.hessian_sqrt(run.output, run.y, o.fisher, o.mc_samples, o.generator)

    def _run(self, x: Any, y: torch.Tensor, names: Sequence[str]) -> tuple[Pass, BatchValues]:
        run, found = self.recorded_pass(x, y)
        sqrt = self.square_root(run) if needs_columns(names, self.options.fisher) else None
        with torch.no_grad(), _no_autocast(run.output):
            values = compute_batch(run, found, names, sqrt, self.options) if _layer_quantities(names) else BatchValues({}, {}, None, [])
        return run, values

    def _hessian_diagonals(self, x: Any, y: torch.Tensor, names: Sequence[str], values: BatchValues) -> None:
        """BL89 / HesScale / HesScaleGN diagonals (their own backward pass over a sequential model)."""
        from tnderiv.model.hesscale import hessian_diagonal

        for method in (q for q in names if q in HESSIAN_DIAGONALS):
            _, diagonals = hessian_diagonal(self.model, self.loss_fn, x, y, method=method, params=list(self.selection.params))
            for module, per in diagonals.items():
                for local, value in per.items():
                    values.values.setdefault(f"{module}.{local}" if module else local, {})[method] = value

    def _result(self, run: Pass, values: BatchValues, names: Sequence[str]) -> CurvatureResult:
        per_param = {c: dict(v) for c, v in values.values.items()}
        grads = {c: run.param_grads.get(c) for c in self.selection.params}
        if "grad" in names:
            for c, g in grads.items():
                per_param.setdefault(c, {})["grad"] = torch.zeros_like(self.selection.params[c]) if g is None else g
        notes = [f"{c} is not used in the forward: its quantities are zero or absent" for c in self._unused]
        return CurvatureResult(
            run.loss, names, per_param, values.curvature, grads, values.gram, values.rows, run.n, notes,
            divisor=run.divisor, positions=values.positions,
        )

    # ----- the GGN's low-rank structure (ViViT) ----------------------------------------------------------
    def ggn_eigen(
        self, x: Any, y: torch.Tensor, k: int | None = None, *, params: Sequence[str] | None = None, subsampling: Sequence[int] | None = None
    ) -> GGNEigen:
        """The ``k`` largest eigenpairs (None: all non-zero ones) of the GGN, or of its block over ``params``
        (canonical names), from the ``[M·N, M·N]`` Gram matrix. ``subsampling``: the samples whose columns
        estimate the curvature (the estimate is rescaled by ``N / len(subsampling)``, as ViViT does)."""
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
            raise ValueError(f"k={k!r}: expected an int ≥ 1 or None (all non-zero eigenvalues)")
        run, found, sqrt, scale = self._columns_for(x, y, params, subsampling)
        with torch.no_grad(), _no_autocast(run.output):
            return vivit.ggn_eigen(run, found, sqrt, self.options, k, scale)

    def directional_derivatives(
        self, x: Any, y: torch.Tensor, directions: Mapping[str, torch.Tensor], *, subsampling: Sequence[int] | None = None
    ) -> DirectionalDerivatives:
        """Per-sample ``γ[n, k] = g_nᵀ e_k`` and ``λ[n, k] = e_kᵀ G_n e_k`` along ``directions`` ``{canonical: [K, *p]}``
        (e.g. ``ggn_eigen(...).eigenvectors``), without forming per-sample gradients of derived layers."""
        if not isinstance(directions, Mapping) or not directions:
            raise TypeError("directions must be a non-empty dict {parameter name: [K, *parameter.shape]}")
        ks = {name: int(t.shape[0]) for name, t in directions.items()}
        if len(set(ks.values())) != 1:
            raise ValueError(f"directions have different numbers of directions K per parameter: {ks}")
        params = dict(self.selection.params)
        for name, t in directions.items():
            if name not in params or tuple(t.shape[1:]) != tuple(params[name].shape):
                expected = list(params[name].shape) if name in params else "a selected parameter"
                raise ValueError(f"directions[{name!r}] has shape {list(t.shape)}; expected [K, *{expected}]")
        run, found, sqrt, _ = self._columns_for(x, y, list(directions), subsampling)
        with torch.no_grad(), _no_autocast(run.output):
            return vivit.directional_derivatives(run, found, sqrt, self.options, directions)

    def newton_step(
        self, x: Any, y: torch.Tensor, k: int, damping: float, *, params: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """ViViT's directionally damped Newton step ``−Σ_k (gᵀ e_k) / (λ_k + damping) e_k`` over the top-``k``
        GGN eigenvectors (of the block over ``params``), per parameter (canonical names)."""
        eigen = self.ggn_eigen(x, y, k, params=params)
        derivatives = self.directional_derivatives(x, y, eigen.eigenvectors)
        return vivit.newton_step(eigen, derivatives, damping)

    def _columns_for(
        self, x: Any, y: torch.Tensor, params: Sequence[str] | None, subsampling: Sequence[int] | None
    ) -> tuple[Pass, list[Any], torch.Tensor | None, float]:
        """Run the batch; the owners of ``params``; square-root columns (zero outside ``subsampling``) and their rescaling."""
        if self.options.fisher == "forward-only":
            raise ValueError("fisher='forward-only' has no GGN; use 'type-2', 'mc' or 'empirical'")
        self._check(("ggn_gram",), False)
        run, found = self.recorded_pass(x, y)
        found = vivit.restrict(found, params)
        sqrt, scale = self.square_root(run), 1.0
        if subsampling is not None:
            idx = sorted(set(int(i) for i in subsampling))
            if not idx or idx[0] < 0 or idx[-1] >= run.n or len(idx) != len(list(subsampling)):
                raise ValueError(f"subsampling={list(subsampling)!r}: expected distinct sample indices in [0, {run.n})")
            mask = torch.zeros(run.n, dtype=torch.bool, device=run.output.device)
            mask[idx] = True
            scale = run.n / len(idx)
            if sqrt is None:
                raise ValueError("subsampling= needs square-root columns: fisher='type-2' or 'mc'")
            sqrt = sqrt * mask.reshape(1, -1, *([1] * (sqrt.ndim - 2))).to(sqrt.dtype)
        return run, found, sqrt, scale

    # ----- several batches ---------------------------------------------------------------------------
    def compute_over(
        self, batches: Iterable[tuple[Any, torch.Tensor]], quantities: str | Sequence[str] = ("grad",), *, set_grad: bool = True
    ) -> CurvatureResult:
        """The quantities over all ``(x, y)`` in ``batches``, as if computed on their concatenation (and, with
        ``torch.distributed`` initialized or ``process_group`` given, on the concatenation over all ranks)."""
        return compute_over(self, batches, quantities, set_grad=set_grad)


def _check_columns_fit(run: Pass, opts: Options) -> None:
    """Refuse, before allocating, square-root columns that would not fit: ``S`` ``[M, N, *F]`` plus one chunk of
    columns at every recorded output (all ``M`` at once unless ``memory_limit`` chunks them)."""
    out = run.output
    m = opts.mc_samples if opts.fisher == "mc" else math.prod(out.shape[1:])
    per_column = sum(t.numel() * t.element_size() for uses in run.uses.values() for use in uses for t in use.outputs)
    chunk = m if opts.memory_limit is None else max(1, min(m, opts.memory_limit // max(per_column, 1)))
    needed = m * out.numel() * out.element_size() + chunk * per_column
    detail = f"{m} loss-Hessian columns of the output {list(out.shape)}, {chunk} at a time pulled back to every layer"
    options = [MEMORY_LIMIT.replace("over the batch", "over the columns"), "fisher='mc' with a few mc_samples", SMALLER_BATCH, SET_BUDGET]
    check_fits(f"the {opts.fisher} columns", needed, out.device, detail, options)


def _layer_quantities(names: Sequence[str]) -> bool:
    return any(q != "grad" and q not in HESSIAN_DIAGONALS for q in names)


def _couples_samples(module: nn.Module) -> bool:
    """Batch norm in train mode (or without running statistics) normalizes with statistics of the whole batch."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return isinstance(module, _BatchNorm) and (module.training or not module.track_running_stats)


def _no_autocast(like: torch.Tensor) -> Any:
    """Layer quantities run outside autocast, in at least float32."""
    return torch.autocast(like.device.type, enabled=False)


__all__ = ["Curvature"]
