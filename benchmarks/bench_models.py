"""Whole networks side by side: tnderiv's ``Curvature`` against a gradient step, BackPACK, curvlinops and torch.func.

    .venv/bin/python -m benchmarks.bench_models [--quick] [--models 3c3d resnet18 transformer]

Per network, one worker process (every library in it, one torch thread) first checks every configuration
in float64 on a small batch against the independent oracles of ``benchmarks.models_oracles``, then times the
correct ones at batch 32 in float32: calls interleaved round-robin (the order rotating every round), the
median of the samples reported as a multiple of the gradient step's median. Peak memory per call is the
process's peak resident set size during the call (``VmHWM`` reset through ``/proc/self/clear_refs``) minus
its resident size before; the worker runs with ``MALLOC_MMAP_THRESHOLD_`` fixed so that freed tensors go
back to the system. The first call on a fresh process is timed in one more process per task, after
``tnderiv.clear_caches()``. Results go to ``docs/benchmarks/models.json``; ``benchmarks.models_report``
writes ``docs/benchmarks_models.md`` and the plot.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.models_impls import Config, Prepared, Unsupported, configurations
from benchmarks.models_oracles import check, oracle
from benchmarks.models_zoo import ZOO

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks" / "models.json"
ALL_TASKS = ("per_sample_grad", "sum_grad_squared", "batch_l2", "variance", "first_order", "kfac_mc", "kfac", "ggn_diag", "ggn_diag_mc")
BIG_TASKS = ("per_sample_grad", "first_order", "kfac_mc", "kfac", "ggn_diag", "ggn_diag_mc")
MEMORY_METHOD = (
    "peak resident set size of the process during one call (VmHWM, reset before the call through "
    "/proc/self/clear_refs) minus the resident size before it; median over the timed calls; the worker runs "
    "with MALLOC_MMAP_THRESHOLD_=65536 so that freed tensors are returned to the system"
)


@dataclass(frozen=True)
class Plan:
    """What to run on one network."""

    model: str
    tasks: tuple[str, ...]
    batch: int = 32
    check_batch: int = 2
    repeat: int = 5  # timed samples per configuration (median)
    slow_s: float = 3.0  # a configuration whose first call is slower gets ``slow_repeat`` samples
    slow_repeat: int = 1
    cold_tasks: tuple[str, ...] = ()
    extra: tuple[str, ...] = field(default=())  # names of extra configurations (tests)


FULL = (
    Plan("3c3d", ALL_TASKS, check_batch=3, repeat=4, slow_s=30.0, cold_tasks=BIG_TASKS),
    Plan("resnet18", BIG_TASKS, repeat=3, slow_s=3.0, cold_tasks=("first_order",)),
    Plan("transformer", BIG_TASKS, repeat=3, slow_s=3.0, cold_tasks=("kfac_mc",)),
)
QUICK = (Plan("3c3d", ("first_order", "kfac", "ggn_diag"), batch=8, repeat=2, slow_s=30.0, cold_tasks=("kfac",)),)


# ----- memory -----------------------------------------------------------------------------------------------------
def _status_kb(field_name: str) -> int | None:
    try:
        match = re.search(rf"{field_name}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(match.group(1)) if match else None


def measured_call(fn: Callable[[], Any]) -> tuple[float, int | None]:
    """Seconds of one call and the bytes its peak resident size rose above the size before it (None: unknown)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
        before = _status_kb("VmRSS")
    except OSError:
        before = None
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = _status_kb("VmHWM") if before is not None else None
    del result
    return seconds, None if peak is None or before is None else max(0, peak - before) * 1024


# ----- one network, in its worker process ---------------------------------------------------------------------------
def check_all(plan: Plan, configs: Sequence[Config]) -> dict[str, dict[str, Any]]:
    """Each configuration against the float64 oracle (float32 with a loose tolerance where float64 raises)."""
    net = ZOO[plan.model]
    model, (x, y) = net.model(torch.float64), net.data(plan.check_batch, torch.float64)
    reference = oracle(model, x, y)
    out: dict[str, dict[str, Any]] = {}
    for config in configs:
        try:
            out[config.id] = check(config.setup(model, x, y), config.task, reference, complete=config.library == "tnderiv")
        except Unsupported as error:
            out[config.id] = {"status": "unsupported", "note": str(error)[:300], "rel_error": None}
        except Exception as error:  # noqa: BLE001 — retried in float32: some peers break in float64 only
            out[config.id] = _check_float32(plan, config, reference, error)
    return out


