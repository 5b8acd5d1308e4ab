"""The ``optimize=`` argument: a name, an explicit path, or an opt_einsum/cotengra optimizer object."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import opt_einsum as oe
from opt_einsum.paths import _PATH_OPTIONS, PathOptimizer

# exact dynamic programming is affordable for layer-sized networks
EXACT_UP_TO = 12
NAMES = ("auto", *sorted(_PATH_OPTIONS))


def resolve(optimize: Any, num_operands: int) -> Any:
    """What ``opt_einsum.contract_path`` takes for ``optimize``; raises listing the valid names."""
    if isinstance(optimize, str):
        if optimize == "auto":
            return "dp" if num_operands <= EXACT_UP_TO else "auto-hq"
        if optimize == "cotengra":
            try:
                import cotengra  # type: ignore[import-not-found]
            except ImportError:
                raise ValueError("optimize='cotengra' needs cotengra: pip install cotengra") from None
            return cotengra.HyperOptimizer(max_repeats=16, progbar=False)
        if optimize not in _PATH_OPTIONS:
            raise ValueError(f"path optimizer {optimize!r} not found; valid options are {sorted(set(NAMES) | {'cotengra'})}")
        return optimize
    if isinstance(optimize, Sequence):
        return [tuple(int(i) for i in step) for step in optimize]
    if isinstance(optimize, PathOptimizer) or callable(optimize):
        return optimize
    raise TypeError(
        f"optimize={optimize!r}: expected a name in {list(NAMES)}, an explicit path (list of index tuples) or an optimizer object"
    )


def cache_key(optimize: Any) -> Hashable:
    """A hashable stand-in for ``optimize`` (objects by identity)."""
    if isinstance(optimize, str):
        return optimize
    if isinstance(optimize, Sequence):
        return ("path", tuple(tuple(int(i) for i in step) for step in optimize))
    return ("object", id(optimize))


__all__ = ["EXACT_UP_TO", "NAMES", "cache_key", "oe", "resolve"]
