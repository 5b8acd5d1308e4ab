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
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import opt_einsum as oe
import sympy
import torch

from tnderiv.api import _network
from tnderiv.api_kfac_checks import (
    check_flag,
    check_k,
    check_torch,
    input_tensors,
    is_sqrt,
    output_rank,
    structured_request,
)
from tnderiv.api_kfac_operators import KFAC, KroneckerBlock, KroneckerOperator, ParamLayout, param_layout
from tnderiv.api_structured import StructuredGram, structured_gram
from tnderiv.calculus.kfac import (
    INPUT_HALF,
    Approx,
    BiasMode,
    Factor,
    KFACSplit,
    bias_input_factors,
    input_factor,
    output_factor,
    parse_loss_average,
)
from tnderiv.calculus.structured import Structure
from tnderiv.ir import Diagram
from tnderiv.layers.base import LayerNetwork
from tnderiv.plan.backends import backend_of
from tnderiv.plan.bind import Bindings, bind_sizes
from tnderiv.plan.cache import LRUCache, register_cache
from tnderiv.plan.compiled import Plan, get_plan
from tnderiv.plan.constants import constant_array
from tnderiv.plan.lags import LagProgram, cached_lag_program
from tnderiv.plan.memory import SET_BUDGET, SMALLER_BATCH, check_fits, needs_check
from tnderiv.plan.optimizers import cache_key
from tnderiv.simplify.lags import glued_lags

# ----- evaluating factors ----------------------------------------------------------------------------


@dataclass
class _Prepared:
    """A factor's compiled plans (the whole network, or its half then the Gram on the evaluated half) and
    the sizes of the split's legs, bound from the user's tensors before anything runs."""

    factor: Factor
    plans: list[Plan]
    operands: dict[str, Any]
    bindings: Bindings
    sizes: dict[str, int]
    copy_scale: float = 1.0
    lags: LagProgram | None = None  # KFAC-expand's input Gram by lag correlations, where the cost model chose it

    def run(self, label: str = "a KFAC factor") -> tuple[Any, Any]:
        """``(factor, evaluated half or None)``; raises ``MemoryBudgetError`` first if it would not fit."""
        if self.lags is not None:
            return self.lags(self.operands[self.lags.name]), None
        needed = sum(plan.needed_bytes for plan in self.plans) + (self.plans[0].needed_bytes if len(self.plans) > 1 else 0)
        if needs_check(needed):
            half = f"the evaluated half {list(self.plans[0].out_shape)} and its copy, " if len(self.plans) > 1 else ""
            options = ["approx='reduce' (sums the weight-sharing positions first)", SMALLER_BATCH, SET_BUDGET]
            check_fits(label, needed, self.plans[0]._like.device, f"{half}the factor {list(self.plans[-1].out_shape)}", options)
        first = self.plans[0](self.operands)
        if len(self.plans) == 1:
            return first, None
        return self.plans[1]({self.factor.half_name: first, self.factor.copy_name: first * self.copy_scale}), first


def _two_stage(half: Diagram) -> bool:
    """Contract the half once, then its Gram, unless the half is a bare operand."""
    return len(half.nodes) > 1 or bool(half.summed_legs) or half.coefficient != 1


# bound sizes and compiled plans per (factor, shapes, backend, dtype, device, optimizer): a repeated
# call does no sympy work and no canonical hashing (diagrams are built once, not per call)
_PREPARED: LRUCache[tuple[Any, ...]] = LRUCache(maxsize=256)
register_cache("kfac", "KFAC factors prepared: bound sizes and up to 2 plans each", lambda: _PREPARED, 2)


def clear_kfac_cache() -> None:
    """Forget the prepared KFAC factors (bound sizes and plans)."""
    _PREPARED.clear()


def _key(factor: Any, tensors: Mapping[str, Any], like: Any, optimize: Any, *flags: Any) -> tuple[Any, ...]:
    backend = backend_of(like)
    shapes = tuple((name, tuple(t.shape)) for name, t in tensors.items())
    return (factor, shapes, backend.name, backend.device_key(like), backend.dtype_key(like), cache_key(optimize), *flags)


