"""Public KFAC entry points: factors derived from the layer's diagram, evaluated and cached, as a Kronecker operator.

The operator classes live in ``api_kfac_operators`` and the argument checks in ``api_kfac_checks``;
both are re-exported here (``tnderiv.api_kfac.KFAC`` etc. keep working).

Conventions (docs/conventions.md): ``A`` is the input-side factor ``[G, d_in, d_in]`` (an average over
samples, and over positions for expand), ``G`` the output-side factor ``[G, d_out, d_out]`` (a sum,
rescaled by ``loss_average`` for output gradients). Per group ``g`` the weight block of the curvature is
``G[g] ⊗ A[g]`` on the weight rows ``[d_out, d_in]`` flattened row-major (``kron(G, A)``), blocks for
different groups are zero. ``to_dense()`` and ``matvec`` use the order ``weight.flatten()`` then
``bias.flatten()``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import opt_einsum as oe
import torch

from tnderiv.api import _network, cached_call
from tnderiv.api_kfac_checks import (
    check_flag,
    check_k,
    check_torch,
    deprecated_bias,
    input_tensors,
    is_sqrt,
    output_rank,
    structured_request,
)
from tnderiv.api_kfac_operators import KFAC, KroneckerBlock, KroneckerOperator, ParamLayout, param_layout
from tnderiv.api_structured import StructuredGram, structured_gram
from tnderiv.calculus.kfac import (
    Approx,
    ApproxName,
    BiasMode,
    BiasModeName,
    KFACSplit,
    LossAverage,
    bias_input_factors,
    input_factor,
    output_factor,
    parse_loss_average,
)
from tnderiv.calculus.structured import Structure
from tnderiv.ir import Diagram
from tnderiv.layers.base import LayerNetwork
from tnderiv.plan.bind import Bindings
from tnderiv.plan.compiled import Plan
from tnderiv.plan.constants import constant_array
from tnderiv.plan.gram import GramPlan, get_gram_plan, number
from tnderiv.plan.keys import PlanOptions, call_key
from tnderiv.plan.memory import SET_BUDGET, SMALLER_BATCH, check_fits, needs_check

# ----- evaluating factors ----------------------------------------------------------------------------
# A factor is a glued quantity: one GramPlan (plan.gram) runs it — the half once then its Gram, the glued
# network at once, or (KFAC-expand's A) per-lag correlations, as the cost model chooses. A side (the plan,
# the bias terms and the sizes) is built once per layer, shapes, dtype and device and kept in the call cache.

# None: the cost model decides per layer (plan.lags); True/False force the lag path where exact / never
LAG_STRATEGY: bool | None = None
EXPAND_TO_REDUCE = "approx='reduce' (sums the weight-sharing positions first)"


@dataclass(frozen=True)
class _Side:
    """One side (input or output) of KFAC: its split, the factor's plan and (input side, layer with a bias) the
    weight–bias cross term on the evaluated half (``bias="append"``) and ``A_bb``. Holds no user tensors."""

    split: KFACSplit
    plan: GramPlan
    own_legs: tuple[str, ...]
    half_open: tuple[str, ...]
    label: str
    options: tuple[str, ...]
    prepare: Any = None  # a normalization layer's x̂ from x, computed per call
    cross: GramPlan | None = None
    corner: float | None = None

    @property
    def sizes(self) -> dict[str, int]:
        return self.plan.sizes

    def operands(self, tensors: Mapping[str, Any]) -> dict[str, Any]:
        return {**tensors, **self.prepare(tensors)} if self.prepare is not None else dict(tensors)

    def evaluate(self, tensors: Mapping[str, Any], want_half: bool = False) -> tuple[Any, Any, Any]:
        """``(factor [G, d, d], half [*lead, G, d] if wanted and evaluated else None, the half as evaluated)``;
        checks the memory budget first."""
        self.plan.check_memory(self.label, self.options)
        value, raw = self.plan.run(self.operands(tensors))
        groups, d = self.dims()
        half = self.shape_half(raw) if want_half and raw is not None else None
        return value.reshape(groups, d, d), half, raw

    @cached_property
    def _dims(self) -> tuple[int, int]:
        sizes = self.sizes
        return _prod(sizes, [leg for leg in self.split.group_legs if leg in self.half_open]), _prod(sizes, self.own_legs)

    def dims(self) -> tuple[int, int]:
        """``(G, d)``: the groups and the factor's dimension, from the bound sizes."""
        return self._dims

    def shape_half(self, raw: Any) -> Any:
        """The evaluated half (``[G, *lead, d]``, group axis first) as ``[*lead, G, d]``."""
        groups, d = self.dims()
        own = set(self.split.group_legs) | set(self.own_legs)
        lead = [self.sizes[leg] for leg in self.plan.glued.half_legs if leg not in own]
        return raw.reshape(groups, *lead, d).movedim(0, -2)


