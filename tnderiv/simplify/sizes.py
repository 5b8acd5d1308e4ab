"""Decisions about symbolic leg sizes: a rule whose condition depends on sizes fires only where it is provable.

Sizes are sympy expressions (``N``, ``I0``, ``floor((I0 − 1)/2) + 1``) in the derivation and plain
integers once a plan binds them, so a condition such as ``O·K = I`` that is undecidable for a
symbolic ``I0`` is simply decided again at plan time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import sympy

Size = Any  # int or sympy expression


def _expr(value: Size) -> sympy.Expr:
    return value if isinstance(value, sympy.Basic) else sympy.sympify(value)


def provably_equal(a: Size, b: Size) -> bool:
    """True only if ``a = b`` for every value of the size symbols."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    a, b = _expr(a), _expr(b)
    if a.is_Number and b.is_Number:  # bound sizes: no subtraction or expansion needed
        return bool(a == b)
    if a == b:  # the same expression (structurally): the difference is 0
        return True
    difference = a - b
    if difference == 0:
        return True
    return bool(difference.is_Number and difference == 0) or sympy.expand(difference) == 0


def provably_le(a: Size, b: Size) -> bool:
    """True only if ``a ≤ b`` for every value of the size symbols."""
    if isinstance(a, int) and isinstance(b, int):
        return a <= b
    a, b = _expr(a), _expr(b)
    if a.is_Number and b.is_Number:
        return bool(a <= b)
    difference = sympy.expand(b - a)
    return bool(difference.is_nonnegative)


def known_int(value: Size) -> int | None:
    """The value as an int if it is a number, else ``None``."""
    if isinstance(value, int):
        return value
    expr = _expr(value)
    return int(expr) if expr.is_Integer else None  # type: ignore[attr-defined]


def product(values: Iterable[Size]) -> Size:
    """The product (``1`` for none), an int where all factors are ints."""
    return math.prod(values, start=1)


def row_major(sizes: Sequence[Size]) -> tuple[Size, ...]:
    """Strides of a row-major layout with these sizes (in elements)."""
    strides: list[Size] = []
    step: Size = 1
    for size in reversed(sizes):
        strides.append(step)
        step = step * size
    return tuple(reversed(strides))
