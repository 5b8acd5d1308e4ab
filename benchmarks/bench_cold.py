"""Cold start: the first call of a layer's quantity after ``tnderiv.clear_caches()``, split into phases.

    .venv/bin/python -m benchmarks.bench_cold [--layers 3c3d resnet18] [--repeat 3] [--json docs/benchmarks/cold.json]

For the real-layer suite (``data/conv_layers.json``; CPU sizes: batch 8, spatial sizes halved) and a
dense layer with a sequence axis, each (layer, quantity) is timed cold: ``clear_caches()``, then one
call, ``repeat`` times (median and worst reported). The process warms up first (imports, torch's
first kernels) on a small probe layer, so "cold" means the first call of this layer and quantity, not
the first call of the process.

The time is split into phases by timers wrapped around the pipeline's functions (exclusive times: a
phase nested in another counts only for itself):

- ``derive``: building the quantity's diagram in ``calculus`` (builders, KFAC splits, statistics);
- ``simplify``: the rewrite rules at derive stage; ``plan rules``: the plan-stage rules on bound terms;
- ``bind``: binding sizes from shapes and making terms concrete;
- ``paths``: candidate contraction orders (opt_einsum's dynamic programming, greedy, structural);
- ``score``: ranking the candidates with the structure-aware cost model;
- ``kernels``: building the chosen path's kernels (``Program``; KFAC's lag programs);
- ``hash``: canonical hashes of diagrams (cache keys);
- ``run``: running the plans (the arithmetic of this first call);
- ``other``: the rest (spec conversion, checks, cache look-ups, glue).

Also counted per call: the plans compiled (misses of the plan cache). ``--model`` also times cold 3C3D
steps (``Curvature.compute`` at batch 8) and counts their plans with ``tnderiv.cache_info()``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from benchmarks.cases import Case, dense_cases, probe_cases, select, suite_cases
from benchmarks.impls.tnderiv_impls import weight_only_spec
from benchmarks.problem import Problem

PHASES = ("derive", "simplify", "plan rules", "bind", "paths", "score", "kernels", "hash", "run", "other")
QUANTITIES = ("forward", "vjp_x", "vjp_weight", "per_sample_grad", "grad_stats", "kfac_expand", "kfac_reduce", "ggn_diag")
TARGET_MEDIAN_MS, TARGET_WORST_MS = 10.0, 30.0


# ----- phase timers -----------------------------------------------------------------------------------
class PhaseTimer:
    """Exclusive time per phase: a phase entered inside another is subtracted from the outer one."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self._stack: list[list[Any]] = []  # [phase, start, time spent in nested phases]

    def reset(self) -> None:
        self.totals = dict.fromkeys(PHASES, 0.0)
        self._stack.clear()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        frame = [name, time.perf_counter(), 0.0]
        self._stack.append(frame)
        try:
            yield
        finally:
            self._stack.pop()
            elapsed = time.perf_counter() - frame[1]
            self.totals[name] += elapsed - frame[2]
            if self._stack:
                self._stack[-1][2] += elapsed

    def wrap(self, function: Callable, phase: str | Callable[..., str]) -> Callable:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            name = phase(*args, **kwargs) if callable(phase) else phase
            with self.phase(name):
                return function(*args, **kwargs)

        for attr in ("cache_clear", "cache_info"):  # lru_cache'd functions stay clearable (clear_caches reads them)
            if hasattr(function, attr):
                setattr(timed, attr, getattr(function, attr))
        return timed


def _simplify_phase(*args: Any, stage: str = "derive", **kwargs: Any) -> str:
    return "plan rules" if stage == "plan" else "simplify"


# (module, attribute, phase): wrapped where present (the pipeline's modules move; a missing one is skipped)
PATCHES: tuple[tuple[str, str, str | Callable[..., str]], ...] = (
    ("api", "derive", "derive"),
    ("api_ggn", "derive", "derive"),
    ("api_ggn", "_on_materialized", "derive"),
    ("api_kfac", "input_factor", "derive"),
    ("api_kfac", "output_factor", "derive"),
    ("api_kfac", "bias_input_factors", "derive"),
    ("simplify", "simplify", _simplify_phase),
    ("simplify.driver", "simplify", _simplify_phase),
    ("plan.compiled", "bind_sizes", "bind"),
    ("plan.compiled", "concrete", "bind"),
    ("plan.gram", "bind_sizes", "bind"),
    ("plan.gram", "number", "bind"),
    ("api_kfac", "bind_sizes", "bind"),
    ("api_kfac", "_bound", "bind"),
    ("plan.compiled", "candidate_paths", "paths"),
    ("plan.compiled", "opt_einsum_path", "paths"),
    ("plan.compiled", "rank", "score"),
    ("plan.compiled", "Program", "kernels"),
    ("plan.gram", "cached_lag_program", "kernels"),
    ("api_kfac", "cached_lag_program", "kernels"),
    ("ir.diagram", "diagram_hash", "hash"),
)
METHODS = (("plan.compiled", "Plan", "run", "run"), ("plan.lags", "LagProgram", "__call__", "run"))


