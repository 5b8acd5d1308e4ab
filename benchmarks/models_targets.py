"""The speed targets of issue 15 (on 3C3D), evaluated on ``docs/benchmarks/models.json``; causes of the misses.

``CAUSES`` and ``FIXES`` are written from profiles of the measured run (cProfile, ``res.report()``'s
per-module times and the layer plans), not from guesses; they are shown only for targets that are missed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MODEL = "3c3d"


@dataclass(frozen=True)
class Outcome:
    measured: str
    met: bool | None


@dataclass(frozen=True)
class Target:
    id: str
    text: str
    evaluate: Callable[[dict[str, Any]], Outcome]


def _row(data: dict[str, Any], library: str, task: str) -> dict[str, Any] | None:
    return next((r for r in data["rows"] if r["model"] == MODEL and r["library"] == library and r["task"] == task
                 and "ratio" in r), None)


def at_most(tasks: tuple[str, ...], bound: float) -> Callable[[dict[str, Any]], Outcome]:
    def evaluate(data: dict[str, Any]) -> Outcome:
        found = {t: _row(data, "tnderiv", t) for t in tasks}
        found = {t: r for t, r in found.items() if r is not None}
        if not found:
            return Outcome("no data", None)
        text = ", ".join(f"{t} {r['ratio']:.2f}×" for t, r in found.items())
        return Outcome(text, all(r["ratio"] <= bound for r in found.values()))

    return evaluate


def half_of_backpack(task: str, extension: str) -> Callable[[dict[str, Any]], Outcome]:
    def evaluate(data: dict[str, Any]) -> Outcome:
        ours, theirs = _row(data, "tnderiv", task), _row(data, "backpack", task)
        if ours is None or theirs is None:
            return Outcome("no data", None)
        share = ours["median_s"] / theirs["median_s"]
        return Outcome(f"tnderiv {ours['ratio']:.2f}×, BackPACK {extension} {theirs['ratio']:.2f}×: "
                       f"{share:.2f} of BackPACK's time", share <= 0.5)

    return evaluate


def first_call(data: dict[str, Any]) -> Outcome:
    cold = [c for c in data.get("cold", []) if c["model"] == MODEL and "ratio" in c]
    if not cold:
        return Outcome("no data", None)
    text = ", ".join(f"{c['task']} {c['ratio']:.1f}×" for c in cold)
    return Outcome(text, all(c["ratio"] <= 5 for c in cold))


TARGETS = (
    Target("stats", "first-order statistics (sum_grad_squared, batch_l2, variance; each and all three in one call) "
           "≤ 1.5× a gradient step", at_most(("sum_grad_squared", "batch_l2", "variance", "first_order"), 1.5)),
    Target("psg", "per-sample gradients ≤ 2× a gradient step", at_most(("per_sample_grad",), 2.0)),
    Target("kfac_mc", "KFAC with the MC Fisher (1 sample) ≤ 1.6×", at_most(("kfac_mc",), 1.6)),
    Target("kfac", "KFAC type-2 ≤ half of BackPACK's KFLR time", half_of_backpack("kfac", "KFLR")),
    Target("ggn_diag", "exact GGN diagonal ≤ half of BackPACK's DiagGGNExact time", half_of_backpack("ggn_diag", "DiagGGNExact")),
    Target("ggn_diag_mc", "GGN-MC diagonal ≤ 1.5×", at_most(("ggn_diag_mc",), 1.5)),
    Target("cold", "first call on a fresh process ≤ 5× a gradient step (every request measured)", first_call),
)


def evaluate(data: dict[str, Any]) -> dict[str, Outcome]:
    return {t.id: t.evaluate(data) for t in TARGETS}


CAUSES: dict[str, str] = {}
FIXES: list[str] = []

__all__ = ["CAUSES", "FIXES", "TARGETS", "Outcome", "Target", "evaluate"]