def _check_float32(plan: Plan, config: Config, reference: Any, first: Exception) -> dict[str, Any]:
    net = ZOO[plan.model]
    model, (x, y) = net.model(torch.float32), net.data(plan.check_batch, torch.float32)
    why = f"float64 raises ({type(first).__name__}: {str(first)[:120]})"
    try:
        result = check(config.setup(model, x, y), config.task, reference, complete=config.library == "tnderiv", tolerance=1e-4)
    except Exception as error:  # noqa: BLE001 — a peer's crash is a reportable outcome
        return {"status": "raises", "note": f"{type(error).__name__}: {str(error)[:250]}", "rel_error": None}
    result["note"] = "; ".join(filter(None, [f"checked in float32 (tolerance 1e-4): {why}", result["note"]]))
    return result


def time_all(plan: Plan, configs: Sequence[Config], checks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Interleaved timing and memory of every correct configuration (the gradient step first)."""
    net = ZOO[plan.model]
    model, (x, y) = net.model(torch.float32), net.data(plan.batch, torch.float32)
    prepared: dict[str, Prepared] = {}
    out: dict[str, dict[str, Any]] = {}
    for config in configs:
        if checks.get(config.id, {}).get("status") != "ok":
            continue
        try:
            prepared[config.id] = config.setup(model, x, y)
            start = time.perf_counter()
            prepared[config.id].call()  # first call in this process (plans, caches, lazy initialization)
            out[config.id] = {"first_call_s": time.perf_counter() - start, "samples_s": [], "peak_bytes": []}
        except Exception as error:  # noqa: BLE001
            checks[config.id] = {"status": "raises", "note": f"float32: {type(error).__name__}: {str(error)[:250]}", "rel_error": None}
            prepared.pop(config.id, None)
    wanted = {k: plan.repeat if v["first_call_s"] < plan.slow_s else plan.slow_repeat for k, v in out.items()}
    names = list(prepared)
    for round_ in range(max(wanted.values(), default=0)):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            if len(out[name]["samples_s"]) >= wanted[name]:
                continue
            seconds, peak = measured_call(prepared[name].call)
            out[name]["samples_s"].append(seconds)
            if peak is not None:
                out[name]["peak_bytes"].append(peak)
    for entry in out.values():
        entry["median_s"] = statistics.median(entry["samples_s"])
        entry["peak_bytes"] = int(statistics.median(entry["peak_bytes"])) if entry["peak_bytes"] else None
    return out


def run_network(plan: Plan, extra: Sequence[Config] = (), progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Check and time every configuration of ``plan`` in this process; ``extra`` configurations are added (tests)."""
    torch.set_num_threads(1)
    configs = configurations(plan.tasks) + list(extra)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BackPACK's and curvlinops' warnings would drown the progress
        checks = check_all(plan, configs)
        progress(f"{plan.model}: checked {len(configs)} configurations in {time.perf_counter() - start:.0f}s: "
                 + ", ".join(f"{k}={v['status']}" for k, v in checks.items() if v["status"] != "ok"))
        timings = time_all(plan, configs, checks)
    grad = timings.get("torch/grad", {}).get("median_s")
    rows = []
    for config in configs:
        row = {"model": plan.model, "library": config.library, "task": config.task, **checks[config.id]}
        row.update(timings.get(config.id, {}))
        if "median_s" in row and grad:
            row["ratio"] = row["median_s"] / grad
        rows.append(row)
    progress(f"{plan.model}: timed in {time.perf_counter() - start:.0f}s")
    return {"plan": asdict(plan), "rows": rows, "seconds": time.perf_counter() - start}


# ----- the first call on a fresh process ------------------------------------------------------------------------------
def cold_call(model_name: str, task: str, batch: int) -> dict[str, Any]:
    """In a fresh process: warm torch with gradient steps, clear tnderiv's caches, time the first and warm calls."""
    import tnderiv
    from benchmarks.models_impls import grad_step, tnderiv_setup

    torch.set_num_threads(1)
    net = ZOO[model_name]
    model, (x, y) = net.model(torch.float32), net.data(batch, torch.float32)
    step = grad_step(model, x, y)
    for _ in range(2):
        step.call()
    tnderiv.clear_caches()
    prepared = tnderiv_setup(task)(model, x, y)
    start = time.perf_counter()
    prepared.call()
    cold = time.perf_counter() - start
    grads, warms = [], []
    for _ in range(3):
        grads.append(measured_call(step.call)[0])
        warms.append(measured_call(prepared.call)[0])
    grad, warm = statistics.median(grads), statistics.median(warms)
    return {"model": model_name, "task": task, "cold_s": cold, "warm_s": warm, "grad_s": grad, "ratio": cold / grad,
            "planning_ratio": (cold - warm) / grad}


def _subprocess(args: list[str], timeout: float) -> dict[str, Any]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench_models", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"worker {args} failed: {done.stderr[-2000:]}")
    sys.stderr.write(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----- everything ---------------------------------------------------------------------------------------------------------
def run(plans: Sequence[Plan], command: str, out: Path) -> dict[str, Any]:
    data: dict[str, Any] = {"meta": _meta(command, plans), "networks": [], "rows": [], "cold": []}
    for plan in plans:
        print(f"[{_now()}] {plan.model}: worker started", file=sys.stderr, flush=True)
        result = _subprocess(["--worker", json.dumps(asdict(plan))], timeout=1800)
        data["networks"].append({"model": plan.model, "describe": ZOO[plan.model].describe, "plan": result["plan"],
                                 "seconds": result["seconds"]})
        data["rows"].extend(result["rows"])
        for task in plan.cold_tasks:
            try:
                entry = _subprocess(["--cold", plan.model, task, str(plan.batch)], timeout=900)
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                entry = {"model": plan.model, "task": task, "error": str(error)[-300:]}
            data["cold"].append(entry)
            print(f"[{_now()}] {plan.model} {task}: first call {entry.get('ratio', float('nan')):.1f}× a gradient step",
                  file=sys.stderr, flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return data


def _meta(command: str, plans: Sequence[Plan]) -> dict[str, Any]:
    from benchmarks.runner import _device_name, _git_commit, _versions

    return {
        "command": command, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": _device_name("cpu"), "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg(),
        "platform": platform.platform(), "python": platform.python_version(), "git_commit": _git_commit(),
        "versions": _versions(), "threads": 1, "dtype": "float32", "memory_method": MEMORY_METHOD,
        "check": "float64, small batch, against autograd oracles (benchmarks/models_oracles.py), relative error ≤ 1e-7",
        "plans": [asdict(p) for p in plans],
    }


def _now() -> str:
    return datetime.datetime.now().strftime("%H:%M:%S")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_models", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3C3D only, batch 8, three tasks, two samples (a fast check)")
    parser.add_argument("--models", nargs="+", choices=sorted(ZOO), help="only these networks (of the full plan, or tiny)")
    parser.add_argument("--out", type=Path, default=None, help=f"JSON to write (default {OUT.relative_to(ROOT)}; --quick: /tmp)")
    parser.add_argument("--no-page", action="store_true", help="do not regenerate docs/benchmarks_models.md and the plot")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--cold", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_network(Plan(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(args.worker).items()}),
                                     progress=lambda s: print(f"[{_now()}] {s}", file=sys.stderr, flush=True)), default=str))
        return 0
    if args.cold:
        print(json.dumps(cold_call(args.cold[0], args.cold[1], int(args.cold[2]))))
        return 0
    plans = list(QUICK if args.quick else FULL)
    if args.models:
        known = {p.model: p for p in plans}
        plans = [known.get(m, Plan(m, ("per_sample_grad", "first_order", "kfac", "ggn_diag"), batch=8, repeat=2)) for m in args.models]
    out = args.out or (Path("/tmp/models-quick.json") if args.quick else OUT)
    command = "python -m benchmarks.bench_models " + " ".join(sys.argv[1:] if argv is None else argv)
    data = run(plans, command.strip(), out)
    print(f"wrote {out}", file=sys.stderr)
    if not args.no_page and not args.quick:
        from benchmarks.models_report import write_page

        write_page(data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