def install_timers(timer: PhaseTimer) -> list[str]:
    """Wrap the pipeline's functions where their callers look them up (module attributes); returns what was wrapped."""
    from importlib import import_module

    # import_module, not ``import a.b as c``: ``tnderiv.plan`` is also the name of a public function
    wrapped = []
    for module_name, name, phase in PATCHES:
        try:
            module = import_module(f"tnderiv.{module_name}")
        except ImportError:
            continue
        if hasattr(module, name):
            setattr(module, name, timer.wrap(getattr(module, name), phase))
            wrapped.append(f"{module_name}.{name}")
    for module_name, cls_name, name, phase in METHODS:
        cls = getattr(import_module(f"tnderiv.{module_name}"), cls_name, None)
        if cls is not None and hasattr(cls, name):
            setattr(cls, name, timer.wrap(getattr(cls, name), phase))
            wrapped.append(f"{module_name}.{cls_name}.{name}")
    return wrapped


# ----- the calls ---------------------------------------------------------------------------------------
def calls(p: Problem) -> dict[str, Callable[[], Any]]:
    """One zero-argument call per quantity, as ``benchmarks/impls/tnderiv_impls.py`` makes them."""
    import tnderiv

    spec, x, g, module = weight_only_spec(p), p.x, p.grad_out, p.module
    shape = tuple(x.shape)
    return {
        "forward": lambda: tnderiv.forward(module, x),
        "vjp_x": lambda: tnderiv.vjp(module, "x", g, x_shape=shape),
        "vjp_weight": lambda: tnderiv.vjp(module, "weight", g, x=x),
        "per_sample_grad": lambda: tnderiv.per_sample_grad(spec, x, g, params=["weight"]),
        "grad_stats": lambda: tnderiv.grad_stats(spec, x, g, params=["weight"]),
        "kfac_expand": lambda: tnderiv.kfac(spec, x, g, approx="expand", loss_average=None),
        "kfac_reduce": lambda: tnderiv.kfac(spec, x, g, approx="reduce", loss_average=None),
        "ggn_diag": lambda: tnderiv.ggn(spec, x, p.sqrt_out, params="weight", kind="diag"),
    }


def _plan_misses() -> int:
    import tnderiv

    return tnderiv.cache_info()["plans"].misses


def measure(p: Problem, quantity: str, call: Callable[[], Any], timer: PhaseTimer, repeat: int) -> dict[str, Any]:
    """``repeat`` cold calls (each after ``clear_caches()``): times, phase split (median per phase), plans compiled."""
    import tnderiv

    totals, cpu, phases, plans = [], [], [], 0
    for _ in range(repeat):
        tnderiv.clear_caches()
        timer.reset()
        start, start_cpu = time.perf_counter(), time.process_time()
        call()
        total = time.perf_counter() - start
        cpu.append((time.process_time() - start_cpu) * 1e3)
        split = dict(timer.totals)
        split["other"] = max(0.0, total - sum(split.values()))
        totals.append(total * 1e3)
        phases.append({k: v * 1e3 for k, v in split.items()})
        plans = _plan_misses()
    warm = []
    for _ in range(3):
        start = time.perf_counter()
        call()
        warm.append((time.perf_counter() - start) * 1e3)
    return {
        "layer": p.case.id,
        "quantity": quantity,
        "cold_ms": totals,
        "median_ms": statistics.median(totals),
        "cpu_ms": statistics.median(cpu),  # process time: less sensitive to other processes on a shared machine
        "planning_ms": statistics.median(t - ph["run"] for t, ph in zip(totals, phases)),  # the cold call without its arithmetic
        "warm_ms": statistics.median(warm),
        "phases_ms": {k: statistics.median(ph[k] for ph in phases) for k in PHASES},
        "plans": plans,
    }


# ----- a model step ------------------------------------------------------------------------------------
MODEL_TASKS = {
    "first_order": ("per_sample_grad", "sum_grad_squared", "batch_l2", "variance"),
    "kfac": ("kfac",),
    "ggn_diag": ("ggn_diag",),
    "all": ("per_sample_grad", "sum_grad_squared", "batch_l2", "variance", "kfac", "ggn_diag"),
}


def model_step(repeat: int, batch: int = 8) -> list[dict[str, Any]]:
    """Cold time and plans compiled of one 3C3D step (``Curvature.compute``, type-2 Fisher) per task."""
    import tnderiv
    from benchmarks.models_zoo import ZOO
    from tnderiv.model import Curvature

    net = ZOO["3c3d"]
    model, (x, y) = net.model(), net.data(batch)
    out = []
    for task, quantities in MODEL_TASKS.items():
        times, plans = [], 0
        for _ in range(repeat):
            tnderiv.clear_caches()
            curv = Curvature(model, torch.nn.CrossEntropyLoss(), fisher="type-2")
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            curv.compute(x, y, quantities)
            times.append((time.perf_counter() - start) * 1e3)
            plans = _plan_misses()
        warm = []
        for _ in range(3):
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            curv.compute(x, y, quantities)
            warm.append((time.perf_counter() - start) * 1e3)
        out.append({"model": "3c3d", "batch": batch, "task": task, "quantities": list(quantities), "cold_ms": times,
                    "median_ms": statistics.median(times), "warm_ms": statistics.median(warm), "plans": plans})
        print(f"3c3d step {task:12s} cold {statistics.median(times):7.1f} ms (warm {statistics.median(warm):.1f}) plans {plans}", flush=True)
    return out