def _prepare(factor: Factor, tensors: Mapping[str, Any], like: Any, optimize: Any, check: Any, keep_half: bool) -> _Prepared:
    names = factor.source.operand_names
    missing = [name for name in names if name not in tensors]
    if missing:
        raise ValueError(
            f"KFAC of this layer needs operands {missing} besides {sorted(tensors)} (e.g. a normalization layer's x_hat); "
            "only layers whose weight VJP splits into x and grad_out are supported"
        )
    operands = {name: tensors[name] for name in names}
    plans, bindings, sizes, copy_scale = _PREPARED.get_or_build(
        _key(factor, operands, like, optimize, keep_half), lambda: _compile(factor, operands, like, optimize, check, keep_half)
    )
    return _Prepared(factor, plans, operands, bindings, sizes, copy_scale)


def _compile(
    factor: Factor, operands: Mapping[str, Any], like: Any, optimize: Any, check: Any, keep_half: bool
) -> tuple[list[Plan], Bindings, dict[str, int], float]:
    bindings = bind_sizes(factor.source, {name: tuple(t.shape) for name, t in operands.items()}, check)
    sizes = {leg: bindings.value(size) for leg, size in factor.source.sizes.items()}
    if factor.half is not None and factor.gram is not None and (keep_half or _two_stage(factor.half)):
        first = _plan(factor.half, operands, like, optimize, check)
        shape = tuple(_prod(sizes, axis) for axis in factor.half_axes)
        gram = _bound(factor.gram, factor, bindings, sizes)
        assert factor.copy_name, "a two-stage factor glues its half to a copy"
        # the copy operand is passed pre-multiplied: a pass over the half, not over the (larger) factor
        copy_scale = float(gram.coefficient)
        second = get_plan(gram.replace(coefficient=1), {factor.half_name: shape, factor.copy_name: shape}, like, optimize)
        return [first, second], bindings, sizes, copy_scale
    glued = _bound(factor.glued, factor, bindings, sizes)
    return [_plan(glued, operands, like, optimize, check)], bindings, sizes, 1.0


def _plan(expr: Diagram, tensors: Mapping[str, Any], like: Any, optimize: Any, check: Any) -> Plan:
    shapes = {name: tuple(tensors[name].shape) for name in expr.operand_names}
    return get_plan(expr, shapes, like, optimize, check)


def _number(expr: sympy.Expr, bindings: Bindings) -> sympy.Expr:
    """``expr`` with its sizes bound: an exact number."""
    known = {k: sympy.Integer(v) for k, v in bindings.items() if not k.is_Symbol}
    value = expr.xreplace(known).xreplace({k: sympy.Integer(v) for k, v in bindings.symbols().items()})
    assert value.is_number, f"{expr} is not a number with sizes {bindings}"
    return value


def _bound(diagram: Diagram, factor: Factor, bindings: Bindings, sizes: Mapping[str, int]) -> Diagram:
    """``diagram`` with its coefficient a number: the factor's scale from the bound leg sizes (it may count
    positions the evaluated half no longer has), the rest from the size symbols."""
    rest = diagram.coefficient / factor.scale.expr(factor.source.sizes)
    value = _number(rest, bindings) * factor.scale.value(sizes)
    return diagram.replace(coefficient=value)


def _constant(diagram: Diagram, bindings: Bindings) -> np.ndarray:
    """A diagram without operands (e.g. a bias's input half glued to itself), evaluated for bound sizes."""
    coefficient = float(_number(diagram.coefficient, bindings))
    if not diagram.nodes:
        return np.array(coefficient)
    sizes = {leg: bindings.value(size) for leg, size in diagram.sizes.items()}
    symbol = {leg: oe.get_symbol(i) for i, leg in enumerate(diagram.sizes)}
    equation = ",".join("".join(symbol[leg] for leg in n.legs) for n in diagram.nodes) + "->" + "".join(symbol[leg] for leg in diagram.open_legs)
    return oe.contract(equation, *(constant_array(n, sizes).astype(np.float64) for n in diagram.nodes)) * coefficient


def _prod(sizes: Mapping[str, int], legs: Sequence[str]) -> int:
    return math.prod(sizes[leg] for leg in legs)


# ----- public functions ------------------------------------------------------------------------------


