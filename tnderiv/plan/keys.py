"""One key builder for every cache of plans and calls: what a compiled result depends on, hashed cheaply.

A key is ``(*parts, shapes, place, optimizer)``: the caller's parts (a diagram, a spec and quantity,
options), the operands' shapes by name (sorted), the place — backend, device and dtype — of the tensor
the plan runs on, and a stand-in for the optimizer (``cache_key``: strings as they are, paths as
tuples, other objects by identity).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tnderiv.plan.backends import backend_of
from tnderiv.plan.optimizers import cache_key


def place(like: Any) -> tuple[Hashable, ...]:
    """``(backend, device, dtype)`` of an array (torch devices and dtypes hash quickly: no string formatting)."""
    device = getattr(like, "device", None)
    if type(device).__module__ == "torch":
        return ("torch", device, like.dtype)
    backend = backend_of(like)
    return (backend.name, backend.device_key(like), backend.dtype_key(like))


def shapes_key(shapes: Mapping[str, Sequence[int]]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple(sorted((name, tuple(shape)) for name, shape in shapes.items()))


def plan_key(what: Hashable, shapes: Mapping[str, Sequence[int]], like: Any, optimize: Any, *options: Hashable) -> Hashable:
    """The key of a compiled plan of ``what`` (a diagram, a glued quantity) for these operand shapes on ``like``.

    A diagram is keyed by its exact structure (``exact_key``), not its canonical hash: hashing a diagram made
    for one call (sizes bound, coefficient a number) costs milliseconds, and a renamed copy only plans again."""
    return (getattr(what, "exact_key", what), shapes_key(shapes), place(like), cache_key(optimize), *options)


def call_key(what: Hashable, tensors: Mapping[str, Any], optimize: Any, *options: Hashable) -> Hashable | None:
    """The key of a warm call of ``what`` (a spec and quantity) with these tensors, or ``None`` for anything
    unusual (not an array, unhashable): the caller then takes the slow path, which raises properly."""
    try:
        given = tuple((name, tuple(t.shape), place(t)) for name, t in tensors.items())
        key = (what, given, cache_key(optimize), *options)
        hash(key)
    except (AttributeError, TypeError):
        return None
    return key


@dataclass(frozen=True)
class PlanOptions:
    """How a public call plans: ``optimize``, ``simplify`` (plan-stage rewrites), ``memory_limit`` (bytes per intermediate)."""

    optimize: Any = "auto"
    simplify: bool = True
    memory_limit: int | None = None

    def key(self) -> tuple[Hashable, ...]:
        """The options as ``call_key``'s trailing parts (the optimizer goes in by ``cache_key``)."""
        return (bool(self.simplify), self.memory_limit)

    def planning(self) -> dict[str, Any]:
        """Keyword arguments of ``get_plan``/``get_gram_plan`` besides the optimizer."""
        return {"simplify": self.simplify, "memory_limit": self.memory_limit}


__all__ = ["PlanOptions", "call_key", "place", "plan_key", "shapes_key"]
