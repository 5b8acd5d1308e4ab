"""Bind leg sizes from the shapes of the user's tensors, checking every axis on the way.

A leg's size is a sympy expression (``N``, ``I0``, ``floor((I0 + 2 − 3)/2) + 1``). A shape binds the
expression it gives directly (a bare symbol, or a whole expression such as an output size), so a
VJP w.r.t. the bias needs only ``grad_out`` even though ``o0`` is a function of ``I0``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import sympy

from tnderiv.ir import AxisView, Diagram, Expression, Node, NodeKind, as_size, terms_of
from tnderiv.plan.cache import register_cache
from tnderiv.simplify.memo import SIMPLIFIED

OUTPUT = "output"
# simplify cannot import plan: its memo of simplified expressions is registered here, where plans start
register_cache("rewrites", "simplified expressions by (exact expression, rules, trace)", lambda: SIMPLIFIED)


class Bindings(dict):
    """Known sizes: ``{symbol or expression: int}``; ``value(expr)`` evaluates any size expression."""

    def value(self, expr: sympy.Expr) -> int:
        """The integer value of ``expr``; raises naming the sizes it still needs."""
        if expr.is_Integer:
            return int(expr)
        if expr in self:
            return int(self[expr])
        reduced = expr.xreplace({k: sympy.Integer(v) for k, v in self.items() if not k.is_Symbol})
        reduced = reduced.xreplace({k: sympy.Integer(v) for k, v in self.items() if k.is_Symbol})
        if not reduced.is_number:
            names = ", ".join(sorted(str(s) for s in reduced.free_symbols))
            raise ValueError(f"size {expr} needs a value for {names}")
        return int(reduced)

    def can_evaluate(self, expr: sympy.Expr) -> bool:
        try:
            self.value(expr)
        except ValueError:
            return False
        return True

    def symbols(self) -> dict[sympy.Symbol, int]:
        """Only the bound symbols (for layer size checks and printing)."""
        return {k: v for k, v in self.items() if k.is_Symbol}


def axis_groups_by_name(expr: Expression) -> dict[str, list[tuple[tuple[tuple[str, ...], ...], Mapping[str, sympy.Expr]]]]:
    """For each operand name (and ``'output'``), its axis groups with the sizes of their legs.

    An axis read through a view (``Node.view``) appears with the view's size as a pseudo-leg.
    """
    found: dict[str, list] = {}
    for term in terms_of(expr):
        for node in term.nodes:
            if node.kind is NodeKind.OPERAND:
                found.setdefault(node.name, []).append(_viewed_axes(node, term.sizes))
        found.setdefault(OUTPUT, []).append((term.open_axis_groups, term.sizes))
    return found


def _viewed_axes(node: Node, sizes: Mapping[str, sympy.Expr]) -> tuple[tuple[tuple[str, ...], ...], Mapping[str, sympy.Expr]]:
    if node.view is None:
        return node.axis_groups, sizes
    axes, extended = [], dict(sizes)
    for j, (group, view) in enumerate(zip(node.axis_groups, node.view)):
        if view is None:
            axes.append(group)
        else:
            extended[f"<axis {j}>"] = as_size(view.size)
            axes.append((f"<axis {j}>",))
    return tuple(axes), extended


def bind_sizes(
    expr: Expression,
    shapes: Mapping[str, tuple[int, ...]],
    check: Callable[[Mapping[sympy.Symbol, int]], None] | None = None,
    *,
    empty: bool = False,
) -> Bindings:
    """Sizes bound from ``shapes`` (by operand name; ``'output'`` for the result) and checked.

    Raises ``ValueError`` naming the operand, the axis, what it got and what was expected. ``empty=True``
    accepts axes of size 0 (for the shape of an empty result; such sizes are never planned).
    """
    least = 0 if empty else 1
    groups = axis_groups_by_name(expr)
    unknown = set(shapes) - set(groups)
    if unknown:
        raise ValueError(f"shapes given for {sorted(unknown)}, which the diagram does not use; it uses {sorted(groups)}")
    bindings = Bindings()
    for name, shape in shapes.items():
        for axes, sizes in groups[name]:
            if len(shape) != len(axes):
                expected = "[" + ", ".join(" ".join(a) for a in axes) + "]"
                raise ValueError(f"{name} has shape {tuple(shape)} with {len(shape)} axes; expected {len(axes)} axes {expected}")
            for value, legs in zip(shape, axes):
                if int(value) < least:
                    raise ValueError(f"{name} has an empty axis ({' '.join(legs)}={value}) in shape {tuple(shape)}")
                product = sympy.Mul(*(sizes[leg] for leg in legs))
                if not product.is_Integer:
                    bindings.setdefault(product, int(value))
    _solve_symbols(bindings, least)
    # symbols from symbol-valued legs first, so that expressions given by shapes can be checked
    for term in terms_of(expr):
        for leg, size in term.sizes.items():
            if not bindings.can_evaluate(size):
                raise ValueError(
                    f"cannot tell the size of leg {leg} ({size}) from the shapes given for {sorted(shapes)}"
                )
    if not empty:
        _check_reachable(bindings, shapes)
    if check is not None:
        check(bindings.symbols())
    symbols = bindings.symbols()
    numbers = {k: sympy.Integer(v) for k, v in symbols.items()}
    for name, shape in shapes.items():
        for axes, sizes in groups[name]:
            for axis, (value, legs) in enumerate(zip(shape, axes)):
                expected = math.prod(_strict_value(bindings, sizes[leg], numbers) for leg in legs)
                if expected is not None and expected != int(value):
                    raise ValueError(f"{name} has shape {tuple(shape)}: axis {axis} ({' '.join(legs)}) is {value}, expected {expected}" + _why(legs, sizes, expected, bindings))
    for term in terms_of(expr):
        for leg, size in term.sizes.items():
            if bindings.value(size) < least:
                raise ValueError(f"leg {leg} gets size {bindings.value(size)} = {size}: impossible output size")
    return bindings


def _why(legs: tuple[str, ...], sizes: Mapping[str, sympy.Expr], expected: int, bindings: Bindings) -> str:
    """Where an expected size comes from: its formula and the sizes it uses (nothing for a fixed size, e.g. a layer's channels)."""
    formula = " · ".join(str(sizes[leg]) for leg in legs)
    if formula == str(expected):
        return f" (the layer's {' '.join(legs)})"
    used = set().union(*(sizes[leg].free_symbols for leg in legs))
    given = ", ".join(f"{s}={v}" for s, v in sorted(bindings.symbols().items(), key=lambda kv: str(kv[0])) if s in used)
    return f" = {formula}" + (f" with {given}" if given else "")


def _solve_symbols(bindings: Bindings, least: int = 1) -> None:
    """Bind symbols that a given size determines uniquely (``2·I0 = 6`` → ``I0 = 3``; merged axes).

    Only expressions without floor/ceiling are solved (an output size with stride has several inputs),
    and only a single positive integer solution binds.
    """
    changed = True
    while changed:
        changed = False
        known = bindings.symbols()
        for expr, value in list(bindings.items()):
            if expr.is_Symbol or expr.has(sympy.floor, sympy.ceiling):
                continue
            free = expr.free_symbols - set(known)
            if len(free) != 1:
                continue
            symbol = next(iter(free))
            reduced = expr.xreplace({s: sympy.Integer(v) for s, v in known.items()})
            line = _linear(reduced, symbol)
            if line is not None:  # a·s + b = value: its one root, without sympy.solve (the same solutions)
                root = (sympy.Integer(value) - line[1]) / line[0]
                roots = [root]
            else:
                roots = sympy.solve(sympy.Eq(reduced, value), symbol)
            solutions = [r for r in roots if r.is_Integer and r >= least]
            if len(solutions) == 1:
                bindings[symbol] = int(solutions[0])
                changed = True
                break


def _linear(expr: sympy.Expr, symbol: sympy.Symbol) -> tuple[sympy.Expr, sympy.Expr] | None:
    """``(a, b)`` with ``expr = a·symbol + b`` for rational numbers ``a ≠ 0`` and ``b``; ``None`` if ``expr`` is not such a line."""
    a, b = sympy.Integer(0), sympy.Integer(0)
    for term in sympy.Add.make_args(sympy.expand(expr)):
        coefficient, rest = term.as_coeff_Mul()
        if not coefficient.is_Rational:
            return None
        if rest == 1:
            b += coefficient
        elif rest == symbol:
            a += coefficient
        else:
            return None
    return (a, b) if a != 0 else None


def _strict_value(bindings: Bindings, size: sympy.Expr, numbers: Mapping[sympy.Symbol, sympy.Integer]) -> int:
    """The value of ``size`` from symbols alone where possible (so a shape cannot vouch for itself).

    ``numbers``: the bound symbols as sympy integers (``bindings.symbols()``, converted once per binding).
    """
    if size.is_Integer:
        return int(size)
    if size.free_symbols <= numbers.keys():
        return int(size.xreplace(numbers))
    return bindings.value(size)


def _check_reachable(bindings: Bindings, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Raise if a size given by a shape (``o0`` = 6) is one that no value of its unbound symbol gives.

    A transposed convolution with stride 2 and kernel 3 has odd outputs only; binding the output size
    alone would otherwise accept an impossible grad_out silently.
    """
    by_symbol: dict[sympy.Symbol, list[tuple[sympy.Expr, int]]] = {}
    known = bindings.symbols()
    for expr, value in bindings.items():
        if expr.is_Symbol:
            continue
        free = expr.free_symbols - set(known)
        if len(free) == 1:
            reduced = expr.xreplace({s: sympy.Integer(v) for s, v in known.items()})
            by_symbol.setdefault(next(iter(free)), []).append((reduced, int(value)))
    for symbol, constraints in by_symbol.items():
        if not _has_solution(symbol, constraints):
            wanted = " and ".join(f"{expr} = {value}" for expr, value in constraints)
            raise ValueError(
                f"impossible sizes in the shapes given for {sorted(shapes)}: no size {symbol} gives {wanted}"
            )


def _has_solution(symbol: sympy.Symbol, constraints: list[tuple[sympy.Expr, int]], limit: int = 1 << 40) -> bool:
    """Whether one positive integer meets every ``size(symbol) == value`` (layer sizes grow with ``symbol``)."""
    first, target = constraints[0]

    def at(expr: sympy.Expr, value: int) -> int:
        return int(expr.xreplace({symbol: sympy.Integer(value)}))

    hi = 1
    while at(first, hi) < target and hi < limit:
        hi *= 2
    lo = max(1, hi // 2)
    while lo < hi:  # the smallest value reaching the target
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if at(first, mid) < target else (lo, mid)
    # the values giving the target form a run as long as a stride; cap it so a flat size cannot spin
    for candidate in range(lo, lo + 4096):
        if at(first, candidate) != target:
            return False
        if all(at(expr, candidate) == value for expr, value in constraints):
            return True
    return True


def leg_sizes(expr: Expression, bindings: Bindings) -> list[dict[str, int]]:
    """Integer sizes of every leg, per term."""
    return [{leg: bindings.value(size) for leg, size in term.sizes.items()} for term in terms_of(expr)]


def concrete(term: Diagram, bindings: Mapping[sympy.Expr, int]) -> Diagram:
    """``term`` with every size (legs, operand views, folded constants) replaced by its integer value."""
    known = bindings if isinstance(bindings, Bindings) else Bindings(bindings)
    nodes = tuple(_concrete_node(node, known) for node in term.nodes)
    sizes = {leg: known.value(size) for leg, size in term.sizes.items()}
    coefficient = term.coefficient
    if not coefficient.is_number:
        coefficient = coefficient.xreplace({k: sympy.Integer(v) for k, v in known.items() if not k.is_Symbol})
        coefficient = coefficient.xreplace({k: sympy.Integer(v) for k, v in known.symbols().items()})
    return Diagram(nodes, term.open_legs, sizes, coefficient, term.open_groups)


def _concrete_node(node: Node, known: Bindings) -> Node:
    view, network = node.view, node.network
    if view is not None:
        view = tuple(None if v is None else AxisView(known.value(as_size(v.size)), v.strides, v.offset) for v in view)
    if network is not None:
        network = concrete(network, known)
    if view is node.view and network is node.network:
        return node
    return Node(node.kind, node.legs, node.name, node.pattern, node.value, node.groups, view, network)
