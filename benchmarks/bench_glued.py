"""Glued or materialized: is the planner's choice (``GramPlan``, ``strategy="auto"``) as fast as the better way?

For every real layer of the suite (``data/conv_layers.json``, CPU sizes: batch 8, halved spatial sizes) and the
BERT dense layers, one thread, in one process, interleaved:

- the GGN diagonal of the weight with ``sqrt_out`` ``[M=10, N, *output]``: the ``GramPlan`` of
  ``glued_ggn_diag`` built three times — ``"auto"``, forced ``"glued"``, forced ``"materialize"`` — each held
  and run directly (``plan.run``, no call overhead), beside the public call ``tnderiv.ggn(kind="diag")``;
- the default gradient statistics of the weight: ``tnderiv.grad_stats(strategy=...)`` for ``"auto"``,
  ``"glued"`` and ``"materialize"``.

Each variant is first checked in float64 at batch 2 against ``benchmarks.oracles`` (one autograd call per
sample and column; never tnderiv). Per layer: ``auto / min(glued, materialize)``, the strategy auto chose
and the planner's scores of both ways.

    python -m benchmarks.bench_glued [--out docs/benchmarks/glued.json] [--repeat 5] [--only PATTERN ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

import tnderiv
from benchmarks import oracles
from benchmarks.cases import Case, dense_cases, suite_cases
from benchmarks.problem import Problem
from benchmarks.timing import CallTimeout, pin_settings, time_interleaved, time_limit
from tnderiv.api import _module_params, _network
from tnderiv.api_ggn import DEFAULT_STATS
from tnderiv.calculus.gram import glued_ggn_diag
from tnderiv.plan.gram import GramPlan, get_gram_plan

ROOT = Path(__file__).resolve().parents[1]
WAYS = ("auto", "glued", "materialize")
SLOW_S = 3.0  # a variant whose first warm call is slower than this gets fewer samples (stated in the JSON)
MISS = 1.1  # auto (or the way it chose) slower than the best way by more than this is a miss


# ----- the variants --------------------------------------------------------------------------------------
def ggn_plans(p: Problem) -> tuple[dict[str, GramPlan], dict[str, Any]]:
    """The GGN-diagonal ``GramPlan`` of ``p``'s weight for each way, and the operands they run on."""
    module, x, s = p.module, p.x, p.sqrt_out
    network = _network(module, {"x": tuple(x.shape), "sqrt_out": tuple(s.shape)})
    form = glued_ggn_diag(network, "weight")
    given = _module_params(module, {"x": x, "sqrt_out": s})
    needed = list(dict.fromkeys(name for expr in (form.glued, form.source) for name in expr.operand_names))
    if network.prepare is not None and any(name in network.derived for name in needed):
        given = {**given, **network.prepare(given)}
    inputs = {name: given[name] for name in needed}
    shapes = {name: tuple(t.shape) for name, t in inputs.items()}
    plans = {way: get_gram_plan(form, shapes, x, "auto", network.check_sizes, strategy=way) for way in WAYS}  # type: ignore[arg-type]
    return plans, inputs


def square_sum(half: torch.Tensor, dims: tuple[int, ...] = (0, 1)) -> torch.Tensor:
    """``Σ_dims half²`` in the half's memory order (axes by decreasing stride), the outermost summed axis first."""
    squared = half * half  # elementwise: keeps the half's memory layout
    order = sorted(range(squared.dim()), key=lambda d: -squared.stride(d))
    view = squared.permute(order)  # contiguous when the half is dense
    for i, pos in enumerate(sorted(order.index(d) for d in dims)):
        view = view.sum(pos - i)
    kept = [d for d in order if d not in dims]  # the kept axes, in memory order
    return view.permute([kept.index(d) for d in sorted(kept)])


