"""Glued quantities ``c · Σ h h'``: a half glued to its copy, in the forms the planner can run.

KFAC factors, gradient statistics and GGN diagonals are all of this shape. The planner
(``plan.gram``) runs one of the forms: the glued network in one contraction, or the half once and
then its Gram on the evaluated half (what "materialize" means for statistics).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import sympy

from tnderiv.calculus.ggn import STACK_LEG, diag_of, sqrt_vjp
from tnderiv.calculus.quantities import derive
from tnderiv.calculus.stats import PER_SAMPLE_GRAD, STATISTICS, materialized_half
from tnderiv.ir import Expression, terms_of
from tnderiv.layers.base import LayerNetwork
from tnderiv.simplify import simplify


@dataclass(frozen=True)
class Scale:
    """A product of leg sizes ``∏ size(leg)^power``, e.g. ``1/(N·S)``.

    Kept per leg, not only as a sympy product: a size bound from a shape (``o0 = 2·I0 + 1``) is known
    for its leg even where the product of such expressions cannot be evaluated symbol by symbol.
    """

    powers: tuple[tuple[str, int], ...] = ()

    def expr(self, sizes: Mapping[str, sympy.Expr]) -> sympy.Expr:
        return sympy.Mul(*(sizes[leg] ** power for leg, power in self.powers))

    def value(self, sizes: Mapping[str, int]) -> sympy.Rational:
        return sympy.Mul(*(sympy.Integer(sizes[leg]) ** power for leg, power in self.powers))


@dataclass(frozen=True)
class Glued:
    """``scale · Σ h h'`` in the forms that run.

    ``glued``: one network. ``half`` (``h``) and ``gram``: the half evaluated once (operand
    ``half_name``, axes ``half_axes``), then the Gram on it. ``h'`` in ``gram`` is the same operand,
    or the operand ``copy_name`` (the runner passes the half pre-multiplied by the Gram's
    coefficient: a pass over the half instead of over the result), or a constant half (a bias's
    ones). ``source``: the expression whose operands bind every size (the uncollapsed half).
    ``scale``: the normalization by leg sizes, already in the coefficients (it may count legs the
    evaluated half no longer has, e.g. positions summed inside the half). ``chunk_leg``: a leg the Gram sums
    additively with a coefficient independent of it (a GGN's columns ``m``), so the half may be materialized
    in chunks along it and the Grams added. ``staged_first``: the two-stage
    form is never costlier than the glued network (true of KFAC factors: contracting the glued network
    evaluates each copy of the half, then the same Gram), so the planner need not price the flat form.
    """

    glued: Expression
    source: Expression
    half: Expression | None = None
    gram: Expression | None = None
    half_name: str = ""
    half_axes: tuple[tuple[str, ...], ...] = ()
    copy_name: str = ""
    scale: Scale = Scale()
    staged_first: bool = False
    chunk_leg: str = ""  # a leg the Gram sums additively (coefficient independent of it): materialize in chunks along it

    @property
    def exact_key(self) -> tuple:
        """Equal only for identical forms (see ``Diagram.exact_key``): a cheap cache key."""
        forms = tuple(None if e is None else e.exact_key for e in (self.glued, self.source, self.half, self.gram))
        return ("glued", forms, self.half_name, self.half_axes, self.copy_name, self.scale, self.staged_first, self.chunk_leg)

    @property
    def half_legs(self) -> tuple[str, ...]:
        return tuple(leg for axis in self.half_axes for leg in axis)

    @property
    def staged(self) -> bool:
        """Whether the two-stage form exists."""
        return self.half is not None and self.gram is not None


@lru_cache(maxsize=256)
def glued_statistic(network: LayerNetwork, stat: str, param: str) -> Glued:
    """Statistic ``stat`` of ``param``'s per-sample gradients as a glued quantity: the glued network (as
    ``derive`` gives it), or the per-sample gradients ``[N, *param]`` then the statistic on them."""
    half = derive(network, f"per_sample_grad_{param}")
    gram = simplify(STATISTICS[stat].build(materialized_half(half)))
    assert not isinstance(gram, tuple)
    glued = derive(network, f"{stat}_{param}")
    return Glued(glued, half, half, gram, PER_SAMPLE_GRAD, terms_of(half)[0].open_axis_groups)


COLUMNS = "columns"  # the evaluated columns V[m, n, *param] of a GGN quantity


@lru_cache(maxsize=256)
def glued_ggn_diag(network: LayerNetwork, param: str, per_sample: bool = False) -> Glued:
    """The GGN diagonal of ``param`` as a glued quantity: the glued network (as ``derive`` gives it), or the
    columns ``V[m, n, *param]`` (each column of ``sqrt_out`` pulled back per sample), then ``Σ V²``."""
    columns = sqrt_vjp(network, param, per_sample=per_sample)
    gram = simplify(diag_of(materialized_half(columns, COLUMNS), per_sample))
    assert not isinstance(gram, tuple)
    glued = derive(network, f"{'per_sample_' if per_sample else ''}ggn_diag_{param}")
    return Glued(glued, columns, columns, gram, COLUMNS, terms_of(columns)[0].open_axis_groups, chunk_leg=STACK_LEG)


__all__ = ["COLUMNS", "Glued", "Scale", "glued_ggn_diag", "glued_statistic"]
