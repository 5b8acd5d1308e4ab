"""The debug switch: re-check every rewrite numerically (before and after contract to the same values).

Turn it on with the environment variable ``TNDERIV_CHECK_REWRITES=1`` or ``check_rewrites(True)``
(also a context manager). Symbolic sizes get small values; bound sizes are used as they are, so
checking plan-time rewrites of large layers is slow — it is a debugging aid.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol

import numpy as np
import sympy

from tnderiv.ir import Diagram, NodeKind

_STATE = {"enabled": os.environ.get("TNDERIV_CHECK_REWRITES", "").strip() not in ("", "0", "false", "False")}
TRIAL_SIZES = (7, 10, 16, 25)


class RewriteCheckError(AssertionError):
    """A rewrite rule changed the value of a diagram."""


class DenseReference(Protocol):
    """A dense evaluator independent of the rewrites (``plan.reference`` registers one; simplify never imports plan)."""

    def operand_shapes(self, diagram: Diagram, bindings: Mapping[sympy.Symbol, int]) -> dict[str, tuple[int, ...]]:
        """The user-layout shape of every operand once ``bindings`` give the sizes."""
        ...

    def contract(
        self, diagram: Diagram, operands: Mapping[str, np.ndarray], bindings: Mapping[sympy.Symbol, int]
    ) -> np.ndarray:
        """``diagram``'s value for these operands and sizes, in the user's layout."""
        ...


_REFERENCE: list[DenseReference] = []


def register_reference(reference: DenseReference) -> None:
    """Install the evaluator ``verify`` compares against (the last one registered is used)."""
    if not callable(getattr(reference, "contract", None)) or not callable(getattr(reference, "operand_shapes", None)):
        raise TypeError(f"reference={reference!r}: expected an object with contract() and operand_shapes()")
    _REFERENCE[:] = [reference]


def checking() -> bool:
    """Whether rewrites are re-checked numerically."""
    return _STATE["enabled"]


@contextmanager
def _restore(previous: bool) -> Iterator[None]:
    try:
        yield
    finally:
        _STATE["enabled"] = previous


def check_rewrites(enabled: bool = True):  # noqa: ANN201 (a context manager that also acts at once)
    """Turn numeric re-checking of every rewrite on or off; as a context manager, restores the old setting."""
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled={enabled!r}: expected a bool")
    previous = _STATE["enabled"]
    _STATE["enabled"] = enabled
    return _restore(previous)


def _symbols(diagram: Diagram) -> set[sympy.Symbol]:
    found: set[sympy.Symbol] = set()
    for size in diagram.sizes.values():
        found |= size.free_symbols
    for node in diagram.nodes:
        if node.network is not None:
            found |= _symbols(node.network)
        for view in node.view or ():
            if view is not None:
                found |= sympy.sympify(view.size).free_symbols
    return found


def trial_bindings(*diagrams: Diagram) -> dict[sympy.Symbol, int]:
    """Small values for the size symbols under which every leg of every diagram has a positive size."""
    symbols = set().union(*(_symbols(d) for d in diagrams))
    for value in TRIAL_SIZES:
        bindings = {s: (2 if s.name == "N" else value) for s in symbols}
        subs = {s: sympy.Integer(v) for s, v in bindings.items()}
        if all(int(size.xreplace(subs)) >= 1 for d in diagrams for size in d.sizes.values()):
            return bindings
    raise ValueError(f"no small sizes found for {sorted(map(str, symbols))} that make every leg non-empty")


def verify(rule: str, before: Diagram, after: Diagram, seed: int = 0) -> None:
    """Raise :class:`RewriteCheckError` unless ``before`` and ``after`` agree on random operands."""
    if not _REFERENCE:
        raise RuntimeError("no dense reference evaluator is registered: tnderiv.plan registers it on import")
    reference = _REFERENCE[0]
    bindings = trial_bindings(before, after)
    rng = np.random.default_rng(seed)
    shapes = reference.operand_shapes(before, bindings)
    for name, shape in reference.operand_shapes(after, bindings).items():
        if shapes.setdefault(name, shape) != shape:
            raise RewriteCheckError(f"rule {rule!r} changed the shape of operand {name}: {shapes[name]} → {shape}")
    operands = {name: rng.standard_normal(shape) for name, shape in shapes.items()}
    want, got = reference.contract(before, operands, bindings), reference.contract(after, operands, bindings)
    if want.shape != got.shape or not np.allclose(want, got, rtol=1e-9, atol=1e-9 * (1 + np.abs(want).max(initial=0))):
        raise RewriteCheckError(
            f"rule {rule!r} changed the value of the diagram (sizes {bindings}):\n  before: {before}\n  after:  {after}"
        )


__all__ = [
    "DenseReference",
    "NodeKind",
    "RewriteCheckError",
    "check_rewrites",
    "checking",
    "register_reference",
    "trial_bindings",
    "verify",
]
