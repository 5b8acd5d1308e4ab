"""A slow, plain evaluator: every node as a dense numpy array, one einsum per term.

It shares nothing with the compiled plans except the definition of the constants, so rewrite rules
(and the debug switch that re-checks them) compare a diagram before and after against it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import opt_einsum as oe
import sympy

from tnderiv.ir import Diagram, Expression, NodeKind, terms_of
from tnderiv.plan.layout import leg_array, leg_layout


def integer_sizes(diagram: Diagram, bindings: Mapping[Any, int] | None = None) -> dict[str, int]:
    """Leg sizes of ``diagram`` as ints (``bindings`` maps size symbols to values)."""
    out = {}
    for leg, size in diagram.sizes.items():
        value = size.xreplace(_sympy(bindings)) if not size.is_Integer else size
        if not value.is_Integer:
            raise ValueError(f"leg {leg} has size {size}, which needs values for {sorted(map(str, value.free_symbols))}")
        out[leg] = int(value)
    return out


def _sympy(bindings: Mapping[Any, int] | None) -> dict[Any, sympy.Integer]:
    return {k: sympy.Integer(int(v)) for k, v in (bindings or {}).items()}


def operand_shapes(expr: Expression, bindings: Mapping[Any, int] | None = None) -> dict[str, tuple[int, ...]]:
    """The user-layout shape of every operand of ``expr``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for term in terms_of(expr):
        sizes = integer_sizes(term, bindings)
        for node in term.nodes:
            if node.kind is NodeKind.OPERAND:
                shape = leg_layout(node, sizes).user_shape
                if shapes.setdefault(node.name, shape) != shape:
                    raise ValueError(f"operand {node.name} has shapes {shapes[node.name]} and {shape} in one expression")
    return shapes


def output_shape(expr: Expression, bindings: Mapping[Any, int] | None = None) -> tuple[int, ...]:
    """The user-layout shape of the result."""
    term = terms_of(expr)[0]
    sizes = integer_sizes(term, bindings)
    return tuple(int(np.prod([sizes[leg] for leg in group], dtype=np.int64)) for group in term.open_axis_groups)


def contract_dense(expr: Expression, operands: Mapping[str, np.ndarray], bindings: Mapping[Any, int] | None = None) -> np.ndarray:
    """``expr`` evaluated with numpy, every constant dense; the result in the user's layout."""
    from tnderiv.plan.constants import constant_array

    total = None
    shape = output_shape(expr, bindings)
    for term in terms_of(expr):
        sizes = integer_sizes(term, bindings)
        symbols = {leg: oe.get_symbol(j) for j, leg in enumerate(term.sizes)}
        arrays, inputs = [], []
        for node in term.nodes:
            if node.kind is NodeKind.OPERAND:
                arrays.append(np.asarray(leg_array(np.asarray(operands[node.name]), leg_layout(node, sizes))))
            else:
                arrays.append(constant_array(node, sizes).astype(np.float64))
            inputs.append("".join(symbols[leg] for leg in node.legs))
        out_legs = term.open_legs
        equation = ",".join(inputs) + "->" + "".join(symbols[leg] for leg in out_legs)
        value = oe.contract(equation, *arrays) if arrays else np.array(1.0)
        value = np.asarray(value, dtype=np.float64) * float(term.coefficient.xreplace(_sympy(bindings)))
        value = np.broadcast_to(value, tuple(sizes[leg] for leg in out_legs)).reshape(shape)
        total = value if total is None else total + value
    assert total is not None
    return total


def random_operands(expr: Expression, bindings: Mapping[Any, int] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal float64 operands of the right user shapes."""
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape) for name, shape in operand_shapes(expr, bindings).items()}