@dataclass
class _Side:
    """One side (input or output) of KFAC: its split and prepared factor (and, for ``bias="append"``,
    the plan of the weight–bias cross term on the evaluated input half)."""

    split: KFACSplit
    prepared: _Prepared
    own_legs: tuple[str, ...]
    half_open: tuple[str, ...]
    cross: Plan | None = None
    corner: float | None = None
    label: str = "a KFAC factor"

    @property
    def sizes(self) -> dict[str, int]:
        return self.prepared.sizes

    def evaluate(self) -> tuple[Any, Any, Any]:
        """``(factor [G, d, d], half [*lead, G, d] or None, the half as evaluated)``."""
        value, raw = self.prepared.run(self.label)
        groups, d = self.dims()
        half = None if raw is None else self.shape_half(raw)
        return value.reshape(groups, d, d), half, raw

    def dims(self) -> tuple[int, int]:
        """``(G, d)``: the groups and the factor's dimension, from the bound sizes."""
        sizes = self.sizes
        return _prod(sizes, [leg for leg in self.split.group_legs if leg in self.half_open]), _prod(sizes, self.own_legs)

    def shape_half(self, raw: Any) -> Any:
        """The evaluated half (``[G, *lead, d]``, group axis first) as ``[*lead, G, d]``."""
        groups, d = self.dims()
        own = set(self.split.group_legs) | set(self.own_legs)
        lead = [self.sizes[leg] for leg in self.prepared.factor.half_legs if leg not in own]
        return raw.reshape(groups, *lead, d).movedim(0, -2)


def _input_side(
    network: LayerNetwork, tensors: dict[str, Any], approx: Approx, bias: BiasMode, optimize: Any, keep_half: bool
) -> _Side:
    split, factor = input_factor(network, approx)
    x = tensors["x"]
    if network.prepare is not None and set(factor.source.operand_names) & set(network.derived):
        # operands the forward computes from x (a normalization layer's x̂)
        tensors = {**tensors, **network.prepare(tensors)}
    append = bias is BiasMode.APPEND and "bias" in network.params
    prepared = _prepare(factor, tensors, x, optimize, network.check_sizes, keep_half or append)
    if approx is Approx.EXPAND and not (keep_half or append):
        prepared = _with_lags(prepared)
    cross, corner = None, None
    if "bias" in network.params:
        _, cross_factor, own = bias_input_factors(network, approx)
        cross, corner = _PREPARED.get_or_build(
            _key(cross_factor, prepared.operands, x, optimize, append),
            lambda: _bias_parts(cross_factor, own, prepared, x, optimize, append),
        )
    return _Side(split, prepared, split.input_legs, split.input_half.open_legs, cross, corner, "the KFAC input factor A")


# None: the cost model decides per layer (plan.lags); True/False force the lag path where exact / never
LAG_STRATEGY: bool | None = None


def _with_lags(prepared: _Prepared) -> _Prepared:
    """``prepared`` running the lag program of its glued factor (``plan.lags``) where that is exact and cheaper."""
    factor = prepared.factor
    if LAG_STRATEGY is False or glued_lags(factor.glued) is None:
        return prepared
    scale = float(_bound(factor.glued, factor, prepared.bindings, prepared.sizes).coefficient)
    program = cached_lag_program(factor.glued, prepared.sizes, scale, LAG_STRATEGY)
    return prepared if program is None else replace(prepared, lags=program)


def _bias_parts(cross: Factor, own: Factor, prepared: _Prepared, x: Any, optimize: Any, append: bool) -> tuple[Plan | None, float]:
    """The plan of the weight–bias cross term on the evaluated input half (append), and ``A_bb``."""
    corner = float(_constant(own.glued, prepared.bindings))
    if not append:
        return None, corner
    shape = tuple(_prod(prepared.sizes, axis) for axis in cross.half_axes)
    gram = _bound(cross.gram, cross, prepared.bindings, prepared.sizes)  # type: ignore[arg-type]
    return get_plan(gram, {cross.half_name: shape}, x, optimize), corner


def _output_side(
    network: LayerNetwork, grad_out: Any, approx: Approx, loss_average: str | None, sqrt: bool, optimize: Any, keep_half: bool, param: str = "weight"
) -> _Side:
    split, factor = output_factor(network, approx, loss_average, sqrt, param)
    tensors = {"sqrt_out" if sqrt else "grad_out": grad_out}
    prepared = _prepare(factor, tensors, grad_out, optimize, network.check_sizes, keep_half)
    return _Side(split, prepared, split.output_legs, split.output_half.open_legs, label=f"the KFAC output factor G ({param})")


