"""KFAC factors derived from a layer's diagram: split the weight VJP into halves, glue each half to its copy.

The weight VJP ``Σ_{n,s} in[n, s, g, d_in] · out[n, s, g, d_out]`` of a layer that is linear in its
weight splits into an *input half* (``x`` and the index patterns) and an *output half* (``grad_out``, or
a loss-Hessian square root ``sqrt_out`` with a leading leg ``m``), joined only by the batch leg ``n``,
the weight-sharing legs ``s`` (``o0..`` of a convolution, ``s0..`` of a dense layer) and the group legs
``g`` (parameter legs on both halves). With ``S = ∏ sizes of s``:

- expand: ``A = 1/(N·S) Σ_{n,s} in inᵀ``, ``G = c Σ_{m,n,s} out outᵀ`` — each half glued to its copy
  sharing ``n``, ``s`` (and ``m``, ``g``);
- reduce: the shared legs are summed inside each half first (``Σ_o Π = Π̄`` for a convolution, so
  the input is never unfolded): ``A = 1/N Σ_n ī īᵀ`` with ``ī = 1/S Σ_s in``, ``G = c Σ_{m,n} ō ōᵀ``
  with ``ō = Σ_s out``.

``c`` undoes the loss's mean reduction for output gradients (``loss_average``: 1, ``N`` or ``N·S``);
a Hessian square root already carries that scaling (``c = 1``). Factors are per group: ``[G, d, d]``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import sympy

from tnderiv.calculus.ggn import SQRT_OUT, STACK_LEG, stack_operand
from tnderiv.calculus.glue import glue, sum_legs
from tnderiv.calculus.gram import Glued, Scale
from tnderiv.calculus.quantities import register_quantity
from tnderiv.calculus.surgery import vjp as vjp_of
from tnderiv.ir import Diagram, DiagramSum, Expression, Node, NodeKind, ones, operand
from tnderiv.layers.base import LayerNetwork
from tnderiv.simplify import simplify

COTANGENT = "grad_out"
# the copy-tensor rules only: the split reads leg names, which later rules may merge or squeeze
STRUCTURAL_RULES = ("delta elimination", "ones absorption", "scalar folding")
INPUT_HALF = "a"  # the evaluated input half (unfolded or reduced input)
OUTPUT_HALF = "b"  # the evaluated output half (output gradients, summed over positions for reduce)


class Approx(str, enum.Enum):
    """How KFAC treats weight-sharing legs (Eschenhagen et al., 2023)."""

    EXPAND = "expand"
    REDUCE = "reduce"

    @classmethod
    def parse(cls, value: object) -> Approx:
        return _parse_enum(cls, "approx", value)


class BiasMode(str, enum.Enum):
    """``separate``: the bias has its own block ``A_bias ⊗ G_bias``; ``append``: a ones row/column joins ``A``."""

    SEPARATE = "separate"
    APPEND = "append"

    @classmethod
    def parse(cls, value: object, name: str = "bias_mode") -> BiasMode:
        return _parse_enum(cls, name, value)


ApproxName = Literal["expand", "reduce"]
BiasModeName = Literal["separate", "append"]
LossAverage = Literal["batch", "batch+positions"] | None
LOSS_AVERAGES: tuple[str | None, ...] = (None, "batch", "batch+positions")


def parse_loss_average(value: object) -> str | None:
    """``None`` (sum), ``"batch"`` or ``"batch+positions"``; raises listing the valid values."""
    if value not in LOSS_AVERAGES or not (value is None or isinstance(value, str)):
        raise ValueError(f"loss_average={value!r} is not supported; expected one of {list(LOSS_AVERAGES)}")
    return value  # type: ignore[return-value]


def _parse_enum(cls: type[enum.Enum], name: str, value: object) -> enum.Enum:  # type: ignore[type-arg]
    try:
        return cls(value)
    except ValueError:
        valid = ", ".join(repr(m.value) for m in cls)
        raise ValueError(f"{name}={value!r} is not supported; expected one of {valid}") from None


# ----- splitting the VJP ---------------------------------------------------------------------------
@dataclass(frozen=True)
class KFACSplit:
    """The weight VJP of ``param`` split into halves.

    ``input_half`` has open legs ``(n, *shared, *its group legs, *input_legs)``, ``output_half``
    ``(n, *shared, *its group legs, *output_legs)``; ``param_legs`` are the parameter's legs in its
    own axis order, ``param_groups`` how they merge into its axes.
    """

    param: str
    input_half: Diagram
    output_half: Diagram
    batch_leg: str
    shared_legs: tuple[str, ...]
    group_legs: tuple[str, ...]
    input_legs: tuple[str, ...]
    output_legs: tuple[str, ...]
    param_legs: tuple[str, ...]
    param_groups: tuple[int, ...]

    @property
    def structural_legs(self) -> tuple[str, ...]:
        """Legs the two copies of a half share: the stack leg, batch, weight-sharing and group legs."""
        return (STACK_LEG, self.batch_leg, *self.shared_legs, *self.group_legs)


@lru_cache(maxsize=256)
def split_vjp(network: LayerNetwork, param: str = "weight", group_legs: tuple[str, ...] | None = None) -> KFACSplit:
    """Split the (simplified) VJP of ``param`` into its input and output half.

    The output half is every node connected to ``grad_out`` through legs other than the batch,
    weight-sharing and parameter legs; the input half is the rest (ones on the batch and shared legs
    it lacks, e.g. for a bias). ``group_legs`` forces which parameter legs are per-group (default:
    the parameter legs found on both halves). Raises for layers whose VJP does not split this way.
    """
    if param not in network.params:
        raise ValueError(f"unknown parameter {param!r}; this layer has {list(network.params)}")
    if network.couples_batch:
        raise ValueError("KFAC needs per-sample contributions, which are undefined for a layer that couples the samples of a batch")
    vjp = _simplify(vjp_of(network.forward, param), STRUCTURAL_RULES)
    if isinstance(vjp, DiagramSum):
        raise ValueError(f"KFAC needs {param!r} to enter the layer once; its VJP is a sum of {len(vjp.terms)} terms")
    if STACK_LEG in vjp.sizes:
        raise ValueError(f"the layer's diagram uses the leg name {STACK_LEG!r}, which KFAC reserves for sqrt_out's first axis")
    batch, shared, param_legs = network.batch_leg, tuple(network.shared_legs), vjp.open_legs
    cut = {batch, *shared, *param_legs}
    out_index = _component(vjp, COTANGENT, cut)
    out_nodes = tuple(node for i, node in enumerate(vjp.nodes) if i in out_index)
    in_nodes = tuple(node for i, node in enumerate(vjp.nodes) if i not in out_index)
    stray = sorted(({n.name for n in out_nodes if n.kind is NodeKind.OPERAND} - {COTANGENT}) & set(network.inputs))
    if stray:
        joined = sorted({leg for n in out_nodes for leg in n.legs} - cut)
        raise ValueError(
            f"the VJP of {param!r} does not split into an input and an output half: legs {joined} join "
            f"{stray} to {COTANGENT}; KFAC needs them joined only by {batch!r}, shared legs {list(shared)} and parameter legs"
        )
    in_legs = {leg for node in in_nodes for leg in node.legs}
    out_legs = {leg for node in out_nodes for leg in node.legs}
    if batch not in out_legs:
        raise ValueError(f"{COTANGENT} carries no batch leg {batch!r}: KFAC needs per-sample contributions")
    glued = tuple(leg for leg in shared if leg in out_legs)
    if group_legs is None:
        groups = tuple(leg for leg in param_legs if leg in in_legs and leg in out_legs)
    else:
        groups = tuple(leg for leg in param_legs if leg in group_legs)
    inputs = tuple(leg for leg in param_legs if leg in in_legs and leg not in groups)
    outputs = tuple(leg for leg in param_legs if leg in out_legs and leg not in groups)
    both = set(inputs) & set(outputs)
    if both:
        raise ValueError(f"parameter legs {sorted(both)} of {param!r} are on both halves but not group legs {list(groups)}")
    missing = tuple(leg for leg in (batch, *glued) if leg not in in_legs)
    if missing:
        in_nodes += (ones(*missing),)
        in_legs |= set(missing)
    stray_shared = sorted(leg for leg in shared if leg in in_legs and leg not in out_legs)
    if stray_shared:
        raise ValueError(f"shared legs {stray_shared} are not on {COTANGENT}; KFAC needs every weight-sharing leg on the output")
    in_half = Diagram(in_nodes, (batch, *glued, *(g for g in groups if g in in_legs), *inputs), vjp.sizes)
    out_half = Diagram(
        out_nodes, (batch, *glued, *(g for g in groups if g in out_legs), *outputs), vjp.sizes, coefficient=vjp.coefficient
    )
    param_groups = vjp.open_groups or (1,) * len(param_legs)
    return KFACSplit(param, in_half, out_half, batch, glued, groups, inputs, outputs, param_legs, param_groups)


def _simplify(expr: Expression, rules: Sequence[str] | None = None) -> Expression:
    result = simplify(expr, rules=rules)
    assert not isinstance(result, tuple) and isinstance(result, (Diagram, DiagramSum))
    return result


def _component(diagram: Diagram, name: str, cut: set[str]) -> set[int]:
    """Indices of the nodes connected to operand ``name`` through legs outside ``cut``."""
    start = {i for i, node in enumerate(diagram.nodes) if node.kind is NodeKind.OPERAND and node.name == name}
    if not start:
        raise ValueError(f"the VJP has no {name!r} node: {diagram}")
    found, frontier = set(start), list(start)
    while frontier:
        legs = set(diagram.nodes[frontier.pop()].legs) - cut
        for j, node in enumerate(diagram.nodes):
            if j not in found and legs & set(node.legs):
                found.add(j)
                frontier.append(j)
    return found


# ----- factors ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Factor(Glued):
    """A KFAC factor ``scale · Σ h h'ᵀ`` of two (collapsed) halves (``Glued``), plus ``whole``: the glued
    network fully simplified (what ``tnderiv.diagram`` shows).

    The forms that run keep the split's leg names (copy-tensor rules only; the planner simplifies again
    once sizes are bound). ``half_axes`` are each leading leg, the group legs, the own legs, so the Gram
    is one batched GEMM. Open legs: group legs, ``h``'s own legs, ``h'``'s.
    """

    whole: Diagram | None = field(default=None, compare=False)  # derived from ``glued``; kept out of hashing


def _collapse(half: Diagram, split: KFACSplit, approx: Approx, mean: bool) -> Diagram:
    """Reduce: sum (``mean``: average) the weight-sharing legs inside the half; expand: the half."""
    if approx is Approx.EXPAND or not split.shared_legs:
        return half
    reduced = sum_legs(half, split.shared_legs)
    assert isinstance(reduced, Diagram)
    if mean:
        reduced = reduced.scaled(1 / _size(half, split.shared_legs))
    return reduced


def _size(diagram: Diagram, legs: Sequence[str]) -> sympy.Expr:
    return sympy.Mul(*(diagram.sizes[leg] for leg in legs))


def _gram(h1: Diagram, h2: Diagram, split: KFACSplit, scale: sympy.Expr) -> Diagram:
    """``scale · Σ h1 h2'`` over the structural legs both carry; open: group legs, then h1's and h2's own legs."""
    structural = set(split.structural_legs)
    shared = tuple(leg for leg in h1.open_legs if leg in h2.open_legs and leg in structural)
    glued = glue(h1, h2, shared=shared)
    summed_here = tuple(leg for leg in glued.open_legs if leg in structural and leg not in split.group_legs)
    result = sum_legs(glued, summed_here)
    assert isinstance(result, Diagram)
    group = tuple(leg for leg in result.open_legs if leg in split.group_legs)
    own1 = tuple(leg for leg in h1.open_legs if leg not in structural)
    own2 = len(result.open_legs) - len(group) - len(own1)
    parts = tuple(p for p in (len(group), len(own1), own2) if p)
    return result.replace(coefficient=result.coefficient * scale, open_groups=parts if len(parts) < len(result.open_legs) else None)


