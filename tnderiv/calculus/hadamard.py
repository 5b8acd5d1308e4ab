"""Hadamard squares of Jacobians: the diagonal of ``Jᵀ diag(d) J`` for any operand, by gluing.

With ``J[out, a] = ∂forward[out]/∂wrt[a]`` (``derivative``: cut ``wrt`` out, keep its legs open), the
Hadamard square ``(J ⊙ J)[out, a] = J[out, a]²`` is ``J`` glued to a copy of itself sharing *every*
open leg. Contracting it with ``diag_out`` on the output legs gives

    hadamard_vjp[a] = Σ_out diag_out[out] · J[out, a]²  = diag(Jᵀ diag(diag_out) J)[a],

the step of Hessian-diagonal backpropagation (BL89, HesScale): for the input ``x`` of a layer the
diagonal pulled back to its input, for a parameter the diagonal-only parameter contraction
(``Σ_n d[n, out] x[n, ..]²`` for dense layers; summed over positions for convolutions, without the
cross-position terms of ``Jᵀ D J``, which a diagonal ``D`` does not have).

Nothing here is per layer: the simplifier turns the glued copies into squared operands where that is
exact. Two patterns that share ``(o, i)`` (zero padding) or ``(k, o)`` (any padding mode) collapse by
``Π ⊙ Π = Π``, after which the two copies of ``weight`` (or ``x``) sit on the same legs, i.e. the
squared tensor: a convolution's input step is the transposed convolution with squared weights. Where
the patterns do not collapse (``reflect``/``replicate``/``circular`` padding map two kernel taps of one
output to the same input, so ``(Σ_k Π W)² ≠ Σ_k Π W²``) the glued network keeps both and stays exact.
"""

from __future__ import annotations

from tnderiv.calculus.glue import glue
from tnderiv.calculus.quantities import register_quantity
from tnderiv.calculus.surgery import derivative
from tnderiv.ir import Diagram, Expression, Node, NodeKind, make_sum, operand, terms_of
from tnderiv.layers.base import LayerNetwork
from tnderiv.simplify import simplify

DIAG_OUT = "diag_out"
SQUARED = "_sq"  # suffix of a squared operand: weight_sq = weight ** 2


def jacobian(network: LayerNetwork, wrt: str) -> Expression:
    """``J[*output, *wrt]``: the layer's output differentiated by operand ``wrt`` (the linearization for inputs that have one)."""
    if wrt in network.linearized:
        return derivative(network.linearized[wrt], "tangent")
    return derivative(network.forward, wrt)


def hadamard_square(expr: Expression) -> Expression:
    """``expr ⊙ expr``: the diagram glued to a copy of itself sharing every open leg (same open legs and layout)."""
    legs = terms_of(expr)[0].open_legs
    squared = glue(expr, expr, shared=legs)
    groups = terms_of(expr)[0].open_groups
    result = make_sum(term.replace(open_groups=groups) for term in terms_of(squared))
    assert result is not None
    return result


def hadamard_vjp(network: LayerNetwork, wrt: str) -> Expression:
    """``Σ_out diag_out[out] · J[out, a]²`` with ``diag_out`` shaped like the output: shaped like ``wrt``."""
    jac = jacobian(network, wrt)
    first = terms_of(jac)[0]
    out_axes = len(terms_of(network.forward)[0].open_axis_groups)
    out_groups = first.open_axis_groups[:out_axes]
    wrt_groups = first.open_axis_groups[out_axes:]
    out_legs = tuple(leg for group in out_groups for leg in group)
    wrt_legs = tuple(leg for group in wrt_groups for leg in group)
    diag = Diagram(
        (operand(DIAG_OUT, *out_groups),),
        out_legs,
        {leg: first.sizes[leg] for leg in out_legs},
        open_groups=_groups(tuple(len(g) for g in out_groups)),
    )
    contracted = glue(hadamard_square(jac), diag, shared=out_legs, open_legs=wrt_legs)
    regrouped = make_sum(term.replace(open_groups=_groups(tuple(len(g) for g in wrt_groups))) for term in terms_of(contracted))
    assert regrouped is not None
    names = tuple(leg for group in network.operand_groups(wrt) for leg in group) if wrt not in network.linearized else wrt_legs
    return _named(squared_operands(_simplified(regrouped)), names)


def _named(expr: Expression, names: tuple[str, ...]) -> Expression:
    """The result's open legs renamed to the operand's own leg names (``c_in'`` → ``c_in``), summed legs moved aside."""
    out = []
    for term in terms_of(expr):
        if len(names) != len(term.open_legs):
            return expr
        clash = {leg: term.fresh_leg(leg + "'", taken=names) for leg in term.summed_legs if leg in names}
        term = term.rename(clash) if clash else term
        out.append(term.rename({a: b for a, b in zip(term.open_legs, names) if a != b}))
    result = make_sum(out)
    assert result is not None
    return result


def squared_operands(expr: Expression) -> Expression:
    """Each pair of equal operand nodes on the same legs becomes one node ``<name>_sq`` (the squared tensor).

    ``X[a] · X[a] = X²[a]`` entrywise, so this is exact; it leaves the network of a VJP, which the planner
    runs with the same kernels as a VJP (a transposed convolution, a GEMM) instead of a generic contraction.
    """
    terms = []
    for term in terms_of(expr):
        nodes = list(term.nodes)
        merged: list[Node] = []
        while nodes:
            node = nodes.pop(0)
            twin = next((i for i, other in enumerate(nodes) if node.kind is NodeKind.OPERAND and other == node), None)
            if twin is None:
                merged.append(node)
                continue
            nodes.pop(twin)
            merged.append(Node(NodeKind.OPERAND, node.legs, name=node.name + SQUARED, groups=node.groups, view=node.view))
        terms.append(term.replace(nodes=tuple(merged)))
    result = make_sum(terms)
    assert result is not None
    return result


def _simplified(expr: Expression) -> Expression:
    result = simplify(expr)
    assert not isinstance(result, tuple)
    return result  # type: ignore[return-value]


@register_quantity("hadamard_vjp", wrt="operand", default_wrt="x")
def _hadamard_vjp(network: LayerNetwork, wrt: str | None) -> Expression:
    """``diag_out`` (shaped like the output) pulled back through ``J ⊙ J``: ``diag(Jᵀ diag(diag_out) J)``, shaped like the operand."""
    assert wrt is not None
    return hadamard_vjp(network, wrt)


def _groups(groups: tuple[int, ...]) -> tuple[int, ...] | None:
    return None if all(g == 1 for g in groups) else groups


__all__ = ["DIAG_OUT", "SQUARED", "hadamard_square", "hadamard_vjp", "jacobian", "squared_operands"]