# ----- reporting ---------------------------------------------------------------------------------------
def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per quantity: median and worst cold time over layers, the dominant phase, plans per call."""
    out = []
    for quantity in QUANTITIES:
        mine = [r for r in rows if r["quantity"] == quantity]
        if not mine:
            continue
        medians = [r["median_ms"] for r in mine]
        worst = max(mine, key=lambda r: r["median_ms"])
        planning = [r["planning_ms"] for r in mine]
        phase_medians = {k: statistics.median(r["phases_ms"][k] for r in mine) for k in PHASES}
        out.append(
            {
                "quantity": quantity,
                "median_ms": statistics.median(medians),
                "worst_ms": worst["median_ms"],
                "worst_layer": worst["layer"],
                "planning_median_ms": statistics.median(planning),
                "planning_worst_ms": max(planning),
                "phases_median_ms": phase_medians,
                "plans_median": statistics.median(r["plans"] for r in mine),
            }
        )
    return out


def table(summary: list[dict[str, Any]]) -> str:
    head = "| quantity | median ms | worst ms (layer) | without run: median / worst ms | plans | " + " | ".join(PHASES) + " |"
    lines = [head, "|" + "---|" * (5 + len(PHASES))]
    for s in summary:
        phases = " | ".join(f"{s['phases_median_ms'][k]:.1f}" for k in PHASES)
        lines.append(
            f"| {s['quantity']} | {s['median_ms']:.1f} | {s['worst_ms']:.1f} ({s['worst_layer']}) | "
            f"{s['planning_median_ms']:.1f} / {s['planning_worst_ms']:.1f} | {s['plans_median']:g} | {phases} |"
        )
    return "\n".join(lines)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cases_for(patterns: list[str] | None) -> list[Case]:
    dense = [c for c in dense_cases() if c.id == "bert-base/attn.out"]
    return select(suite_cases() + dense, patterns)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", nargs="*", help="case id substrings or categories (default: all, plus a dense layer)")
    parser.add_argument("--quantities", nargs="*", choices=QUANTITIES, help="default: all")
    parser.add_argument("--repeat", type=int, default=3, help="cold calls per (layer, quantity); median and worst reported")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-phases", action="store_true", help="time without the phase timers (their overhead)")
    parser.add_argument("--model", action="store_true", help="also time cold 3C3D steps and count their plans")
    parser.add_argument("--json", type=Path, help="write the rows and the summary here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    import tnderiv

    timer = PhaseTimer()
    wrapped = [] if args.no_phases else install_timers(timer)
    quantities = args.quantities or list(QUANTITIES)
    warmup = Problem(probe_cases()[0])  # imports and torch's first kernels, once per process
    for call in calls(warmup).values():
        call()
    tnderiv.clear_caches()

    rows = []
    for case in cases_for(args.layers):
        p = Problem(case)
        for quantity, call in calls(p).items():
            if quantity not in quantities:
                continue
            row = measure(p, quantity, call, timer, args.repeat)
            rows.append(row)
            top = sorted(row["phases_ms"].items(), key=lambda kv: -kv[1])[:3]
            print(
                f"{case.id:42s} {quantity:16s} {row['median_ms']:7.1f} ms (worst {max(row['cold_ms']):6.1f}) "
                f"plans {row['plans']:2d}  " + ", ".join(f"{k} {v:.1f}" for k, v in top),
                flush=True,
            )
    steps = model_step(args.repeat) if args.model else []
    summary = summarize(rows)
    print()
    print(table(summary))
    every = [r["median_ms"] for r in rows]
    planning = [r["planning_ms"] for r in rows]
    print(f"\nall (layer, quantity): median {statistics.median(every):.1f} ms, worst {max(every):.1f} ms; without the "
          f"first run's arithmetic: median {statistics.median(planning):.1f} ms, worst {max(planning):.1f} ms; "
          f"targets ≤ {TARGET_MEDIAN_MS:g} ms median, ≤ {TARGET_WORST_MS:g} ms worst")
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        meta = {
            "commit": _commit(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "threads": torch.get_num_threads(),
            "repeat": args.repeat,
            "timers": wrapped,
            "load_average": load,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "command": "python -m benchmarks.bench_cold " + " ".join(sys.argv[1:]),
        }
        args.json.write_text(json.dumps({"meta": meta, "rows": rows, "summary": summary, "model_steps": steps}, indent=1))


if __name__ == "__main__":
    main()
