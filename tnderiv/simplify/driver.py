"""Run rewrite rules to a fixed point, recording which rule fired where."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tnderiv.ir import Diagram, DiagramSum, Expression, make_sum, terms_of
from tnderiv.ir.diagram import Drawable
from tnderiv.simplify.check import checking, verify
from tnderiv.simplify.memo import SIMPLIFIED, exact_key
from tnderiv.simplify.rule import Rule, get_rule, ordered_rules

MAX_STEPS = 10_000


@dataclass(frozen=True)
class Step:
    """One rewrite: ``rule`` turned ``before`` into ``after`` (term ``term`` of a sum)."""

    rule: str
    before: Expression
    after: Expression
    term: int = 0

    def __str__(self) -> str:
        return f"{self.rule}: {self.after}"


@dataclass(frozen=True)
class Derivation(Drawable):
    """The steps of a simplification, printable step by step and drawable as a strip of panels."""

    start: Expression
    steps: tuple[Step, ...]
    result: Expression

    def __str__(self) -> str:
        lines = [f"start: {self.start}"] + [f"{i + 1}. {step}" for i, step in enumerate(self.steps)]
        return "\n".join(lines + [f"result: {self.result}"])


def simplify(
    expr: Expression, *, trace: bool = False, rules: Sequence[str] | None = None, stage: str = "derive"
) -> Expression | Derivation:
    """Rewrite ``expr`` with the named rules (default: all) until none fires; ``trace=True`` returns the steps.

    With the debug switch on (``check_rewrites(True)`` or ``TNDERIV_CHECK_REWRITES=1``) every rewrite is
    re-checked numerically and a rule that changes the value raises ``RewriteCheckError``.
    ``stage="plan"`` adds the rules that may rewrite open legs (plans apply them term by term, with
    bound sizes); on a sum that would leave terms with different open legs, so it needs a diagram.
    """
    active = [get_rule(name) for name in rules] if rules is not None else ordered_rules(stage)
    if isinstance(expr, DiagramSum) and any(r.stage == "plan" for r in active):
        raise ValueError("plan-stage rules may rewrite a term's open legs; simplify the terms of a sum one at a time")
    if checking():  # every rewrite is re-checked: nothing is taken from the memo
        return _simplify(expr, active, trace)
    done = SIMPLIFIED.get_or_build((exact_key(expr), tuple(active), trace), lambda: _simplify(expr, active, trace))
    if trace:  # the same steps and result; the start is the expression given
        return Derivation(expr, done.steps, done.result)
    return done


def _simplify(expr: Expression, active: list[Rule], trace: bool) -> Expression | Derivation:
    terms = list(terms_of(expr))
    steps: list[Step] = []
    for index in range(len(terms)):
        for _ in range(MAX_STEPS):
            fired = _first_rewrite(terms[index], active)
            if fired is None:
                break
            name, rewritten = fired
            if checking():
                verify(name, terms[index], rewritten)
            before = _rebuild(terms) if trace else expr
            terms[index] = rewritten
            if trace:
                steps.append(Step(name, before, _rebuild(terms), index))
        else:
            raise RuntimeError(f"simplification did not reach a fixed point in {MAX_STEPS} steps: {terms[index]}")
    result = _rebuild([tidy_names(term) for term in terms])
    if trace:
        return Derivation(expr, tuple(steps), result)
    return result


def _first_rewrite(term: Diagram, rules: list[Rule]) -> tuple[str, Diagram] | None:
    for candidate in rules:
        rewritten = candidate.apply(term)
        if rewritten is not None:
            return candidate.name, rewritten
    return None


def _rebuild(terms: Sequence[Diagram]) -> Expression:
    result = make_sum(terms)
    assert result is not None
    return result


def tidy_names(diagram: Diagram) -> Diagram:
    """Give summed legs the plain names they were derived from (``o0'`` → ``o0``) where those are free."""
    taken = set(diagram.sizes)
    mapping: dict[str, str] = {}
    for leg in diagram.summed_legs:
        base = leg.rstrip("'")
        if base != leg and base not in taken:
            mapping[leg] = base
            taken.add(base)
    return diagram.rename(mapping) if mapping else diagram


__all__ = ["Derivation", "Step", "simplify", "tidy_names"]
