"""Public KFAC entry points: factors derived from the layer's diagram, and the Kronecker operator they define.

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
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import opt_einsum as oe
import sympy
import torch

from tnderiv.api import BUFFERS, _network, check_tensors
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
from tnderiv.ir import Diagram, terms_of
from tnderiv.layers.base import LayerNetwork
from tnderiv.plan.backends import backend_of
from tnderiv.plan.bind import Bindings, bind_sizes
from tnderiv.plan.cache import LRUCache, register_cache
from tnderiv.plan.compiled import Plan, get_plan
from tnderiv.plan.constants import constant_array
from tnderiv.plan.lags import LagProgram, lag_program
from tnderiv.plan.memory import SET_BUDGET, SMALLER_BATCH, check_fits, needs_check
from tnderiv.plan.optimizers import cache_key

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


# ----- the Kronecker operator ------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamLayout:
    """How the entries of a parameter map to a block ``[G, d_out, d_in]`` (``d_in = 1`` for a bias)."""

    name: str
    shape: tuple[int, ...]
    leg_shape: tuple[int, ...]
    perm: tuple[int, ...]
    blocks: tuple[int, int, int]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def to_blocks(self, v: Any) -> Any:
        """``v`` shaped like the parameter → ``[G, d_out, d_in]``."""
        return v.reshape(self.leg_shape).permute(self.perm).reshape(self.blocks)

    def from_blocks(self, b: Any) -> Any:
        """``[G, d_out, d_in]`` → shaped like the parameter."""
        permuted = tuple(self.leg_shape[p] for p in self.perm)
        inverse = tuple(int(i) for i in np.argsort(self.perm))
        return b.reshape(permuted).permute(inverse).reshape(self.shape)


def _layout(split: KFACSplit, sizes: Mapping[str, int]) -> ParamLayout:
    legs = split.param_legs
    leg_shape = tuple(sizes[leg] for leg in legs)
    order = (*split.group_legs, *split.output_legs, *split.input_legs)
    perm = tuple(legs.index(leg) for leg in order)
    shape, start = [], 0
    for length in split.param_groups:
        shape.append(math.prod(leg_shape[start : start + length]))
        start += length
    blocks = (_prod(sizes, split.group_legs), _prod(sizes, split.output_legs), _prod(sizes, split.input_legs))
    return ParamLayout(split.param, tuple(shape), leg_shape, perm, blocks)


@dataclass(frozen=True)
class KroneckerBlock:
    """``left ⊗ right`` per group on the parameters ``layouts`` (joined along ``d_in``).

    With ``weights`` (``[G, d_out, d_in]``) the block is ``(left ⊗ right) diag(weights) (left ⊗ right)ᵀ``
    (an eigendecomposition: how inverses are stored).
    """

    layouts: tuple[ParamLayout, ...]
    left: Any
    right: Any
    weights: Any = None

    def apply(self, v: Any) -> Any:
        """``[G, d_out, d_in]`` → the block times ``v``, same shape."""
        if self.weights is None:
            return self.left @ v @ self.right.transpose(-1, -2)
        inner = self.left.transpose(-1, -2) @ v @ self.right
        return self.left @ (self.weights * inner) @ self.right.transpose(-1, -2)

    def dense(self) -> Any:
        """``[G, d_out·d_in, d_out·d_in]``."""
        g, a, b = self.left.shape[0], self.left.shape[-1], self.right.shape[-1]
        # per-group Kronecker product left[g] ⊗ right[g] (operator algebra, not a layer quantity)
        kron = (self.left[:, :, None, :, None] * self.right[:, None, :, None, :]).reshape(g, a * b, a * b)
        if self.weights is None:
            return kron
        return kron @ (self.weights.reshape(g, -1, 1) * kron.transpose(-1, -2))


@dataclass(frozen=True)
class KroneckerOperator:
    """A block-diagonal operator on ``(weight, bias)`` made of Kronecker blocks."""

    blocks: tuple[KroneckerBlock, ...]
    params: tuple[ParamLayout, ...]

    @property
    def numel(self) -> int:
        """Number of parameters the operator acts on."""
        return sum(p.numel for p in self.params)

    def matvec(self, v: Any) -> Any:
        """The operator times ``v``: a flat ``[P]`` vector (``weight.flatten()`` then ``bias``) or a dict by name."""
        tensors = self._split(v)
        out: dict[str, Any] = {}
        for block in self.blocks:
            parts = [layout.to_blocks(tensors[layout.name]) for layout in block.layouts]
            result = block.apply(torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0])
            start = 0
            for layout in block.layouts:
                width = layout.blocks[2]
                out[layout.name] = layout.from_blocks(result[..., start : start + width])
                start += width
        if isinstance(v, Mapping):
            return out
        return _cat_flat([out[p.name] for p in self.params])

    def __matmul__(self, v: Any) -> Any:
        return self.matvec(v)

    def to_dense(self) -> Any:
        """The dense ``[P, P]`` matrix (small layers only)."""
        first = self.blocks[0].left
        dense = torch.zeros(self.numel, self.numel, dtype=first.dtype, device=first.device)
        offsets = dict(zip((p.name for p in self.params), np.cumsum([0] + [p.numel for p in self.params]).tolist()))
        for block in self.blocks:
            parts = []
            for layout in block.layouts:
                index = torch.arange(offsets[layout.name], offsets[layout.name] + layout.numel, device=first.device)
                parts.append(layout.to_blocks(index))
            index = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
            flat = index.reshape(index.shape[0], -1)
            values = block.dense()
            for g in range(flat.shape[0]):
                dense[flat[g][:, None], flat[g][None, :]] = values[g]
        return dense

    def _split(self, v: Any) -> dict[str, Any]:
        if isinstance(v, Mapping):
            unknown = set(v) - {p.name for p in self.params}
            missing = {p.name for p in self.params} - set(v)
            if unknown or missing:
                raise ValueError(f"v has entries {sorted(v)}; expected exactly {[p.name for p in self.params]}")
            for p in self.params:
                if tuple(v[p.name].shape) != p.shape:
                    raise ValueError(f"v[{p.name!r}] has shape {tuple(v[p.name].shape)}; expected {p.shape}")
            return dict(v)
        if not hasattr(v, "shape") or tuple(v.shape) != (self.numel,):
            shape = tuple(v.shape) if hasattr(v, "shape") else type(v).__name__
            raise ValueError(f"v has shape {shape}; expected a flat vector [{self.numel}] or a dict {{name: tensor}}")
        out, start = {}, 0
        for p in self.params:
            out[p.name] = v[start : start + p.numel].reshape(p.shape)
            start += p.numel
        return out


def _cat_flat(tensors: Sequence[Any]) -> Any:
    return torch.cat([t.reshape(-1) for t in tensors])


@dataclass(frozen=True)
class KFAC(KroneckerOperator):
    """KFAC of a layer: ``A`` ``[G, d_in, d_in]``, ``G`` ``[G, d_out, d_out]`` and, for ``bias="separate"``,
    ``A_bias`` ``[G, 1, 1]`` and ``G_bias`` ``[G, d_out, d_out]`` (``None`` without a bias).

    The weight block is ``G[g] ⊗ A[g]`` per group (``bias="append"``: on ``[weight | bias]`` rows,
    ``A`` then has ``d_in + 1`` rows). ``plans`` are the compiled plans that ran, by factor name.
    """

    A: Any = None
    G: Any = None
    A_bias: Any = None
    G_bias: Any = None
    approx: str = "expand"
    bias: str = "separate"
    plans: Mapping[str, tuple[Plan, ...]] = field(default_factory=dict)

    def inverse(self, damping: float = 0.0, *, damp: str = "exact") -> KroneckerOperator:
        """``(KFAC + damping·I)⁻¹`` (``damp="exact"``) or ``(A + √δ I)⁻¹ ⊗ (G + √δ I)⁻¹`` per block
        (``damp="factors"``), from eigendecompositions of the factors."""
        if not isinstance(damping, (int, float)) or isinstance(damping, bool) or damping < 0:
            raise ValueError(f"damping={damping!r}: expected a non-negative number")
        if damp not in ("exact", "factors"):
            raise ValueError(f"damp={damp!r} is not supported; expected 'exact' or 'factors'")
        blocks = []
        for block in self.blocks:
            sigma, left = torch.linalg.eigh(block.left)
            lam, right = torch.linalg.eigh(block.right)
            if damp == "exact":
                weights = 1.0 / (sigma[:, :, None] * lam[:, None, :] + damping)
            else:
                root = math.sqrt(damping)
                weights = 1.0 / ((sigma[:, :, None] + root) * (lam[:, None, :] + root))
            blocks.append(KroneckerBlock(block.layouts, left, right, weights))
        return KroneckerOperator(tuple(blocks), self.params)


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
        prepared = _with_lags(prepared, x, optimize)
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


def _with_lags(prepared: _Prepared, x: Any, optimize: Any) -> _Prepared:
    """``prepared`` running the lag program of its glued factor (``plan.lags``) where that is exact and cheaper."""
    factor = prepared.factor
    (program,) = _PREPARED.get_or_build(
        _key(factor, prepared.operands, x, optimize, "lags", LAG_STRATEGY),
        lambda: (
            lag_program(
                factor.glued, prepared.sizes, float(_bound(factor.glued, factor, prepared.bindings, prepared.sizes).coefficient), LAG_STRATEGY
            ),
        ),
    )
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


def _output_rank(network: LayerNetwork) -> int:
    return len(terms_of(network.forward)[0].open_axis_groups)


def _is_sqrt(network: LayerNetwork, grad_out: Any, hessian_sqrt: bool | None) -> bool:
    rank = _output_rank(network)
    if hessian_sqrt is not None:
        expected = rank + 1 if hessian_sqrt else rank
        if grad_out.ndim != expected:
            what = "a loss-Hessian square root [M, N, *output]" if hessian_sqrt else "an output gradient [N, *output]"
            raise ValueError(f"grad_out has shape {tuple(grad_out.shape)}; {what} needs {expected} axes for this layer")
        return hessian_sqrt
    if grad_out.ndim == rank:
        return False
    if grad_out.ndim == rank + 1:
        return True
    raise ValueError(
        f"grad_out has shape {tuple(grad_out.shape)}; expected the output gradient with {rank} axes [N, *output] "
        f"or a loss-Hessian square root with {rank + 1} axes [M, N, *output]"
    )


def _check_torch(tensors: Mapping[str, Any]) -> None:
    """Validate like every entry point, then require torch tensors (the Kronecker operator uses torch.linalg)."""
    check_tensors(tensors)
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} is a {type(value).__module__}.{type(value).__name__}; KFAC needs torch tensors")
        if 0 in value.shape:
            raise ValueError(
                f"{name} has shape {tuple(value.shape)} with an empty axis; KFAC needs at least one sample and position "
                "(its factors average over them)"
            )


def _input_tensors(layer: Any, x: Any, operands: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``x``, other operands by name and a module's running statistics, checked (torch, one dtype and device)."""
    tensors = {"x": x, **{name: value for name, value in operands.items() if value is not None}}
    if isinstance(layer, torch.nn.Module):
        for name in BUFFERS:
            if name not in tensors and isinstance(getattr(layer, name, None), torch.Tensor):
                tensors[name] = getattr(layer, name).detach()
    _check_torch({**tensors, **(extra or {})})
    return tensors


