"""Rewrite rules: named functions ``Diagram → Diagram | None`` kept in a registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

from tnderiv.ir import Diagram, Registry

RuleFunction = Callable[[Diagram], Diagram | None]
Stage = Literal["derive", "plan"]  # keeps the open legs (derived diagrams); may rewrite them (inside a plan only)
STAGES: tuple[Stage, ...] = get_args(Stage)


@dataclass(frozen=True)
class Rule:
    """A rewrite rule: ``apply`` returns the rewritten diagram, or ``None`` where it does not fire."""

    name: str
    apply: RuleFunction
    doc: str
    priority: int = 50
    stage: Stage = "derive"


RULES: Registry[str, Rule] = Registry("rewrite rule")


def rule(name: str, *, priority: int = 50, stage: Literal["derive", "plan"] = "derive", replace: bool = False) -> Callable[[RuleFunction], RuleFunction]:
    """Register ``function`` as the rewrite rule ``name`` (its docstring says when it applies).

    The driver tries rules by ascending ``priority`` (then registration order): copy tensors (50)
    before patterns (55–62), legs (70) and constant folding (80). ``stage="derive"`` rules keep a
    diagram's open legs (derived diagrams are glued and split by leg name later); ``stage="plan"``
    rules may also rewrite the open legs (keeping the result's layout) and run only inside a plan.
    A name registered before raises ``DuplicateNameError`` unless ``replace=True``.
    """
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r}: expected one of {list(STAGES)}")

    def decorate(function: RuleFunction) -> RuleFunction:
        RULES.register(name, Rule(name, function, (function.__doc__ or "").strip(), priority, stage), replace=replace)
        return function

    return decorate


def ordered_rules(stage: Stage = "derive") -> list[Rule]:
    """The rules of ``stage`` (``"plan"``: all rules) in the order the driver tries them."""
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r}: expected one of {list(STAGES)}")
    order = {name: j for j, name in enumerate(RULES)}
    chosen = [r for r in RULES.values() if stage == "plan" or r.stage == "derive"]
    return sorted(chosen, key=lambda r: (r.priority, order[r.name]))


def get_rule(name: str) -> Rule:
    """The rule ``name``; raises ``UnknownNameError`` (a ``KeyError``) listing the valid names."""
    return RULES.lookup(name)