def _side(what: tuple[Any, ...], tensors: Mapping[str, Any], opts: PlanOptions, build: Any) -> _Side:
    """The side under the one call key (built on a miss)."""
    return cached_call(call_key(what, tensors, opts.optimize, *opts.key()), build)


def _shapes(names: Sequence[str], tensors: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    missing = [name for name in names if name not in tensors]
    if missing:
        raise ValueError(
            f"KFAC of this layer needs operands {missing} besides {sorted(tensors)} (e.g. a normalization layer's x_hat); "
            "only layers whose weight VJP splits into x and grad_out are supported"
        )
    return {name: tuple(tensors[name].shape) for name in names}


def _constant(diagram: Diagram, bindings: Bindings) -> np.ndarray:
    """A diagram without operands (e.g. a bias's input half glued to itself), evaluated for bound sizes."""
    coefficient = float(number(diagram.coefficient, bindings))
    if not diagram.nodes:
        return np.array(coefficient)
    sizes = {leg: bindings.value(size) for leg, size in diagram.sizes.items()}
    symbol = {leg: oe.get_symbol(i) for i, leg in enumerate(diagram.sizes)}
    equation = ",".join("".join(symbol[leg] for leg in n.legs) for n in diagram.nodes) + "->" + "".join(symbol[leg] for leg in diagram.open_legs)
    return oe.contract(equation, *(constant_array(n, sizes).astype(np.float64) for n in diagram.nodes)) * coefficient


def _prod(sizes: Mapping[str, int], legs: Sequence[str]) -> int:
    return math.prod(sizes[leg] for leg in legs)


def _input_side(
    network: LayerNetwork, tensors: dict[str, Any], approx: Approx, bias: BiasMode, opts: PlanOptions, keep_half: bool
) -> _Side:
    what = ("kfac input", network, approx, bias, keep_half, LAG_STRATEGY)
    return _side(what, tensors, opts, lambda: _build_input_side(network, tensors, approx, bias, opts, keep_half))


def _build_input_side(
    network: LayerNetwork, tensors: dict[str, Any], approx: Approx, bias: BiasMode, opts: PlanOptions, keep_half: bool
) -> _Side:
    split, factor = input_factor(network, approx)
    x = tensors["x"]
    prepare = None
    if network.prepare is not None and set(factor.source.operand_names) & set(network.derived):
        # operands the forward computes from x (a normalization layer's x̂)
        prepare = network.prepare
        tensors = {**tensors, **prepare(tensors)}
    append = bias is BiasMode.APPEND and "bias" in network.params
    staged = keep_half or append
    plan = get_gram_plan(
        factor,
        _shapes(factor.source.operand_names, tensors),
        x,
        opts.optimize,
        network.check_sizes,
        strategy="materialize" if staged else "auto",
        lags=LAG_STRATEGY if approx is Approx.EXPAND and not staged else False,
        **opts.planning(),
    )
    cross, corner = None, None
    if "bias" in network.params:
        _, cross_factor, own = bias_input_factors(network, approx)
        corner = float(_constant(own.glued, plan.bindings))  # type: ignore[arg-type]
        if append:
            cross = get_gram_plan(cross_factor, plan.shapes, x, opts.optimize, network.check_sizes, strategy="materialize", **opts.planning())
    options = (EXPAND_TO_REDUCE, SMALLER_BATCH, SET_BUDGET) if approx is Approx.EXPAND else (SMALLER_BATCH, SET_BUDGET)
    return _Side(split, plan, split.input_legs, split.input_half.open_legs, "the KFAC input factor A", options, prepare, cross, corner)


def _output_side(
    network: LayerNetwork, grad_out: Any, approx: Approx, loss_average: str | None, sqrt: bool, opts: PlanOptions, keep_half: bool, param: str = "weight"
) -> _Side:
    tensors = {"sqrt_out" if sqrt else "grad_out": grad_out}
    what = ("kfac output", network, approx, loss_average, sqrt, keep_half, param)

    def build() -> _Side:
        split, factor = output_factor(network, approx, loss_average, sqrt, param)
        shapes = _shapes(factor.source.operand_names, tensors)
        strategy = "materialize" if keep_half else "auto"
        plan = get_gram_plan(factor, shapes, grad_out, opts.optimize, network.check_sizes, strategy=strategy, **opts.planning())
        options = (EXPAND_TO_REDUCE, SMALLER_BATCH, SET_BUDGET) if approx is Approx.EXPAND else (SMALLER_BATCH, SET_BUDGET)
        return _Side(split, plan, split.output_legs, split.output_half.open_legs, f"the KFAC output factor G ({param})", options)

    return _side(what, tensors, opts, build)


@dataclass
class _InputResult:
    A: Any
    A_bias: Any
    a: Any
    plans: dict[str, tuple[Plan, ...]]


def _finish_inputs(side: _Side, tensors: Mapping[str, Any], want_half: bool = False) -> _InputResult:
    """Run the input side; for a layer with a bias add ``A_bias`` (separate) or the ones row/column (append)."""
    A, a, raw = side.evaluate(tensors, want_half)
    plans = {"A": side.plan.plans}
    A_bias = None
    if side.corner is not None:
        groups = A.shape[0]
        corner = A.new_full((groups, 1, 1), side.corner)
        if side.cross is not None:
            A_wb = side.cross.run_gram(raw).reshape(groups, -1, 1)
            plans["A_weight_bias"] = (side.cross.gram,)  # type: ignore[assignment]
            A = _cat([_cat([A, A_wb], -1), _cat([A_wb.transpose(-1, -2), corner], -1)], -2)
            if a is not None:
                a = _cat([a, a.new_ones(*a.shape[:-1], 1)], -1)
        else:
            A_bias = corner
    return _InputResult(A, A_bias, a, plans)


def _cat(tensors: Sequence[Any], dim: int) -> Any:
    return torch.cat(list(tensors), dim=dim)


# ----- structured factors (SINGD): Π_struct(Kᵀ A K) from the evaluated half, the d × d factor never formed -----


def _structured_factor(side: _Side, tensors: Mapping[str, Any], struct: Structure, K: Any, append: bool) -> Any:
    """``Π_struct(Kᵀ F K)`` per group for the side's factor ``F = c Σ_rows h hᵀ``, from its evaluated half alone.

    Returns a ``StructuredGram`` (one group) or a list of them (one per group)."""
    groups, d = side.dims()
    ks = check_k(K, groups, d + int(append))
    plan = side.plan.half
    assert plan is not None, "a structured factor runs the staged plan"
    if needs_check(plan.needed_bytes):
        check_fits(side.label, plan.needed_bytes, plan._like.device, f"the evaluated half {list(plan.out_shape)}", [SMALLER_BATCH, SET_BUDGET])
    half = side.shape_half(plan.execute(side.operands(tensors)))  # [*lead, G, d]
    if append:
        half = _cat([half, half.new_ones(*half.shape[:-1], 1)], -1)
    rows = half.reshape(-1, groups, half.shape[-1])  # [R, G, d]
    out = []
    for g in range(groups):
        gram = structured_gram(rows[:, g].T, struct, K=ks[g])
        out.append(StructuredGram(gram.structure, gram.dim, {k: v * side.plan.copy_scale for k, v in gram.parts.items()}))
    return out[0] if groups == 1 else out


def kfac_factors_input(
    layer: Any,
    x: Any,
    approx: ApproxName = "expand",
    *,
    bias_mode: BiasModeName = "separate",
    unreduced: bool = False,
    structure: str = "dense",
    K: Any = None,
    optimize: Any = "auto",
    simplify: bool = True,
    memory_limit: int | None = None,
    bias: Any = None,
    **operands: Any,
) -> Any:
    """The input-side factor ``A`` ``[G, d_in, d_in]`` (``d_in + 1`` with ``bias_mode="append"`` on a layer with a bias).

    expand: ``A = 1/(N·S) Σ_{n,s} a aᵀ`` over samples and the ``S`` weight-sharing positions; reduce:
    ``A = 1/N Σ_n ā āᵀ`` with ``ā`` the average of ``a`` over positions. ``unreduced=True`` returns
    ``(A, a)`` with ``a`` ``[N, *S, G, d_in]`` (expand: the unfolded input) or ``[N, G, d_in]`` (reduce).
    Other operands go by name (a normalization layer's ``running_mean=``, ``running_var=``; a module's own
    running statistics are used unless given).

    ``structure`` (``"diagonal"``, ``"block_diagonal:k"``, ``"hierarchical:k1,k2"``, ``"tril_toeplitz"``,
    ``"triu_toeplitz"``; or ``"dense"`` with ``K``) returns ``Π_struct(Kᵀ A[g] K)`` as a ``StructuredGram``
    (a list of ``G`` of them for a grouped layer), computed from ``a`` with ``structured_gram``: the
    ``d_in × d_in`` factor is never formed. ``K``: ``[d, d]`` tensor or structured matrix (``rmatmat``), or
    a list with one per group. Not with ``unreduced=True``. ``simplify=False`` skips the plan-stage rewrites;
    ``memory_limit`` (bytes) bounds every intermediate. ``bias="append"`` is the deprecated spelling of ``bias_mode``.
    """
    approx_, bias_ = Approx.parse(approx), BiasMode.parse(deprecated_bias(bias, bias_mode))
    check_flag("unreduced", unreduced)
    struct = structured_request(structure, K, unreduced)
    tensors = input_tensors(layer, x, operands)
    network = _network(layer, {"x": tuple(x.shape)})
    opts = PlanOptions(optimize, simplify, memory_limit)
    side = _input_side(network, tensors, approx_, bias_, opts, unreduced or struct is not None)
    if struct is not None:
        return _structured_factor(side, tensors, struct, K, side.cross is not None)
    result = _finish_inputs(side, tensors, unreduced)
    return (result.A, result.a) if unreduced else result.A


def kfac_factors_output(
    layer: Any,
    grad_out: Any,
    approx: ApproxName = "expand",
    *,
    loss_average: LossAverage = "batch",
    hessian_sqrt: bool | None = None,
    unreduced: bool = False,
    structure: str = "dense",
    K: Any = None,
    optimize: Any = "auto",
    simplify: bool = True,
    memory_limit: int | None = None,
) -> Any:
    """The output-side factor ``G`` ``[G, d_out, d_out]``; by default ``N · Σ g gᵀ`` (``grad_out`` is taken as the gradient of a batch-mean loss).

    For the gradient of a sum-reduced loss (or a raw ``grad_out``), pass ``loss_average=None``: ``G = Σ g gᵀ``.

    ``grad_out`` is either the gradient of the loss w.r.t. the layer output ``[N, *output]`` (empirical
    Fisher; MC Fisher with sampled labels): ``G = c Σ g gᵀ`` with ``c`` = 1, ``N`` or ``N·S`` for
    ``loss_average`` ``None``, ``"batch"``, ``"batch+positions"`` — or a loss-Hessian square root
    backpropagated to the output ``[M, N, *output]`` (type-2 / MC Fisher, GGN): ``G = Σ_m Σ s sᵀ``,
    which already carries the loss's scaling (``loss_average`` does not apply). Sums run over
    ``n`` and ``s`` (expand) or over ``n`` of position sums (reduce). ``hessian_sqrt`` says which
    where the rank alone cannot (dense layers). ``unreduced=True`` returns ``(G, g)`` with ``g``
    ``[(M,) N, *S, G, d_out]`` (expand) or ``[(M,) N, G, d_out]`` (reduce), before the factor ``c``.

    ``structure`` and ``K`` as for ``kfac_factors_input``: ``Π_struct(Kᵀ G[g] K)`` (same scale ``c``) as a
    ``StructuredGram`` per group (a list for ``G > 1``), from ``g`` alone.
    """
    approx_, loss_average_ = Approx.parse(approx), parse_loss_average(loss_average)
    check_flag("unreduced", unreduced)
    struct = structured_request(structure, K, unreduced)
    if hessian_sqrt is not None:
        check_flag("hessian_sqrt", hessian_sqrt)
    check_torch({"grad_out": grad_out})
    network, sqrt = _output_network(layer, grad_out, hessian_sqrt)
    tensors = {"sqrt_out" if sqrt else "grad_out": grad_out}
    opts = PlanOptions(optimize, simplify, memory_limit)
    if struct is not None:
        side = _output_side(network, grad_out, approx_, loss_average_, sqrt, opts, True)
        return _structured_factor(side, tensors, struct, K, False)
    G, g, _ = _output_side(network, grad_out, approx_, loss_average_, sqrt, opts, unreduced).evaluate(tensors, unreduced)
    return (G, g) if unreduced else G


def _output_network(layer: Any, grad_out: Any, hessian_sqrt: bool | None) -> tuple[LayerNetwork, bool]:
    shape = tuple(grad_out.shape)
    as_grad = _network(layer, {"grad_out": shape})
    as_sqrt = _network(layer, {"grad_out": shape[1:]}) if len(shape) > 1 else as_grad
    grad_fits, sqrt_fits = output_rank(as_grad) == len(shape), output_rank(as_sqrt) == len(shape) - 1
    if hessian_sqrt is None:
        if grad_fits and sqrt_fits:
            raise ValueError(
                f"grad_out of shape {shape} may be an output gradient or a loss-Hessian square root for this layer; "
                "pass hessian_sqrt=True or False (or call tnderiv.kfac with x)"
            )
        hessian_sqrt = sqrt_fits and not grad_fits
    network = as_sqrt if hessian_sqrt else as_grad
    return network, is_sqrt(network, grad_out, hessian_sqrt)


def kfac(
    layer: Any,
    x: Any,
    grad_out: Any,
    approx: ApproxName = "expand",
    *,
    bias_mode: BiasModeName = "separate",
    loss_average: LossAverage = "batch",
    optimize: Any = "auto",
    simplify: bool = True,
    memory_limit: int | None = None,
    bias: Any = None,
    **operands: Any,
) -> KFAC:
    """KFAC from ``x`` and ``grad_out``; by default ``G = N · Σ g gᵀ``: ``grad_out`` is taken as the gradient of a batch-mean loss.

    ``loss_average="batch"`` (the default) scales ``G`` by ``N`` to undo the ``1/N`` a mean-reduced loss put
    in every ``g``; for the gradient of a sum-reduced loss (or a raw ``grad_out``) pass ``loss_average=None``.
    A loss-Hessian square root ``[M, N, *output]`` needs no scale (see ``kfac_factors_output``).

    Returns a ``KFAC`` with ``A``, ``G`` (and ``A_bias``, ``G_bias`` for ``bias_mode="separate"``), ``matvec``,
    ``to_dense`` and ``inverse(damping)``. It approximates the curvature of the loss as reduced, with
    ``G[g] ⊗ A[g]`` per group of the weight. Other operands go by name, as for ``kfac_factors_input``;
    ``simplify``/``memory_limit`` as there. ``bias="append"`` is the deprecated spelling of ``bias_mode``.
    """
    approx_, loss_average_ = Approx.parse(approx), parse_loss_average(loss_average)
    bias_ = BiasMode.parse(deprecated_bias(bias, bias_mode))
    opts = PlanOptions(optimize, simplify, memory_limit)
    tensors = input_tensors(layer, x, operands, {"grad_out": grad_out})
    network = _network(layer, {"x": tuple(x.shape)})
    sqrt = is_sqrt(network, grad_out, None)
    ins = _input_side(network, tensors, approx_, bias_, opts, False)
    outs = _output_side(network, grad_out, approx_, loss_average_, sqrt, opts, False)
    _check_agree(ins, outs, x, grad_out)
    sizes = {**outs.sizes, **ins.sizes}
    out_tensors = {"sqrt_out" if sqrt else "grad_out": grad_out}
    G = outs.evaluate(out_tensors)[0]
    inputs = _finish_inputs(ins, tensors)
    plans = {**inputs.plans, "G": outs.plan.plans}
    weight = param_layout(ins.split, sizes)
    if "bias" not in network.params:
        return KFAC(
            blocks=(KroneckerBlock((weight,), G, inputs.A),), params=(weight,), A=inputs.A, G=G, approx=approx_.value, bias_mode=bias_.value, plans=plans
        )
    bias_split, _, _ = bias_input_factors(network, approx_)
    bias_layout = param_layout(bias_split, sizes)
    if bias_ is BiasMode.APPEND:
        block = KroneckerBlock((weight, bias_layout), G, inputs.A)
        return KFAC(blocks=(block,), params=(weight, bias_layout), A=inputs.A, G=G, approx=approx_.value, bias_mode=bias_.value, plans=plans)
    G_bias = G
    _, weight_factor = output_factor(network, approx_, loss_average_, sqrt)
    _, bias_factor = output_factor(network, approx_, loss_average_, sqrt, "bias")
    if bias_factor.glued != weight_factor.glued:
        side = _output_side(network, grad_out, approx_, loss_average_, sqrt, opts, False, "bias")
        G_bias = side.evaluate(out_tensors)[0]
        plans["G_bias"] = side.plan.plans
    blocks = (KroneckerBlock((weight,), G, inputs.A), KroneckerBlock((bias_layout,), G_bias, inputs.A_bias))
    return KFAC(
        blocks=blocks,
        params=(weight, bias_layout),
        A=inputs.A,
        G=G,
        A_bias=inputs.A_bias,
        G_bias=G_bias,
        approx=approx_.value,
        bias_mode=bias_.value,
        plans=plans,
    )


def _check_agree(ins: _Side, outs: _Side, x: Any, grad_out: Any) -> None:
    """The batch, weight-sharing and group legs must have one size on both sides (checked before running)."""
    legs = (ins.split.batch_leg, *ins.split.shared_legs, *ins.split.group_legs)
    a, b = ins.sizes, outs.sizes
    for leg in legs:
        if leg in a and leg in b and a[leg] != b[leg]:
            raise ValueError(
                f"x has shape {tuple(x.shape)} and grad_out has shape {tuple(grad_out.shape)}: leg {leg} has size "
                f"{a[leg]} from x but {b[leg]} from grad_out"
            )


__all__ = ["KFAC", "KroneckerBlock", "KroneckerOperator", "ParamLayout", "kfac", "kfac_factors_input", "kfac_factors_output"]


def clear_kfac_cache() -> None:
    """Deprecated: KFAC factors live in the one call cache and plan cache now; use ``tnderiv.clear_caches()``."""
    import warnings

    from tnderiv.api import clear_caches

    warnings.warn("clear_kfac_cache() is deprecated; use tnderiv.clear_caches() (KFAC shares the one call and plan cache)", DeprecationWarning, stacklevel=2)
    clear_caches()
