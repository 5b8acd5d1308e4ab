"""A memory budget: split a contraction over a batch-like leg so that no intermediate exceeds ``memory_limit`` bytes.

A leg can be split if its size is a bare symbol that nothing else depends on, and it is a whole
axis of every operand carrying it and of the result (chunks are concatenated) or summed (chunks are
added). ``n`` is preferred; otherwise the largest such leg. Each chunk runs a plan for the smaller
size (cached like any plan), so the result is the same as without the budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import sympy

from tnderiv.ir import NodeKind, terms_of
from tnderiv.plan.backends import backend_of
from tnderiv.plan.bind import OUTPUT
from tnderiv.plan.protocol import CompiledPlan


def splittable_legs(plan: CompiledPlan) -> dict[str, tuple[sympy.Symbol, dict[str, int], int | None]]:
    """Legs the plan can be split over: leg → (its size symbol, axis per operand name, axis of the result or None if summed)."""
    expr = plan.expr
    terms = terms_of(expr)
    found: dict[str, tuple[sympy.Symbol, dict[str, int], int | None]] = {}
    names = {leg for term in terms for leg in term.sizes}
    for leg in sorted(names):
        entry = _splittable(terms, leg)
        if entry is not None:
            found[leg] = entry
    return found


def _splittable(terms: Any, leg: str) -> tuple[sympy.Symbol, dict[str, int], int | None] | None:
    symbol = None
    axes: dict[str, int] = {}
    out_axis: set[int | None] = set()
    for term in terms:
        if leg not in term.sizes:
            continue
        size = term.sizes[leg]
        if not isinstance(size, sympy.Symbol) or (symbol is not None and size != symbol):
            return None
        symbol = size
        if any(symbol in s.free_symbols for other, s in term.sizes.items() if other != leg):
            return None
        for node in term.nodes:
            if leg not in node.legs:
                continue
            if node.kind is not NodeKind.OPERAND:
                if node.kind is NodeKind.ONES:
                    continue
                return None
            groups = node.axis_groups
            axis = next(j for j, g in enumerate(groups) if leg in g)
            if groups[axis] != (leg,) or (node.view is not None and node.view[axis] is not None):
                return None
            if axes.setdefault(node.name, axis) != axis:
                return None
        if leg in term.open_legs:
            groups = term.open_axis_groups
            axis = next(j for j, g in enumerate(groups) if leg in g)
            if groups[axis] != (leg,):
                return None
            out_axis.add(axis)
        else:
            out_axis.add(None)
    if symbol is None or len(out_axis) != 1:
        return None
    return symbol, axes, out_axis.pop()


class ChunkedRun:
    """Runs ``plan`` chunk by chunk along one leg so that every intermediate fits ``limit`` bytes."""

    def __init__(
        self,
        plan: CompiledPlan,
        limit: int,
        check: Callable[[Mapping[sympy.Symbol, int]], None] | None,
        get_plan: Callable[..., CompiledPlan],
    ) -> None:
        """``get_plan``: ``plan.compiled.get_plan`` (passed in: this module never imports ``compiled``)."""
        options = splittable_legs(plan)
        options = {leg: v for leg, v in options.items() if plan.bindings.symbols().get(v[0], 0) > 1}
        if not options:
            raise ValueError(
                f"memory_limit={limit:,} bytes: the largest intermediate needs {plan.largest_intermediate_bytes:,} bytes and the "
                "plan has no batch-like leg to split over"
            )
        leg = "n" if "n" in options else max(options, key=lambda name: plan.bindings.symbols()[options[name][0]])
        symbol, axes, out_axis = options[leg]
        total = plan.bindings.symbols()[symbol]
        chunk = max(1, total * limit // plan.largest_intermediate_bytes)

        expr, given, like, optimize, simplify = plan.expr, plan.shapes, plan._like, plan.optimize, plan.simplify

        def sub_plan(size: int) -> CompiledPlan:  # not a closure over ``plan``: the parent must not keep itself alive
            shapes = {}
            for name, shape in given.items():
                shape = list(shape)
                if name in axes:
                    shape[axes[name]] = size
                elif name == OUTPUT and out_axis is not None:
                    shape[out_axis] = size
                shapes[name] = tuple(shape)
            return get_plan(expr, shapes, like, optimize, check, simplify=simplify)

        while True:
            full = sub_plan(chunk)
            if full.largest_intermediate_bytes <= limit:
                break
            if chunk == 1:
                raise ValueError(
                    f"memory_limit={limit:,} bytes is too small: even one {leg} per chunk needs an intermediate of "
                    f"{full.largest_intermediate_bytes:,} bytes"
                )
            chunk = max(1, chunk // 2)
        count = math.ceil(total / chunk)
        rest = total - (count - 1) * chunk
        self.leg, self.axes, self.out_axis = leg, axes, out_axis
        self.pieces = [(start, chunk) for start in range(0, total - rest, chunk)]
        self.pieces.append((total - rest, rest))
        self.summary = (leg, chunk, count)
        last = full if rest == chunk else sub_plan(rest)
        self.peak_memory = max(full.peak_memory, last.peak_memory)
        # the chunks' plans are looked up in the plan cache on each run (a dictionary look-up per chunk), not
        # held here: the cache's bound stays the bound on live plans
        self._sub_plan = sub_plan

    def __call__(self, operands: Mapping[str, Any]) -> Any:
        results = []
        for start, length in self.pieces:
            part = {name: _narrow(array, self.axes[name], start, length) if name in self.axes else array for name, array in operands.items()}
            results.append(self._sub_plan(length).run(part))
        if self.out_axis is None:
            total = results[0]
            for r in results[1:]:
                total = total + r
            return total
        return backend_of(results[0]).concatenate(results, self.out_axis)


def _narrow(array: Any, axis: int, start: int, length: int) -> Any:
    if hasattr(array, "narrow"):
        return array.narrow(axis, start, length)
    index = [slice(None)] * array.ndim
    index[axis] = slice(start, start + length)
    return array[tuple(index)]
