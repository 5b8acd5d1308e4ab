"""Quadratic gradient statistics: the per-sample gradient glued to a copy of itself.

``g[n, p]`` is the per-sample gradient (the weight VJP of ``grad_out`` with the batch leg kept open),
so ``Σ_n g[n] = ∇``. Each statistic is a recipe on a *half* ``H`` with open legs ``(n, *p)``:

- ``sum_grad_squared`` ``[*p]``   ``Σ_n g[n, p]²``            share ``n`` and ``p``, sum ``n``;
- ``batch_l2``         ``[N]``    ``Σ_p g[n, p]²``            share ``n`` and ``p``, sum ``p``;
- ``batch_dot``        ``[N, N]`` ``Σ_p g[n, p] g[n', p]``    share ``p``, keep ``n, n'``;
- ``variance``         ``[*p]``   ``(1/N) Σ_n g² − ((1/N) Σ_n g)²`` (BackPACK's ``Variance``).

``H`` is either the layer's per-sample-gradient *network* (glued: nothing per-sample is stored) or a
single operand node ``per_sample_grad`` holding the materialized per-sample gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sympy

from tnderiv.calculus.glue import glue, sum_legs
from tnderiv.calculus.quantities import register_quantity
from tnderiv.calculus.surgery import vjp
from tnderiv.ir import Diagram, DiagramSum, Expression, Registry, make_sum, operand, terms_of
from tnderiv.layers.base import LayerNetwork
from tnderiv.simplify import simplify

PER_SAMPLE_GRAD = "per_sample_grad"


@dataclass(frozen=True)
class Statistic:
    """A quadratic statistic: ``build(half) → expression`` for a half with open legs ``(n, *p)``."""

    name: str
    build: Callable[[Expression], Expression]
    doc: str
    per_param_shape: bool  # True: [*param]; False: over samples


STATISTICS: Registry[str, Statistic] = Registry("statistic")


def register_statistic(name: str, *, per_param_shape: bool) -> Callable[[Callable[[Expression], Expression]], Callable[[Expression], Expression]]:
    """Register ``build(half) → expression`` as statistic ``name`` and as the quantity ``name_<param>``."""

    def decorate(build: Callable[[Expression], Expression]) -> Callable[[Expression], Expression]:
        STATISTICS.register(name, Statistic(name, build, (build.__doc__ or "").strip(), per_param_shape))

        def quantity(network: LayerNetwork, wrt: str | None) -> Expression:
            assert wrt is not None
            return build(per_sample_half(network, wrt))

        quantity.__doc__ = build.__doc__
        register_quantity(name, wrt="param", default_wrt="weight")(quantity)
        return build

    return decorate


def get_statistic(name: object) -> Statistic:
    """The statistic ``name``; raises ``UnknownNameError`` (a ``ValueError``) listing the valid names."""
    if not isinstance(name, str):
        raise STATISTICS.unknown(name)
    return STATISTICS.lookup(name)


def per_sample_half(network: LayerNetwork, param: str) -> Expression:
    """The per-sample gradient network ``[N, *param]`` (simplified, so its copy gets plain leg names)."""
    if network.couples_batch:
        raise ValueError("gradient statistics need per-sample gradients, which are undefined for a layer that couples the samples of a batch")
    result = simplify(vjp(network.forward, param, keep_open=(network.batch_leg,)))
    assert not isinstance(result, tuple)
    return result  # type: ignore[return-value]


def materialized_half(half: Expression, name: str = PER_SAMPLE_GRAD) -> Diagram:
    """One operand ``name`` with the half's open legs and layout (``[N, *param]`` for per-sample gradients)."""
    term = terms_of(half)[0]
    node = operand(name, *term.open_axis_groups)
    return Diagram((node,), term.open_legs, {leg: term.sizes[leg] for leg in term.open_legs}, open_groups=term.open_groups)


def _split(half: Expression) -> tuple[str, tuple[str, ...], tuple[int, ...] | None]:
    """Batch leg, parameter legs and the parameter's axis groups of a half ``(n, *p)``."""
    term = terms_of(half)[0]
    groups = tuple(len(g) for g in term.open_axis_groups[1:])
    return term.open_legs[0], term.open_legs[1:], None if all(g == 1 for g in groups) else groups


def _regroup(expr: Expression, groups: tuple[int, ...] | None) -> Expression:
    result = make_sum(term.replace(open_groups=groups) for term in terms_of(expr))
    assert result is not None
    return result


@register_statistic("sum_grad_squared", per_param_shape=True)
def sum_grad_squared(half: Expression) -> Expression:
    """``Σ_n g[n, p]²``: ``[*param]``."""
    n, p, groups = _split(half)
    return _regroup(sum_legs(glue(half, half, shared=(n, *p)), (n,)), groups)


@register_statistic("batch_l2", per_param_shape=False)
def batch_l2(half: Expression) -> Expression:
    """``Σ_p g[n, p]²``, each sample's squared gradient norm: ``[N]``."""
    n, p, _ = _split(half)
    return _regroup(sum_legs(glue(half, half, shared=(n, *p)), p), None)


@register_statistic("batch_dot", per_param_shape=False)
def batch_dot(half: Expression) -> Expression:
    """``Σ_p g[n, p] g[n', p]``, the per-sample gradient Gram matrix: ``[N, N]``."""
    _, p, _ = _split(half)
    return _regroup(sum_legs(glue(half, half, shared=p), p), None)


@register_statistic("variance", per_param_shape=True)
def variance(half: Expression) -> Expression:
    """``(1/N) Σ_n g[n]² − ((1/N) Σ_n g[n])²`` elementwise (BackPACK's ``Variance``): ``[*param]``."""
    n, p, groups = _split(half)
    size: sympy.Expr = terms_of(half)[0].sizes[n]
    second = sum_grad_squared(half)
    grad = sum_legs(half, (n,))
    square = _regroup(glue(grad, grad, shared=p), groups)
    terms = [t.scaled(1 / size) for t in terms_of(second)] + [t.scaled(-1 / size**2) for t in terms_of(square)]
    return DiagramSum(tuple(terms))


__all__ = [
    "PER_SAMPLE_GRAD",
    "STATISTICS",
    "Statistic",
    "batch_dot",
    "batch_l2",
    "get_statistic",
    "materialized_half",
    "per_sample_half",
    "register_statistic",
    "sum_grad_squared",
    "variance",
]
