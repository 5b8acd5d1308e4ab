"""What the helpers of a compiled plan (guards, report, chunking) read of it, as a protocol.

``plan.compiled.Plan`` satisfies it; the helpers type against this instead of importing ``Plan``, so
``compiled`` imports them and they never import ``compiled``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from tnderiv.ir import Expression


class CompiledPlan(Protocol):
    """A compiled, cached plan for one expression and one set of shapes, dtype and device."""

    expr: Expression
    shapes: Mapping[str, tuple[int, ...]]
    bindings: Any
    optimize: Any
    simplify: bool
    memory_limit: int | None
    operand_names: tuple[str, ...]
    out_shape: tuple[int, ...]
    term_plans: tuple[Any, ...]
    chunks: tuple[str, int, int] | None
    _like: Any
    _chunked: Any

    @property
    def flops(self) -> int: ...

    @property
    def dense_flops(self) -> int: ...

    @property
    def peak_size(self) -> int: ...

    @property
    def peak_memory(self) -> int: ...

    @property
    def largest_intermediate_bytes(self) -> int: ...

    @property
    def needed_bytes(self) -> int: ...

    def to_dict(self) -> dict[str, Any]: ...

    def _repr_html_(self) -> str: ...


__all__ = ["CompiledPlan"]