def ggn_calls(p: Problem) -> tuple[dict[str, Callable[[], Any]], dict[str, GramPlan]]:
    """The three ``GramPlan`` runs, the public call, and ``half+square``: tnderiv's evaluated half (the forced
    materialize plan's) then ``square_sum`` in torch — what materialize costs with a layout-aware Gram step."""
    plans, inputs = ggn_plans(p)
    module, x, s = p.module, p.x, p.sqrt_out
    calls: dict[str, Callable[[], Any]] = {way: (lambda plan=plan: plan.run(inputs)[0]) for way, plan in plans.items()}
    calls["public"] = lambda: tnderiv.ggn(module, x, s, kind="diag")
    half_plan, shape = plans["materialize"].half, tuple(plans["materialize"].out_shape)
    assert half_plan is not None
    calls["half+square"] = lambda: square_sum(half_plan.execute(inputs)).reshape(shape)
    return calls, plans


def stats_calls(p: Problem) -> dict[str, Callable[[], Any]]:
    module, x, g = p.module, p.x, p.grad_out
    return {way: (lambda way=way: tnderiv.grad_stats(module, x, g, DEFAULT_STATS, params=["weight"], strategy=way)) for way in WAYS}


# ----- correctness (float64, batch 2, autograd oracles) -------------------------------------------------
def stats_oracle(p: Problem) -> dict[str, torch.Tensor]:
    g = oracles.per_sample_grad(p)
    mean = g.mean(0)
    flat = g.flatten(1)
    return {
        "sum_grad_squared": g.square().sum(0),
        "batch_l2": flat.square().sum(1),
        "variance": g.square().mean(0) - mean.square(),
        "batch_dot": flat @ flat.T,
    }


def _error(got: torch.Tensor, want: torch.Tensor) -> float:
    if tuple(got.shape) != tuple(want.shape):
        raise AssertionError(f"shape {list(got.shape)}, expected {list(want.shape)}")
    norm = want.norm().item()
    return (got.detach() - want).norm().item() / (norm if norm > 0 else 1.0)


def check(case: Case, batch: int = 2, tolerance: float = 1e-10) -> dict[str, float]:
    """The largest relative error of each variant against the float64 oracles; raises over ``tolerance``."""
    p = Problem(replace(case, batch=batch), dtype=torch.float64)
    errors: dict[str, float] = {}
    calls, _ = ggn_calls(p)
    want = oracles.diag_ggn(p)
    for way, call in calls.items():
        errors[f"ggn/{way}"] = _error(call(), want)
    wanted = stats_oracle(p)
    for way, call in stats_calls(p).items():
        result = call()
        errors[f"stats/{way}"] = max(_error(result[stat]["weight"], wanted[stat]) for stat in DEFAULT_STATS)
    bad = {k: v for k, v in errors.items() if not v <= tolerance}
    if bad:
        raise AssertionError(f"{case.id}: relative errors over {tolerance:g}: {bad}")
    return errors


# ----- timing --------------------------------------------------------------------------------------------
def _time(calls: dict[str, Callable[[], Any]], repeat: int, call_limit: float) -> dict[str, dict[str, Any]]:
    """Interleaved medians; a variant slower than ``SLOW_S`` per warm call is timed on fewer samples."""
    first: dict[str, float] = {}
    for name, call in calls.items():  # the warm-up call, also measuring each variant once
        start = time.perf_counter()
        with time_limit(call_limit):
            call()
        first[name] = time.perf_counter() - start
    slow = max(first.values()) > SLOW_S
    if slow:  # slow layers: 3 samples each (max(3, ...) in time_interleaved), the public call not timed
        calls = {name: call for name, call in calls.items() if name != "public"}
    timings = time_interleaved(calls, repeat=repeat, warmup=0, device="cpu", budget_s=0.0 if slow else 3.0, min_sample_s=0.02)
    return {name: {"median_s": t.median, "samples_s": t.samples, "number": t.number} for name, t in timings.items()}


def _ratio(times: dict[str, dict[str, Any]]) -> tuple[float, str]:
    best = min(("glued", "materialize"), key=lambda w: times[w]["median_s"])
    return times["auto"]["median_s"] / times[best]["median_s"], best


def _choice_ratio(times: dict[str, dict[str, Any]], chosen: str) -> float:
    """The forced way auto chose over the best forced way: the choice's cost, without auto's own noise."""
    return times[chosen]["median_s"] / min(times["glued"]["median_s"], times["materialize"]["median_s"])