@dataclass
class _InputResult:
    A: Any
    A_bias: Any
    a: Any
    plans: dict[str, tuple[Plan, ...]]


def _finish_inputs(side: _Side) -> _InputResult:
    """Run the input side; for a layer with a bias add ``A_bias`` (separate) or the ones row/column (append)."""
    A, a, raw = side.evaluate()
    plans = {"A": tuple(side.prepared.plans)}
    A_bias = None
    if side.corner is not None:
        groups = A.shape[0]
        corner = A.new_full((groups, 1, 1), side.corner)
        if side.cross is not None:
            A_wb = side.cross({INPUT_HALF: raw}).reshape(groups, -1, 1)
            plans["A_weight_bias"] = (side.cross,)
            A = _cat([_cat([A, A_wb], -1), _cat([A_wb.transpose(-1, -2), corner], -1)], -2)
            if a is not None:
                a = _cat([a, a.new_ones(*a.shape[:-1], 1)], -1)
        else:
            A_bias = corner
    return _InputResult(A, A_bias, a, plans)


def _cat(tensors: Sequence[Any], dim: int) -> Any:
    return torch.cat(list(tensors), dim=dim)


# ----- structured factors (SINGD): Π_struct(Kᵀ A K) from the evaluated half, the d × d factor never formed -----


def _structured_factor(side: _Side, struct: Structure, K: Any, append: bool) -> Any:
    """``Π_struct(Kᵀ F K)`` per group for the side's factor ``F = c Σ_rows h hᵀ``, from its evaluated half alone.

    Returns a ``StructuredGram`` (one group) or a list of them (one per group)."""
    groups, d = side.dims()
    ks = check_k(K, groups, d + int(append))
    prepared = side.prepared
    plan = prepared.plans[0]
    if needs_check(plan.needed_bytes):
        check_fits(side.label, plan.needed_bytes, plan._like.device, f"the evaluated half {list(plan.out_shape)}", [SMALLER_BATCH, SET_BUDGET])
    half = side.shape_half(plan(prepared.operands))  # [*lead, G, d]
    if append:
        half = _cat([half, half.new_ones(*half.shape[:-1], 1)], -1)
    rows = half.reshape(-1, groups, half.shape[-1])  # [R, G, d]
    out = []
    for g in range(groups):
        gram = structured_gram(rows[:, g].T, struct, K=ks[g])
        out.append(StructuredGram(gram.structure, gram.dim, {k: v * prepared.copy_scale for k, v in gram.parts.items()}))
    return out[0] if groups == 1 else out


def kfac_factors_input(
    layer: Any,
    x: Any,
    approx: str = "expand",
    *,
    bias: str = "separate",
    unreduced: bool = False,
    structure: str = "dense",
    K: Any = None,
    optimize: Any = "auto",
    **operands: Any,
) -> Any:
    """The input-side factor ``A`` ``[G, d_in, d_in]`` (``d_in + 1`` with ``bias="append"`` on a layer with a bias).

    expand: ``A = 1/(N·S) Σ_{n,s} a aᵀ`` over samples and the ``S`` weight-sharing positions; reduce:
    ``A = 1/N Σ_n ā āᵀ`` with ``ā`` the average of ``a`` over positions. ``unreduced=True`` returns
    ``(A, a)`` with ``a`` ``[N, *S, G, d_in]`` (expand: the unfolded input) or ``[N, G, d_in]`` (reduce).
    Other operands go by name (a normalization layer's ``running_mean=``, ``running_var=``; a module's own
    running statistics are used unless given).

    ``structure`` (``"diagonal"``, ``"block_diagonal:k"``, ``"hierarchical:k1,k2"``, ``"tril_toeplitz"``,
    ``"triu_toeplitz"``; or ``"dense"`` with ``K``) returns ``Π_struct(Kᵀ A[g] K)`` as a ``StructuredGram``
    (a list of ``G`` of them for a grouped layer), computed from ``a`` with ``structured_gram``: the
    ``d_in × d_in`` factor is never formed. ``K``: ``[d, d]`` tensor or structured matrix (``rmatmat``), or
    a list with one per group. Not with ``unreduced=True``.
    """
    approx_, bias_ = Approx.parse(approx), BiasMode.parse(bias)
    check_flag("unreduced", unreduced)
    struct = structured_request(structure, K, unreduced)
    tensors = input_tensors(layer, x, operands)
    network = _network(layer, {"x": tuple(x.shape)})
    side = _input_side(network, tensors, approx_, bias_, optimize, unreduced or struct is not None)
    if struct is not None:
        return _structured_factor(side, struct, K, side.cross is not None)
    result = _finish_inputs(side)
    return (result.A, result.a) if unreduced else result.A