def _check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name}={value!r}: expected a bool")


# ----- structured factors (SINGD): Π_struct(Kᵀ A K) from the evaluated half, the d × d factor never formed -----


def _structured_request(structure: Any, K: Any, unreduced: bool) -> Structure | None:
    """The parsed structure, or None for today's dense factor (``structure="dense"`` without ``K``)."""
    struct = Structure.parse(structure)
    if struct.kind == "dense" and K is None:
        return None
    if unreduced:
        raise ValueError(
            f"structure={structure!r} (or K=) with unreduced=True is not supported; "
            "take the half with unreduced=True and pass its rows to tnderiv.structured_gram"
        )
    return struct


def _check_k(K: Any, groups: int, d: int) -> list[Any]:
    """``K`` per group: one ``[d, d]`` tensor or structured matrix (``rmatmat``) for all groups, or a list of ``G``."""
    ks = list(K) if isinstance(K, (list, tuple)) else [K] * groups
    if len(ks) != groups:
        raise ValueError(f"K is a list of {len(ks)}; expected one K for all groups or a list of {groups} (one per group)")
    for k in ks:
        if isinstance(k, torch.Tensor):
            if tuple(k.shape) != (d, d):
                raise ValueError(f"K has shape {list(k.shape)}; expected [{d}, {d}] (the factor's dimension)")
        elif k is not None and not callable(getattr(k, "rmatmat", None)):
            raise TypeError(f"K must be a [{d}, {d}] tensor or a structured matrix with rmatmat, got {type(k).__name__}")
    return ks


