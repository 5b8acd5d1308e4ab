"""Empty inputs (``N = 0``, an empty weight-sharing or normalized axis): the result without planning anything.

A result with an axis of size 0 is empty. Otherwise every term sums over a leg of size 0: its value is 0,
times its coefficient (a coefficient that divides by an empty size, such as the ``1/N`` of a mean, makes
it ``nan``, as torch's mean over an empty tensor is). Convolutions keep torch's rule: their spatial axes
must not be empty.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import sympy

from tnderiv.ir import Expression, NodeKind, terms_of
from tnderiv.plan.bind import bind_sizes


def has_empty(shapes: Mapping[str, tuple[int, ...]]) -> bool:
    """Whether some shape has an axis of size 0."""
    return any(0 in shape for shape in shapes.values())


def empty_value(
    expr: Expression, shapes: Mapping[str, tuple[int, ...]], check: Callable[[Mapping[sympy.Symbol, int]], None] | None = None
) -> tuple[tuple[int, ...], float]:
    """``(shape, fill value)`` of ``expr`` for operand ``shapes`` with an empty axis; raises for a convolution's empty spatial axis."""
    bindings = bind_sizes(expr, shapes, check, empty=True)
    terms = terms_of(expr)
    out_shape = tuple(math.prod(bindings.value(terms[0].sizes[leg]) for leg in group) for group in terms[0].open_axis_groups)
    for term in terms:
        sizes = {leg: bindings.value(size) for leg, size in term.sizes.items()}
        for node in term.nodes:
            empty = [leg for leg in node.legs if sizes[leg] == 0]
            if node.kind is NodeKind.PATTERN and empty:
                raise ValueError(
                    f"an empty spatial axis ({empty[0]} = 0) in the shapes {dict(shapes)}: a convolution needs non-empty "
                    "spatial axes (torch refuses them too); an empty batch (N = 0) is fine"
                )
    if math.prod(out_shape) == 0:
        return out_shape, 0.0
    fill = 0.0
    for term in terms:
        sizes = {leg: bindings.value(size) for leg, size in term.sizes.items()}
        if not any(sizes[leg] == 0 for leg in term.summed_legs):
            raise ValueError(
                f"cannot evaluate {expr} for the empty shapes {dict(shapes)}: a term does not sum over the empty axis"
            )
        coefficient = term.coefficient.xreplace({k: sympy.Integer(v) for k, v in bindings.items() if not k.is_Symbol})
        coefficient = coefficient.xreplace({k: sympy.Integer(v) for k, v in bindings.symbols().items()})
        if not (coefficient.is_number and coefficient.is_finite):
            fill = math.nan  # 0 · (1/0): a mean over nothing
    return out_shape, fill


def filled(like: Any, shape: tuple[int, ...], value: float) -> Any:
    """An array of ``like``'s backend, dtype and device, of ``shape``, filled with ``value``."""
    if hasattr(like, "new_full"):
        return like.new_full(shape, value)
    import cupy  # type: ignore[import-not-found]

    with cupy.cuda.Device(like.device.id):
        return cupy.full(shape, value, dtype=like.dtype)


__all__ = ["empty_value", "filled", "has_empty"]
