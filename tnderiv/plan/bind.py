"""Bind size symbols from the shapes of the user's tensors, checking every axis on the way."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import sympy

from tnderiv.ir import Expression, evaluate, terms_of

Bindings = dict[sympy.Symbol, int]
OUTPUT = "output"


def axis_groups_by_name(expr: Expression) -> dict[str, list[tuple[tuple[str, ...], dict[str, sympy.Expr]]]]:
    """For each operand name (and ``'output'``), its axis groups with the sizes of their legs."""
    found: dict[str, list] = {}
    for term in terms_of(expr):
        for node in term.nodes:
            if node.name:
                found.setdefault(node.name, []).append((node.axis_groups, term.sizes))
        found.setdefault(OUTPUT, []).append((term.open_axis_groups, term.sizes))
    return found


def bind_sizes(
    expr: Expression,
    shapes: Mapping[str, tuple[int, ...]],
    check: Callable[[Mapping[sympy.Symbol, int]], None] | None = None,
) -> Bindings:
    """Size symbols bound from ``shapes`` (by operand name; ``'output'`` for the result) and checked.

    Raises ``ValueError`` naming the operand, the axis, what it got and what was expected.
    """
    groups = axis_groups_by_name(expr)
    unknown = set(shapes) - set(groups)
    if unknown:
        raise ValueError(f"shapes given for {sorted(unknown)}, which the diagram does not use; it uses {sorted(groups)}")
    bindings: Bindings = {}
    for name, shape in shapes.items():
        for axes, sizes in groups[name]:
            if len(shape) != len(axes):
                expected = "[" + ", ".join(" ".join(a) for a in axes) + "]"
                raise ValueError(f"{name} has shape {tuple(shape)} with {len(shape)} axes; expected {len(axes)} axes {expected}")
            for value, legs in zip(shape, axes):
                if len(legs) == 1 and isinstance(sizes[legs[0]], sympy.Symbol):
                    symbol = sizes[legs[0]]
                    if int(value) < 1:
                        raise ValueError(f"{name} has an empty axis ({legs[0]}={value}) in shape {tuple(shape)}")
                    bindings.setdefault(symbol, int(value))
    missing = set().union(*(t.free_symbols() for t in terms_of(expr))) - set(bindings)
    if missing:
        names = ", ".join(sorted(map(str, missing)))
        raise ValueError(f"cannot tell the size{'s' if len(missing) > 1 else ''} {names} from the shapes given for {sorted(shapes)}")
    if check is not None:
        check(bindings)
    for name, shape in shapes.items():
        for axes, sizes in groups[name]:
            for axis, (value, legs) in enumerate(zip(shape, axes)):
                expected = 1
                for leg in legs:
                    expected *= evaluate(sizes[leg], bindings)
                if expected != int(value):
                    formula = " · ".join(str(sizes[leg]) for leg in legs)
                    given = ", ".join(f"{s}={v}" for s, v in sorted(bindings.items(), key=lambda kv: str(kv[0])))
                    raise ValueError(
                        f"{name} has shape {tuple(shape)}: axis {axis} ({' '.join(legs)}) is {value}, expected "
                        f"{expected} = {formula} with {given}"
                    )
    for term in terms_of(expr):
        for leg, size in term.sizes.items():
            if evaluate(size, bindings) < 1:
                raise ValueError(f"leg {leg} gets size {evaluate(size, bindings)} = {size}: impossible output size")
    return bindings


def leg_sizes(expr: Expression, bindings: Bindings) -> list[dict[str, int]]:
    """Integer sizes of every leg, per term."""
    return [{leg: evaluate(size, bindings) for leg, size in term.sizes.items()} for term in terms_of(expr)]