def _structured_factor(side: _Side, struct: Structure, K: Any, append: bool) -> Any:
    """``Π_struct(Kᵀ F K)`` per group for the side's factor ``F = c Σ_rows h hᵀ``, from its evaluated half alone.

    Returns a ``StructuredGram`` (one group) or a list of them (one per group)."""
    groups, d = side.dims()
    ks = _check_k(K, groups, d + int(append))
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
    _check_flag("unreduced", unreduced)
    struct = _structured_request(structure, K, unreduced)
    tensors = _input_tensors(layer, x, operands)
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
    _check_flag("unreduced", unreduced)
    struct = _structured_request(structure, K, unreduced)
    if hessian_sqrt is not None:
        _check_flag("hessian_sqrt", hessian_sqrt)
    _check_torch({"grad_out": grad_out})
    network, sqrt = _output_network(layer, grad_out, hessian_sqrt)
    if struct is not None:
        return _structured_factor(_output_side(network, grad_out, approx_, loss_average_, sqrt, optimize, True), struct, K, False)
    G, g, _ = _output_side(network, grad_out, approx_, loss_average_, sqrt, optimize, unreduced).evaluate()
    return (G, g) if unreduced else G


def _output_network(layer: Any, grad_out: Any, hessian_sqrt: bool | None) -> tuple[LayerNetwork, bool]:
    shape = tuple(grad_out.shape)
    as_grad = _network(layer, {"grad_out": shape})
    as_sqrt = _network(layer, {"grad_out": shape[1:]}) if len(shape) > 1 else as_grad
    grad_fits, sqrt_fits = _output_rank(as_grad) == len(shape), _output_rank(as_sqrt) == len(shape) - 1
    if hessian_sqrt is None:
        if grad_fits and sqrt_fits:
            raise ValueError(
                f"grad_out of shape {shape} may be an output gradient or a loss-Hessian square root for this layer; "
                "pass hessian_sqrt=True or False (or call tnderiv.kfac with x)"
            )
        hessian_sqrt = sqrt_fits and not grad_fits
    network = as_sqrt if hessian_sqrt else as_grad
    return network, _is_sqrt(network, grad_out, hessian_sqrt)


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
    tensors = _input_tensors(layer, x, operands, {"grad_out": grad_out})
    network = _network(layer, {"x": tuple(x.shape)})
    sqrt = _is_sqrt(network, grad_out, None)
    ins = _input_side(network, tensors, approx_, bias_, optimize, False)
    outs = _output_side(network, grad_out, approx_, loss_average_, sqrt, optimize, False)
    _check_agree(ins, outs, x, grad_out)
    sizes = {**outs.sizes, **ins.sizes}
    G = outs.evaluate()[0]
    inputs = _finish_inputs(ins)
    plans = {**inputs.plans, "G": tuple(outs.prepared.plans)}
    weight = _layout(ins.split, sizes)
    if "bias" not in network.params:
        return KFAC((KroneckerBlock((weight,), G, inputs.A),), (weight,), inputs.A, G, None, None, approx_.value, bias_.value, plans)
    bias_split, _, _ = bias_input_factors(network, approx_)
    bias_layout = _layout(bias_split, sizes)
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
