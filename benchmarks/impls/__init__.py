"""Registry of implementations: ``IMPLS[quantity]`` lists every implementation of a benchmarked quantity.

An implementation's ``setup(problem)`` does the one-time work (building a model, extending it,
retaining a graph) and returns a ``Prepared``: ``call()`` is what is timed, ``extract(result)``
converts its result to the canonical layout and scaling of ``benchmarks.oracles`` (not timed).
``setup`` raises ``Missing`` when a package or function is not installed, ``Unsupported`` when the
implementation documents that it cannot do this setting; any other exception is reported as such.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.cases import Case
from benchmarks.problem import Problem


class Missing(Exception):
    """The package or function behind an implementation is not installed."""


class Unsupported(Exception):
    """The implementation says it cannot do this setting (a documented refusal, not a crash)."""


def _identity(result: Any) -> Any:
    return result


@dataclass(frozen=True)
class Prepared:
    """``call()`` is timed; ``extract(call())`` is compared with the oracle. ``note`` goes into the results."""

    call: Callable[[], Any]
    extract: Callable[[Any], Any] = _identity
    note: str = ""


@dataclass(frozen=True)
class Impl:
    """One implementation of one quantity. ``requires``: the importable package it needs (None: torch only)."""

    quantity: str
    name: str
    setup: Callable[[Problem], Prepared]
    requires: str | None = None
    applies: Callable[[Case], bool] = field(default=lambda case: True)

    def available(self) -> bool:
        return self.requires is None or importlib.util.find_spec(self.requires) is not None


IMPLS: dict[str, list[Impl]] = {}


def implementation(
    quantity: str, name: str, *, requires: str | None = None, applies: Callable[[Case], bool] | None = None
) -> Callable[[Callable[[Problem], Prepared]], Callable[[Problem], Prepared]]:
    """Register ``setup`` as implementation ``name`` of ``quantity``."""

    def decorate(setup: Callable[[Problem], Prepared]) -> Callable[[Problem], Prepared]:
        impl = Impl(quantity, name, setup, requires, applies or (lambda case: True))
        IMPLS.setdefault(quantity, []).append(impl)
        return setup

    return decorate


def impls_for(quantity: str, names: list[str] | None = None) -> list[Impl]:
    """The implementations of ``quantity`` (only ``names`` when given); raises naming the valid ones."""
    if quantity not in IMPLS:
        raise ValueError(f"unknown quantity {quantity!r}; valid quantities are {sorted(IMPLS)}")
    found = IMPLS[quantity]
    if names:
        known = {impl.name for impl in found}
        return [impl for impl in found if impl.name in names or not known & set(names)]
    return list(found)


def is_conv(case: Case) -> bool:
    return case.kind == "conv"


def is_plain_conv(case: Case) -> bool:
    """A non-transposed convolution."""
    return case.kind == "conv" and not case.transposed


# registration happens on import
from benchmarks.impls import backpack_impls, curvlinops_impls, einconv_impls, tnderiv_impls, torch_impls  # noqa: E402

__all__ = [
    "IMPLS",
    "Impl",
    "Missing",
    "Prepared",
    "Unsupported",
    "backpack_impls",
    "curvlinops_impls",
    "einconv_impls",
    "implementation",
    "impls_for",
    "tnderiv_impls",
    "torch_impls",
]
