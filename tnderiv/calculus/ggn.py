"""GGN blocks, diagonals and Gram matrices of a parameter, by gluing the VJP of a loss-Hessian square root.

With ``S[m, n, out]`` a square root of the loss Hessian per sample (``H_n = Σ_m S[m,n] S[m,n]ᵀ``) and
``V[m, n, p] = Σ_out S[m, n, out] ∂y[n, out]/∂θ[p]`` (the per-sample VJP of each column of ``S``):

- block    ``G[p, p'] = Σ_{m,n} V[m,n,p] V[m,n,p']``  — glue V to its copy sharing ``m, n``;
- diagonal ``G[p, p]  = Σ_{m,n} V[m,n,p]²``           — share ``m, n`` and the parameter legs;
- Gram     ``K[m, n, m', n'] = Σ_p V[m,n,p] V[m',n',p]`` — share the parameter legs, keep ``m, n``;
- ``per_sample``: the batch leg stays open (``[N, *p]`` diagonals, ``[N, *p, *p]`` blocks).
"""

from __future__ import annotations

from tnderiv.calculus.glue import glue, sum_legs
from tnderiv.calculus.quantities import register_quantity
from tnderiv.calculus.surgery import vjp
from tnderiv.ir import Expression, Node, NodeKind, make_sum, size_symbol, terms_of
from tnderiv.layers.base import LayerNetwork
from tnderiv.simplify import simplify

SQRT_OUT = "sqrt_out"
STACK_LEG = "m"
STACK_SIZE = "M"


def stack_operand(expr: Expression, name: str, leg: str, size: str = STACK_SIZE) -> Expression:
    """``expr`` for a stack of operands ``name``: the operand gains a leading axis ``leg``, open in front.

    Valid because ``expr`` is linear in ``name`` (it must occur exactly once in every term); evaluating
    the result is the same as evaluating ``expr`` once per slice ``name[m]`` and stacking.
    """
    out = []
    for term in terms_of(expr):
        where = [i for i, node in enumerate(term.nodes) if node.kind is NodeKind.OPERAND and node.name == name]
        if len(where) != 1:
            raise ValueError(f"cannot stack {name!r}: it occurs {len(where)} times in the term {term} (expected once)")
        if leg in term.sizes:
            raise ValueError(f"cannot stack {name!r} on leg {leg!r}: the diagram already has a leg {leg!r}")
        index = where[0]
        node = term.nodes[index]
        groups = (1,) + tuple(len(g) for g in node.axis_groups)
        stacked = Node(NodeKind.OPERAND, (leg, *node.legs), name=name, groups=_groups(groups))
        out_groups = (1,) + tuple(len(g) for g in term.open_axis_groups)
        out.append(
            term.replace(
                nodes=term.nodes[:index] + (stacked,) + term.nodes[index + 1 :],
                open_legs=(leg, *term.open_legs),
                sizes={leg: size_symbol(size)},
                open_groups=_groups(out_groups),
            )
        )
    result = make_sum(out)
    assert result is not None
    return result


def sqrt_vjp(network: LayerNetwork, param: str, *, per_sample: bool = False) -> Expression:
    """``V[m, n, *param]``: each column of ``sqrt_out`` ``[M, *output]`` pulled back per sample to ``param``.

    A layer that couples samples (train-mode batch norm) is still affine in its parameters for fixed
    ``x̂``, so the batch GGN ``Σ_n J_nᵀ H_n J_n`` is defined; only per-sample curvature is refused.
    """
    if per_sample and network.couples_batch:
        raise ValueError(
            "per-sample GGN quantities are undefined for a layer that couples the samples of a batch "
            "(its per-sample losses depend on the whole batch); use per_sample=False"
        )
    per_sample = vjp(network.forward, param, cotangent=SQRT_OUT, keep_open=(network.batch_leg,))
    taken = {leg for term in terms_of(per_sample) for leg in term.sizes}
    if STACK_LEG in taken:
        raise ValueError(f"the layer's diagram uses the leg name {STACK_LEG!r}, which GGN quantities reserve for sqrt_out's first axis")
    # simplified before gluing, so that the copy's legs get plain names (g', not g'')
    return _simplified(stack_operand(per_sample, SQRT_OUT, STACK_LEG))


def _simplified(expr: Expression) -> Expression:
    result = simplify(expr)
    assert not isinstance(result, tuple)
    return result  # type: ignore[return-value]