def _factor(h1: Diagram, h2: Diagram, source: Diagram, split: KFACSplit, scale: Scale, half_name: str = "") -> Factor:
    """The glued factor; with ``half_name`` also its form on the evaluated ``h1`` (``h2`` is ``h1`` or constant)."""
    factor = scale.expr(source.sizes)
    glued = _structural(_gram(h1, h2, split, factor))
    whole = _simplify(glued)
    assert isinstance(whole, Diagram)
    if not half_name:
        return Factor(glued, source, scale=scale, whole=whole)
    same = h2 == h1
    structural = set(split.structural_legs)
    # group axis first: the Gram is then a batched GEMM over contiguous groups
    group = tuple(leg for leg in h1.open_legs if leg in split.group_legs)
    lead = tuple((leg,) for leg in h1.open_legs if leg in structural and leg not in split.group_legs)
    own = tuple(leg for leg in h1.open_legs if leg not in structural)
    axes = tuple(axis for axis in ((group,) if group else ()) + lead + ((own,) if own else ()))
    order = tuple(leg for axis in axes for leg in axis)
    groups = tuple(len(axis) for axis in axes)
    h1 = h1.replace(open_legs=order, open_groups=groups)
    half = _derived(h1)  # Σ_o Π folds into the small constant Π̄ here: the input is never unfolded
    evaluated = Diagram((operand(half_name, *axes),), h1.open_legs, h1.sizes, open_groups=groups)
    copy_name = ""
    if same:
        copy_name = f"{half_name}_scaled"
        other = Diagram((operand(copy_name, *axes),), h1.open_legs, h1.sizes, open_groups=groups)
    elif h2.operand_names:
        raise ValueError(f"the second half of a two-stage factor must be the first or a constant, got {h2}")
    else:
        other = h2
    gram = _structural(_gram(evaluated, other, split, factor))
    return Factor(glued, source, half, gram, half_name, axes, copy_name, scale, staged_first=True, whole=whole)


