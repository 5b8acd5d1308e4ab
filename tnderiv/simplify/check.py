"""The debug switch: re-check every rewrite numerically (before and after contract to the same values).

Turn it on with the environment variable ``TNDERIV_CHECK_REWRITES=1`` or ``check_rewrites(True)``
(also a context manager). Symbolic sizes get small values; bound sizes are used as they are, so
checking plan-time rewrites of large layers is slow — it is a debugging aid.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import sympy

from tnderiv.ir import Diagram, NodeKind

_STATE = {"enabled": os.environ.get("TNDERIV_CHECK_REWRITES", "").strip() not in ("", "0", "false", "False")}
TRIAL_SIZES = (7, 10, 16, 25)


class RewriteCheckError(AssertionError):
    """A rewrite rule changed the value of a diagram."""


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
    from tnderiv.plan.bind import concrete
    from tnderiv.plan.reference import contract_dense, operand_shapes

    bindings = trial_bindings(before, after)
    a, b = concrete(before, bindings), concrete(after, bindings)
    rng = np.random.default_rng(seed)
    shapes = operand_shapes(a)
    for name, shape in operand_shapes(b).items():
        if shapes.setdefault(name, shape) != shape:
            raise RewriteCheckError(f"rule {rule!r} changed the shape of operand {name}: {shapes[name]} → {shape}")
    operands = {name: rng.standard_normal(shape) for name, shape in shapes.items()}
    want, got = contract_dense(a, operands), contract_dense(b, operands)
    if want.shape != got.shape or not np.allclose(want, got, rtol=1e-9, atol=1e-9 * (1 + np.abs(want).max(initial=0))):
        raise RewriteCheckError(
            f"rule {rule!r} changed the value of the diagram (sizes {bindings}):\n  before: {before}\n  after:  {after}"
        )


__all__ = ["NodeKind", "RewriteCheckError", "check_rewrites", "checking", "trial_bindings", "verify"]
