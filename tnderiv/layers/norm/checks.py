"""Argument checks shared by the normalization specs (errors name the argument, its value, what was expected)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def positive_int(name: str, value: Any) -> int:
    """``value`` if it is an int ≥ 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r}: expected a positive int")
    return value


def epsilon(value: Any, *, optional: bool = False) -> float | None:
    """``eps`` as a float ≥ 0 (``None`` allowed where torch picks the dtype's machine epsilon)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        expected = "a float ≥ 0 or None" if optional else "a float ≥ 0"
        raise ValueError(f"eps={value!r}: expected {expected}")
    return float(value)


def shape_tuple(name: str, value: Any) -> tuple[int, ...]:
    """An int or a sequence of ints ≥ 1 as a non-empty tuple (``normalized_shape``)."""
    items = (value,) if isinstance(value, int) else value
    try:
        shape = tuple(items)
    except TypeError:
        raise ValueError(f"{name}={value!r}: expected an int or a sequence of positive ints") from None
    if not shape or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in shape):
        raise ValueError(f"{name}={value!r}: expected an int or a non-empty sequence of positive ints")
    return shape


def flag(name: str, value: Any) -> bool:
    """A bool setting (numpy/torch bools accepted)."""
    if value not in (True, False):
        raise ValueError(f"{name}={value!r}: expected True or False")
    return bool(value)


def rank_of(shapes: Mapping[str, tuple[int, ...]], default: int) -> tuple[int, str | None]:
    """The rank of ``x`` (or of ``grad_out``, shaped like ``x``) and which operand told it."""
    for source in ("x", "grad_out"):
        if source in shapes:
            return len(shapes[source]), source
    return default, None