def measure(case: Case, repeat: int, call_limit: float) -> dict[str, Any]:
    p = Problem(case)
    row: dict[str, Any] = {"layer": case.id, "category": case.category, "describe": case.describe()}
    load_before = os.getloadavg()[0]
    calls, plans = ggn_calls(p)
    auto = plans["auto"]
    ggn: dict[str, Any] = {
        "auto_strategy": auto.strategy,
        "auto_scores": dict(auto.scores),
        "scores": {"glued": plans["glued"].scores.get("glued"), "materialize": plans["materialize"].scores.get("materialize")},
        "flops": {"glued": plans["glued"].flops_of.get("glued"), "materialize": plans["materialize"].flops_of.get("materialize")},
        "half_shape": list(plans["materialize"].half.out_shape) if plans["materialize"].half is not None else None,  # type: ignore[union-attr]
        "needed_bytes": {w: plans[w].needed_bytes for w in WAYS},
        "plan": str(auto),
    }
    try:
        ggn["times"] = _time(calls, repeat, call_limit)
        ggn["ratio"], ggn["best"] = _ratio(ggn["times"])
        ggn["choice_ratio"] = _choice_ratio(ggn["times"], auto.strategy)
        t = {w: ggn["times"][w]["median_s"] for w in ("glued", "half+square")}
        # with the Gram step as fast as square_sum: the same choice (by the same scores) against the better way
        ggn["fixed_gram_ratio"] = t["glued" if auto.strategy == "glued" else "half+square"] / min(t.values())
    except CallTimeout as error:
        ggn["error"] = str(error)
    del calls, plans, auto
    row["ggn_diag"] = ggn

    scalls = stats_calls(p)
    probe = scalls["auto"]()
    stats: dict[str, Any] = {
        "auto_choices": {s: probe.choices[s]["weight"].strategy for s in DEFAULT_STATS},
        "scores": {
            s: {"glued": probe.choices[s]["weight"].glued_cost, "materialize": probe.choices[s]["weight"].materialize_cost}
            for s in DEFAULT_STATS
        },
        "report": probe.report(),
    }
    del probe
    try:
        stats["times"] = _time(scalls, repeat, call_limit)
        stats["ratio"], stats["best"] = _ratio(stats["times"])
        chosen = set(stats["auto_choices"].values())
        if len(chosen) == 1:
            stats["choice_ratio"] = _choice_ratio(stats["times"], chosen.pop())
    except CallTimeout as error:
        stats["error"] = str(error)
    row["grad_stats"] = stats
    row["loadavg"] = [load_before, os.getloadavg()[0]]
    return row


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for q in ("ggn_diag", "grad_stats"):
        ratios = {r["layer"]: r[q]["ratio"] for r in rows if "ratio" in r[q]}
        choice = {r["layer"]: r[q]["choice_ratio"] for r in rows if "choice_ratio" in r[q]}
        fixed = {r["layer"]: r[q]["fixed_gram_ratio"] for r in rows if "fixed_gram_ratio" in r[q]}
        if not ratios:
            continue
        values = sorted(ratios.values())
        worst = max(ratios, key=ratios.__getitem__)
        out[q] = {
            "median_ratio": statistics.median(values),
            "worst_ratio": ratios[worst],
            "worst_layer": worst,
            "misses": {k: v for k, v in ratios.items() if v > MISS},
            "median_choice_ratio": statistics.median(choice.values()) if choice else None,
            "choice_misses": {k: v for k, v in choice.items() if v > MISS},
            "median_fixed_gram_ratio": statistics.median(fixed.values()) if fixed else None,
            "fixed_gram_misses": {k: v for k, v in fixed.items() if v > MISS},
            "errors": {r["layer"]: r[q]["error"] for r in rows if "error" in r[q]},
        }
    return out


def _ms(times: dict[str, Any], way: str) -> str:
    return f"{times[way]['median_s'] * 1e3:.1f}" if way in times else "–"