def _param_groups(v: Expression) -> tuple[int, ...]:
    """Axis-group lengths of the parameter part of ``V`` (after its ``m, n`` legs)."""
    return tuple(len(g) for g in terms_of(v)[0].open_axis_groups[2:])


def _regroup(expr: Expression, groups: tuple[int, ...]) -> Expression:
    result = make_sum(term.replace(open_groups=_groups(groups)) for term in terms_of(expr))
    assert result is not None
    return result


def _legs(v: Expression) -> tuple[str, str, tuple[str, ...]]:
    legs = terms_of(v)[0].open_legs
    return legs[0], legs[1], legs[2:]


def ggn_block(network: LayerNetwork, param: str, *, per_sample: bool = False) -> Expression:
    """``[*param, *param]`` (``[N, *param, *param]`` per sample): ``Σ_{m(,n)} V Vᵀ``."""
    v = sqrt_vjp(network, param, per_sample=per_sample)
    m, n, _ = _legs(v)
    glued = glue(v, v, shared=(m, n))
    summed = sum_legs(glued, (m,) if per_sample else (m, n))
    p = _param_groups(v)
    return _regroup(summed, ((1,) if per_sample else ()) + p + p)


def ggn_diag(network: LayerNetwork, param: str, *, per_sample: bool = False) -> Expression:
    """``[*param]`` (``[N, *param]`` per sample): ``Σ_{m(,n)} V²``."""
    return diag_of(sqrt_vjp(network, param, per_sample=per_sample), per_sample)


def diag_of(v: Expression, per_sample: bool = False) -> Expression:
    """``Σ_{m(,n)} V²`` of columns ``V[m, n, *p]`` (a diagram of them, or one operand holding them)."""
    m, n, p_legs = _legs(v)
    glued = glue(v, v, shared=(m, n, *p_legs))
    summed = sum_legs(glued, (m,) if per_sample else (m, n))
    return _regroup(summed, ((1,) if per_sample else ()) + _param_groups(v))


def ggn_gram(network: LayerNetwork, param: str) -> Expression:
    """``[M, N, M, N]``: ``K[m, n, m', n'] = Σ_p V[m, n, p] V[m', n', p]`` (ViViT / NTK Gram matrix)."""
    v = sqrt_vjp(network, param)
    _, _, p_legs = _legs(v)
    return _regroup(sum_legs(glue(v, v, shared=p_legs), p_legs), (1, 1, 1, 1))


@register_quantity("ggn_block", wrt="param", default_wrt="weight")
def _ggn_block(network: LayerNetwork, wrt: str | None) -> Expression:
    """Exact GGN block of a parameter from ``sqrt_out`` ``[M, N, *output]``: ``[*param, *param]``."""
    assert wrt is not None
    return ggn_block(network, wrt)


@register_quantity("ggn_diag", wrt="param", default_wrt="weight")
def _ggn_diag(network: LayerNetwork, wrt: str | None) -> Expression:
    """GGN diagonal of a parameter from ``sqrt_out`` ``[M, N, *output]``: ``[*param]``."""
    assert wrt is not None
    return ggn_diag(network, wrt)


@register_quantity("ggn_gram", wrt="param", default_wrt="weight")
def _ggn_gram(network: LayerNetwork, wrt: str | None) -> Expression:
    """Gram matrix of the backpropagated ``sqrt_out`` columns (ViViT): ``[M, N, M, N]``."""
    assert wrt is not None
    return ggn_gram(network, wrt)


@register_quantity("per_sample_ggn_diag", wrt="param", default_wrt="weight")
def _per_sample_ggn_diag(network: LayerNetwork, wrt: str | None) -> Expression:
    """Each sample's GGN diagonal from ``sqrt_out`` ``[M, N, *output]``: ``[N, *param]``."""
    assert wrt is not None
    return ggn_diag(network, wrt, per_sample=True)


@register_quantity("per_sample_ggn_block", wrt="param", default_wrt="weight")
def _per_sample_ggn_block(network: LayerNetwork, wrt: str | None) -> Expression:
    """Each sample's GGN block from ``sqrt_out`` ``[M, N, *output]``: ``[N, *param, *param]``."""
    assert wrt is not None
    return ggn_block(network, wrt, per_sample=True)


def _groups(groups: tuple[int, ...]) -> tuple[int, ...] | None:
    return None if all(g == 1 for g in groups) else groups


__all__ = ["SQRT_OUT", "diag_of", "ggn_block", "ggn_diag", "ggn_gram", "sqrt_vjp", "stack_operand"]