def kfac_factors_output(
    layer: Any,
    grad_out: Any,
    approx: str = "expand",
    *,
    loss_average: str | None = "batch",
    hessian_sqrt: bool | None = None,
    unreduced: bool = False,
    structure: str = "dense",
    K: Any = None,
    optimize: Any = "auto",
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
    if struct is not None:
        return _structured_factor(_output_side(network, grad_out, approx_, loss_average_, sqrt, optimize, True), struct, K, False)
    G, g, _ = _output_side(network, grad_out, approx_, loss_average_, sqrt, optimize, unreduced).evaluate()
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
    *,
    approx: str = "expand",
    bias: str = "separate",
    loss_average: str | None = "batch",
    optimize: Any = "auto",
    **operands: Any,
) -> KFAC:
    """KFAC from ``x`` and ``grad_out``; by default ``G = N · Σ g gᵀ``: ``grad_out`` is taken as the gradient of a batch-mean loss.

    ``loss_average="batch"`` (the default) scales ``G`` by ``N`` to undo the ``1/N`` a mean-reduced loss put
    in every ``g``; for the gradient of a sum-reduced loss (or a raw ``grad_out``) pass ``loss_average=None``.
    A loss-Hessian square root ``[M, N, *output]`` needs no scale (see ``kfac_factors_output``).

    Returns a ``KFAC`` with ``A``, ``G`` (and ``A_bias``, ``G_bias`` for ``bias="separate"``), ``matvec``,
    ``to_dense`` and ``inverse(damping)``. It approximates the curvature of the loss as reduced, with
    ``G[g] ⊗ A[g]`` per group of the weight. Other operands go by name, as for ``kfac_factors_input``.
    """
    approx_, bias_, loss_average_ = Approx.parse(approx), BiasMode.parse(bias), parse_loss_average(loss_average)
    tensors = input_tensors(layer, x, operands, {"grad_out": grad_out})
    network = _network(layer, {"x": tuple(x.shape)})
    sqrt = is_sqrt(network, grad_out, None)
    ins = _input_side(network, tensors, approx_, bias_, optimize, False)
    outs = _output_side(network, grad_out, approx_, loss_average_, sqrt, optimize, False)
    _check_agree(ins, outs, x, grad_out)
    sizes = {**outs.sizes, **ins.sizes}
    G = outs.evaluate()[0]
    inputs = _finish_inputs(ins)
    plans = {**inputs.plans, "G": tuple(outs.prepared.plans)}
    weight = param_layout(ins.split, sizes)
    if "bias" not in network.params:
        return KFAC((KroneckerBlock((weight,), G, inputs.A),), (weight,), inputs.A, G, None, None, approx_.value, bias_.value, plans)
    bias_split, _, _ = bias_input_factors(network, approx_)
    bias_layout = param_layout(bias_split, sizes)
    if bias_ is BiasMode.APPEND:
        block = KroneckerBlock((weight, bias_layout), G, inputs.A)
        return KFAC((block,), (weight, bias_layout), inputs.A, G, None, None, approx_.value, bias_.value, plans)
    G_bias = G
    _, weight_factor = output_factor(network, approx_, loss_average_, sqrt)
    _, bias_factor = output_factor(network, approx_, loss_average_, sqrt, "bias")
    if bias_factor.glued != weight_factor.glued:
        side = _output_side(network, grad_out, approx_, loss_average_, sqrt, optimize, False, "bias")
        G_bias = side.evaluate()[0]
        plans["G_bias"] = tuple(side.prepared.plans)
    blocks = (KroneckerBlock((weight,), G, inputs.A), KroneckerBlock((bias_layout,), G_bias, inputs.A_bias))
    return KFAC(blocks, (weight, bias_layout), inputs.A, G, inputs.A_bias, G_bias, approx_.value, bias_.value, plans)


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