def table(data: dict[str, Any]) -> str:
    """The per-layer markdown table of a results file (milliseconds, interleaved medians)."""
    head = (
        "| layer | GGN: auto runs | scores glued / materialize (M) | glued | materialize | half+square | auto | auto/best | chosen/best "
        "| stats: auto runs | glued | materialize | auto | auto/best |\n|" + "---|" * 14
    )
    lines = [head]
    short = {"sum_grad_squared": "sgs", "batch_l2": "l2", "variance": "var", "batch_dot": "dot"}
    for r in data["rows"]:
        if "failed" in r:
            lines.append(f"| {r['layer']} | failed: {r['failed'][:120]} |" + " |" * 12)
            continue
        g, s = r["ggn_diag"], r["grad_stats"]
        gt, st = g.get("times", {}), s.get("times", {})
        sc = g["scores"]
        scores = " / ".join(f"{sc[w] / 1e6:,.0f}" if sc.get(w) else "–" for w in ("glued", "materialize"))
        chosen = set(s["auto_choices"].values())
        runs = chosen.pop() if len(chosen) == 1 else ", ".join(f"{short[k]}:{v[0]}" for k, v in s["auto_choices"].items())
        lines.append(
            f"| {r['layer']} | {g['auto_strategy']} | {scores} | {_ms(gt, 'glued')} | {_ms(gt, 'materialize')} | "
            f"{_ms(gt, 'half+square')} | {_ms(gt, 'auto')} | {g.get('ratio', float('nan')):.2f} | {g.get('choice_ratio', float('nan')):.2f} | "
            f"{runs} | {_ms(st, 'glued')} | {_ms(st, 'materialize')} | {_ms(st, 'auto')} | {s.get('ratio', float('nan')):.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_glued", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "glued.json")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--call-limit", type=float, default=60.0, help="seconds after which one call is abandoned")
    parser.add_argument("--only", nargs="+", metavar="PATTERN", help="layers whose id contains PATTERN")
    parser.add_argument("--no-check", action="store_true", help="skip the float64 check (not for published numbers)")
    parser.add_argument("--no-dense", action="store_true", help="skip the BERT dense layers")
    parser.add_argument("--table", action="store_true", help="print the markdown table of --out and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(args.out.read_text())))
        return 0

    pinned = pin_settings("cpu", 1, False)
    cases = suite_cases("cpu") + ([] if args.no_dense else dense_cases("cpu"))
    if args.only:
        cases = [c for c in cases if any(pat in c.id for pat in args.only)]
    meta = {
        "command": "python -m benchmarks.bench_glued " + " ".join(argv if argv is not None else sys.argv[1:]),
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(), "pinned": pinned,
        "repeat": args.repeat, "slow_s": SLOW_S, "miss_ratio": MISS,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "loadavg_start": os.getloadavg(),
    }
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for i, case in enumerate(cases):
        row: dict[str, Any]
        try:
            errors = None if args.no_check else check(case)
            row = measure(case, args.repeat, args.call_limit)
            row["check_errors"] = errors
        except Exception as error:  # noqa: BLE001 — recorded per layer, the run goes on
            row = {"layer": case.id, "category": case.category, "ggn_diag": {}, "grad_stats": {}, "failed": f"{type(error).__name__}: {error}"[:500]}
        rows.append(row)
        g, s = row["ggn_diag"], row["grad_stats"]
        print(
            f"[{i + 1}/{len(cases)}] {time.perf_counter() - start:5.0f}s {case.id:40s} "
            f"ggn {g.get('auto_strategy', '?'):11s} {g.get('ratio', float('nan')):.2f}× ({g.get('choice_ratio', float('nan')):.2f}×)  "
            f"stats {','.join(sorted(set(s.get('auto_choices', {}).values()))):20s} {s.get('ratio', float('nan')):.2f}×  "
            f"load {os.getloadavg()[0]:.1f} {row.get('failed', '')}",
            file=sys.stderr, flush=True,
        )
        meta["loadavg_end"] = os.getloadavg()
        meta["elapsed_s"] = time.perf_counter() - start
        args.out.write_text(json.dumps({"meta": meta, "summary": summarize(rows), "rows": rows}, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