def _derived(diagram: Diagram) -> Diagram:
    """All derive-stage rules (they keep the open legs, which the runner relies on)."""
    result = _simplify(diagram)
    assert isinstance(result, Diagram) and result.open_legs == diagram.open_legs
    return result


def _structural(diagram: Diagram) -> Diagram:
    result = _simplify(diagram, STRUCTURAL_RULES)
    assert isinstance(result, Diagram)
    return result


def _input_scale(split: KFACSplit, approx: Approx) -> Scale:
    """``1/(N·S)`` for expand (an average over samples and positions), ``1/N`` for reduce."""
    legs = (split.batch_leg, *split.shared_legs) if approx is Approx.EXPAND else (split.batch_leg,)
    return Scale(tuple((leg, -1) for leg in legs))


def _output_scale(split: KFACSplit, loss_average: str | None) -> Scale:
    """The number of loss terms a mean-reduced loss divided by (1 for a sum)."""
    if loss_average is None:
        return Scale()
    legs = (split.batch_leg,) if loss_average == "batch" else (split.batch_leg, *split.shared_legs)
    return Scale(tuple((leg, 1) for leg in legs))


@lru_cache(maxsize=256)
def input_factor(network: LayerNetwork, approx: Approx) -> tuple[KFACSplit, Factor]:
    """The weight's input-side factor ``A`` ``[G, d_in, d_in]`` (open legs ``g, d_in.., d_in'..``)."""
    split = split_vjp(network, "weight")
    half = _collapse(split.input_half, split, approx, mean=True)
    scale = _input_scale(split, approx)
    return split, _factor(half, half, split.input_half, split, scale, INPUT_HALF)


