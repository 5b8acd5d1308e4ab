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


# Measured at commit 390f7d5's tnderiv (scripts: cProfile of ``compute``, ``res.report()`` per-module times, layer
# plans printed by ``tnderiv.plan``, and A/B runs interleaved in one process, medians of 5–9 samples).
FLOOR = (
    "The floor every request shares, measured: tnderiv's forward + backward with the layers recorded (`compute(x, y, ('grad',))`) costs "
    "1.13–1.19× a gradient step; adding the pull-back of one Monte-Carlo column (one more backward through the "
    "network, for `kfac`/GGN with `fisher='mc'`) 1.29–1.38×; of the 10 exact columns (type-2) 4.8×."
)
CAUSES: dict[str, str] = {
    "stats": (
        "On the three convolutions the planner reduces *materialized* per-sample gradients (`res.report()`: "
        "strategy `materialize`; the glued network grows with the square of the output positions, 1024 on conv 0), "
        "so the statistics cost at least the per-sample gradients (1.8× here). Two measured inefficiencies on top: "
        "(1) `grad_stats` reduces the per-sample gradients with one compiled plan per statistic, slower than torch "
        "reductions sharing the square (per layer: conv 3 90 ms vs 57 ms, conv 6 172 vs 108 ms for per-sample "
        "gradients + reductions); (2) the backward of `run_model` computes the convolutions' weight gradients, which "
        "the per-sample gradients give again (their sum): leaving the conv parameters out of its `autograd.grad` "
        "takes it from 1.03× to 0.82× a gradient step. See the proposed fixes below; together they bring the three "
        "statistics in one call to ≈ 1.65×, still above 1.5×, which needs per-sample gradients of convolutions "
        "cheaper than 32 small GEMMs that write N× the parameters."
    ),
    "kfac_mc": (
        "The rest is KFAC-expand's input factor, the Gram matrix of the unfolded inputs: 5.7 GFLOP on "
        "3C3D's convolutions (conv 3 alone: 5408 rows × 576, 3.6 GFLOP), more than the gradient step itself "
        "(≈ 3.6 GFLOP). tnderiv's per-layer KFAC is within 10% of unfold + one GEMM (M = 1: conv 0 78 vs 69 ms, "
        "conv 3 169 vs 155 ms, conv 6 64 vs 71 ms): the layer work is not inefficient, the target is below what "
        "expand's `A` costs. curvlinops is faster because it runs a single backward (through the loss with sampled "
        "labels) and returns no gradient; tnderiv also returns the loss gradient and fills `.grad`, so it needs the "
        "true-label backward and the sampled one."
    ),
    "kfac": (
        "The 10 columns are pulled back by one `torch.autograd.grad(..., is_grads_batched=True)`: 3.6× a "
        "gradient step on top of the forward/backward, so 4.8× before any layer work, while BackPACK's whole KFLR "
        "takes ≈ 4.4–5.1×. In an A/B of the pull-back alone the same 10 columns one `autograd.grad` at a time took "
        "3.5× instead of 4.8× (one process, 7 interleaved samples), but in whole-model runs with the columns "
        "concatenated afterwards the difference drowned in the noise, so no gain is claimed. The factor work is "
        "within 10% of unfold + GEMM except conv 0 (M = 10: 384 vs 260 ms): its expand `G` sums over all "
        "10 × 32 × 1024 rows, whereas BackPACK's KFLR `G` sums the columns over positions first (the reduce-type "
        "`G`, `docs/conventions.md`): BackPACK does less work for `G` than tnderiv and curvlinops (same expand `G`, "
        "≈ 7×)."
    ),
    "ggn_diag": (
        "The same 10-column pull-back as for KFAC type-2, plus the convolutions' GGN-diagonal plans, which "
        "take 3.0 of ≈ 4.2 s (`res.report()`: conv 0 545 ms, conv 3 1047 ms, conv 6 1335 ms; the three dense "
        "layers 14 ms). The plan (`tnderiv.plan(conv, ..., quantity='ggn_diag_weight')`, conv 3, 10 columns) "
        "contracts the glued J·J network with both halves computed separately: it gathers the input twice (steps "
        "1–2 and 3–4 are identical) and runs the 6.0 GFLOP batched GEMM twice (steps 5 and 6 are identical), then "
        "sums the two halves' Hadamard product as a batched GEMM with `[c_in, k0, k1, c_out]` as batch legs, which "
        "permutes and copies both 17.7 M-element operands (`reshape`: 1.8 s of 5.9 s in the cProfile of a whole "
        "call). Per layer (M = 10): conv 0 490 ms, conv 3 1127 ms, conv 6 1583 ms, against 250 / 734 / 1009 ms for "
        "the per-sample gradients of the columns squared and summed (the engine's own `per_sample_grad` on the "
        "input tiled over the columns) and 254 / 402 / 425 ms for unfold + one batched GEMM + square. The "
        "duplicated halves also explain the memory (≈ 3× BackPACK's). The same plan shape makes the transformer's "
        "exact diagonal the slowest entry on this page (34×): for a dense layer with a sequence leg "
        "(`fc1`, x [32, 64, 256], 10 columns) the plan runs the 10.7 GFLOP batched GEMM `[n, m, c_out, c_in]` twice "
        "(steps 1 and 2 identical, 84 M elements each) before the Hadamard sum; `res.report()`: fc1 4.8 s, fc2 4.4 s "
        "of a 45 s call."
    ),
    "ggn_diag_mc": (
        "The convolutions' diagonal plans have the duplicated halves described for the exact diagonal: at "
        "M = 1, conv 0 59 ms, conv 3 80 ms, conv 6 130 ms against 24 / 35 / 95 ms for the tiled per-sample "
        "gradients squared (and 37 / 52 / 28 ms for unfold + batched GEMM)."
    ),
    "cold": (
        "cProfile of the first `compute` of the three statistics in a fresh process (13.5 s on the loaded machine): "
        "11.1 s in `get_plan` for 84 plans — `grad_stats` plans *both* strategies (glued and materialized) for each "
        "statistic and each parameter of each of the 6 layers to choose between them, and each plan is searched by "
        "≈ 9 candidate orderings (774 `opt_einsum.contract_path` calls, 4.9 s, of which the dynamic-programming "
        "optimizer 4.2 s; cotengra 1.4 s; ranking the candidates with the kernel cost model 1.5 s); hashing the "
        "diagrams canonically 2.0 s, of which 1.5 s is the first import of networkx (imported lazily by "
        "`tnderiv.ir.canonical`). For KFAC and the GGN diagonal the planning is 4–11× a gradient step (column "
        "`(first − warm)` above)."
    ),
}
FIXES: list[str] = [
    "**GGN diagonal of convolutions from the columns' per-sample gradients** — *applied in part*: "
    "`tnderiv/model/batch.py` now chooses per layer between the glued plan and the squared per-sample columns "
    "(the input tiled over the M columns, the engine's `per_sample_grad`) by the planner's scores, with at most "
    "64 MiB of columns per parameter, because the scores under-price writing large columns (ResNet-18's exact "
    "diagonal took 3.0 s with a 256 MiB limit, 1.5 s glued, 1.38 s at 64 MiB; 3C3D 1.21 s glued, 1.14 s at "
    "64 MiB, 0.96 s at 256 MiB — one process, one thread, batch 32). On 3C3D only conv 0 fits the limit, so most "
    "of the gain the monkeypatched measurement showed (exact diagonal 18.6× → 11.7×) is still to take. The root "
    "fix is in the planner: recognise the two mirrored halves of a glued network as one sub-expression (compute "
    "once, square), and lower a Hadamard-product-then-sum to `(a * b).sum(dims)` instead of a batched GEMM over the "
    "kept legs (per layer that is the unfold + GEMM time above: conv 3 1127 → ≈ 400 ms). *Since applied (issue 14)*: "
    "the GGN diagonal is a glued quantity run by one `GramPlan` (`tnderiv/plan/gram.py`) for `tnderiv.ggn` and "
    "`Curvature` alike; the columns come from one plan on the stacked `sqrt_out` (no tiled input), `Σ V²` runs as a "
    "Hadamard sum (multiply, then sum) instead of a batched GEMM, and columns over the materialize limit (now "
    "128 MiB) are formed in chunks along `m`. The numbers in the tables above predate this change.",
    "**Statistics of materialized per-sample gradients with torch reductions** (`tnderiv/model/batch.py`, "
    "`_derived_per_sample`, where `grad_stats` would materialize): compute `api.per_sample_grad` once and reduce it "
    "like `tnderiv.model.reduce.stat_of`, squaring once for all statistics. Measured by monkeypatching, 3C3D, 7 "
    "interleaved samples, equal results: the three statistics in one call 2.14× → 1.85×, `sum_grad_squared` "
    "1.88× → 1.73×, `variance` 1.86× → 1.77×.",
    "**No weight gradients twice** (`tnderiv/model/columns.py`, `run_model`): for derived layers whose per-sample "
    "gradients are materialized anyway, leave their parameters out of the backward's `autograd.grad` and set their "
    "gradient to the per-sample gradients' sum: the backward goes from 1.03× to 0.82× a gradient step (3C3D, "
    "9 interleaved samples); that saving applies to per-sample gradients and the statistics.",
    "**Chunked KFAC recomputes `A` per chunk** (found while measuring; `tnderiv/model/batch.py`, `_columns` → "
    "`_kfac_derived` per chunk, `_sum_kfac` keeps the first `A`): with `memory_limit=1` (one column per chunk) KFAC "
    "type-2 on 3C3D takes 18.5× instead of 8.1× a gradient step; computing `A` once per layer "
    "(`kfac_factors_input`) and only `G` per chunk removes the repeated work.",
]

__all__ = ["CAUSES", "FIXES", "FLOOR", "TARGETS", "Outcome", "Target", "evaluate"]
