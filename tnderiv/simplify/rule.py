"""Rewrite rules: named functions ``Diagram → Diagram | None`` kept in a registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tnderiv.ir import Diagram

RuleFunction = Callable[[Diagram], Diagram | None]


@dataclass(frozen=True)
class Rule:
    """A rewrite rule: ``apply`` returns the rewritten diagram, or ``None`` where it does not fire."""

    name: str
    apply: RuleFunction
    doc: str


RULES: dict[str, Rule] = {}


def rule(name: str) -> Callable[[RuleFunction], RuleFunction]:
    """Register ``function`` as the rewrite rule ``name`` (its docstring says when it applies)."""

    def decorate(function: RuleFunction) -> RuleFunction:
        if name in RULES:
            raise ValueError(f"rule {name!r} is registered twice")
        RULES[name] = Rule(name, function, (function.__doc__ or "").strip())
        return function

    return decorate


def get_rule(name: str) -> Rule:
    """The rule ``name``; raises listing the valid names."""
    try:
        return RULES[name]
    except KeyError:
        raise KeyError(f"rewrite rule {name!r} not found; valid rules are {sorted(RULES)}") from None