@lru_cache(maxsize=256)
def bias_input_factors(network: LayerNetwork, approx: Approx) -> tuple[KFACSplit, Factor, Factor]:
    """For a bias broadcast over the batch and shared legs: ``A_wb`` ``[G, d_in]`` and ``A_bb`` (a scalar)."""
    split = split_vjp(network, "weight")
    bias_split = split_vjp(network, "bias", split.group_legs)
    if bias_split.input_legs:
        raise ValueError(f"the bias has input-side legs {list(bias_split.input_legs)}; KFAC supports a bias on the output legs only")
    w_half = _collapse(split.input_half, split, approx, mean=True)
    b_half = _collapse(bias_split.input_half, bias_split, approx, mean=True)
    scale = _input_scale(split, approx)
    cross = _factor(w_half, b_half, split.input_half, split, scale, INPUT_HALF)
    return bias_split, cross, _factor(b_half, b_half, bias_split.input_half, bias_split, scale)


@lru_cache(maxsize=256)
def output_factor(
    network: LayerNetwork, approx: Approx, loss_average: str | None, sqrt: bool, param: str = "weight"
) -> tuple[KFACSplit, Factor]:
    """The output-side factor ``G`` ``[G, d_out, d_out]`` of ``param`` from ``grad_out`` (or ``sqrt_out`` if ``sqrt``)."""
    group_legs = None if param == "weight" else split_vjp(network, "weight").group_legs
    split = split_vjp(network, param, group_legs)
    half = source = split.output_half
    if sqrt:
        stacked = stack_operand(half.replace(nodes=tuple(_renamed(n) for n in half.nodes)), SQRT_OUT, STACK_LEG)
        assert isinstance(stacked, Diagram)
        half = source = stacked.replace(open_groups=None)
    scale = Scale() if sqrt else _output_scale(split, loss_average)
    half = _collapse(half, split, approx, mean=False)
    return split, _factor(half, half, source, split, scale, OUTPUT_HALF)


