"""Leg sizes: integers or sympy expressions in size symbols (``N``, ``I0``, ...)."""

from __future__ import annotations

from collections.abc import Mapping

import sympy

Size = sympy.Expr


def as_size(value: int | str | sympy.Expr) -> Size:
    """A size as a sympy expression; a string names a positive integer symbol."""
    if isinstance(value, str):
        return size_symbol(value)
    if isinstance(value, bool):
        raise TypeError(f"a leg size must be an int or a sympy expression, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a leg size must be non-negative, got {value}")
        return sympy.Integer(value)
    if isinstance(value, sympy.Expr):
        return value
    raise TypeError(f"a leg size must be an int or a sympy expression, got {type(value).__name__}")


def size_symbol(name: str) -> sympy.Symbol:
    """The positive integer symbol ``name`` (the same object for the same name)."""
    return sympy.Symbol(name, integer=True, positive=True)


def evaluate(size: Size, bindings: Mapping[sympy.Symbol, int]) -> int:
    """The integer value of ``size`` once its symbols are bound; raises naming unbound symbols."""
    if size.is_Integer:
        return int(size)
    missing = size.free_symbols - set(bindings)
    if missing:
        names = ", ".join(sorted(str(s) for s in missing))
        raise ValueError(f"size {size} needs a value for {names}")
    value = size.xreplace({s: sympy.Integer(v) for s, v in bindings.items()})
    return int(value)