def _renamed(node: Node) -> Node:
    if node.kind is NodeKind.OPERAND and node.name == COTANGENT:
        return Node(NodeKind.OPERAND, node.legs, name=SQRT_OUT, groups=node.groups)
    return node


# ----- the registry: diagrams of the factors for tnderiv.diagram / tnderiv.plan ---------------------
def _register() -> None:
    for approx in Approx:

        def build_input(network: LayerNetwork, wrt: str | None, approx: Approx = approx) -> Diagram:
            return input_factor(network, approx)[1].whole

        def build_output(network: LayerNetwork, wrt: str | None, approx: Approx = approx) -> Diagram:
            return output_factor(network, approx, None, False)[1].whole

        build_input.__doc__ = f"KFAC-{approx.value} input-side factor A of the weight: ``[G, d_in, d_in]``."
        build_output.__doc__ = (
            f"KFAC-{approx.value} output-side factor G of the weight from grad_out (sum-reduced loss): ``[G, d_out, d_out]``."
        )
        register_quantity(f"kfac_input_{approx.value}")(build_input)
        register_quantity(f"kfac_output_{approx.value}")(build_output)


_register()

__all__ = [
    "Approx",
    "ApproxName",
    "BiasMode",
    "BiasModeName",
    "LossAverage",
    "Factor",
    "Glued",
    "KFACSplit",
    "LOSS_AVERAGES",
    "bias_input_factors",
    "input_factor",
    "output_factor",
    "parse_loss_average",
    "Scale",
    "split_vjp",
]
