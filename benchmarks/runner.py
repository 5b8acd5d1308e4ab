"""The benchmark loop: per layer and quantity, check every implementation against the oracle, then time them."""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import platform
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks import cases as cases_mod
from benchmarks.cases import Case
from benchmarks.impls import IMPLS, Impl, Missing, Prepared, Unsupported, tnderiv_impls
from benchmarks.oracles import ORACLES
from benchmarks.problem import Problem
from benchmarks.quantities import Quantity
from benchmarks.timing import (
    CPU_MEMORY_METHOD,
    CallTimeout,
    Timing,
    matmul_peak,
    peak_memory,
    pin_settings,
    time_interleaved,
    time_limit,
)

SLOW_CALL_S = 4.0  # a first call slower than this is the only one timed (no warm-up, no memory profiling)
PEERS = ("torch", "einconv", "unfoldNd", "backpack-for-pytorch", "curvlinops-for-pytorch", "opacus", "cotengra", "opt_einsum")


@dataclass(frozen=True)
class Settings:
    device: str = "cpu"
    repeat: int = 5
    warmup: int = 1
    threads: int | None = 1
    tf32: bool = False
    check: bool = True
    check_batch: int | None = 2
    memory: bool = True
    overhead: bool = True
    impls: tuple[str, ...] = ()
    budget_s: float = 1.0
    min_sample_s: float = 0.005
    call_limit_s: float = 30.0


class Progress:
    """One line per (layer, quantity) on stderr, with elapsed time and a rough remaining-time estimate."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def line(self, text: str) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        print(f"[{self.done:>4}/{self.total}] {elapsed:6.0f}s (~{eta:4.0f}s left) {text}", file=sys.stderr, flush=True)


def _status_of(error: BaseException) -> tuple[str, str]:
    message = f"{type(error).__name__}: {error}".strip()
    message = " ".join(message.split())[:300]
    if isinstance(error, CallTimeout):
        return "timeout", str(error)
    if isinstance(error, Missing):
        return "missing", str(error)
    if isinstance(error, Unsupported):
        text = str(error)
        return ("skipped", text) if text.startswith("skipped") else ("unsupported", text)
    return "raises", message


def _setup(impl: Impl, problem: Problem) -> Prepared:
    if not impl.available():
        raise Missing(f"{impl.requires} is not installed")
    return impl.setup(problem)


def _flatten(value: Any) -> dict[str, torch.Tensor]:
    if isinstance(value, dict):
        return {k: v for k, v in value.items()}
    return {"": value}


def compare(result: Any, oracle: Any, tolerance: float) -> tuple[str, str, float | None]:
    """``(status, note, relative error)``: ``ok`` or ``wrong`` (with the shape or the factor it is off by)."""
    got, want = _flatten(result), _flatten(oracle)
    worst, notes = 0.0, []
    checked = [k for k in want if k in got]
    if not checked:
        return "wrong", "returned none of the checked outputs", None
    for key in checked:
        g, w = got[key], want[key]
        label = f"{key}: " if key else ""
        if not isinstance(g, torch.Tensor):
            return "wrong", f"{label}returned {type(g).__name__}, expected a tensor", None
        g = g.detach().to(w.dtype)
        if tuple(g.shape) != tuple(w.shape):
            return "wrong", f"{label}shape {list(g.shape)}, expected {list(w.shape)}", None
        norm = w.norm().item()
        error = (g - w).norm().item() / (norm if norm > 0 else 1.0)
        if not error == error:  # NaN
            return "wrong", f"{label}NaN in the result", None
        worst = max(worst, error)
        if error > tolerance:
            gg = (g * g).sum().item()
            factor = (g * w).sum().item() / gg if gg > 0 else 0.0
            scaled = (g * factor - w).norm().item() / (norm if norm > 0 else 1.0)
            if scaled <= tolerance and factor != 0:
                notes.append(f"{label}agrees only up to a factor {factor:.6g} (relative error {error:.2e})")
            else:
                notes.append(f"{label}relative error {error:.2e}")
    skipped = [k for k in want if k not in got]
    if skipped:
        notes.append(f"not checked: {', '.join(skipped)}")
    wrong = any("relative error" in n or "factor" in n for n in notes)
    return ("wrong" if wrong else "ok"), "; ".join(notes), worst


class Runner:
    """Runs ``quantities`` × ``cases`` and accumulates JSON-ready records."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.records: list[dict[str, Any]] = []
        self.overhead: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.after_case: Callable[[], Any] = lambda: None

    # ----- one (case, quantity) ----------------------------------------------------------------
    def _impls(self, quantity: Quantity, case: Case) -> list[Impl]:
        found = [impl for impl in IMPLS.get(quantity.name, []) if impl.applies(case)]
        if self.s.impls:
            found = [i for i in found if i.name in self.s.impls or i.name == quantity.reference]
        return found

    def check(self, case: Case, quantity: Quantity, problem64: Problem, impls: list[Impl]) -> dict[str, dict[str, Any]]:
        """Every implementation against the float64 oracle: ``{impl: {status, note, rel_error}}``."""
        out: dict[str, dict[str, Any]] = {}
        oracle = ORACLES[quantity.name](problem64)
        for impl in impls:
            try:
                with time_limit(self.s.call_limit_s):
                    prepared = _setup(impl, problem64)
                    result = prepared.extract(prepared.call())
            except Exception as error:  # noqa: BLE001 — every failure is a reportable outcome
                status, note = _status_of(error)
                if status == "raises" and "--debug" in sys.argv:
                    traceback.print_exc()
                out[impl.name] = {"status": status, "note": note, "rel_error": None}
                continue
            status, note, error = compare(result, oracle, quantity.tolerance)
            out[impl.name] = {"status": status, "note": "; ".join(filter(None, [note, prepared.note])), "rel_error": error}
        return out

    def measure(self, case: Case, quantity: Quantity, problem: Problem, impls: list[Impl], checks: dict[str, dict[str, Any]]) -> None:
        prepared: dict[str, Prepared] = {}
        memory: dict[str, int | None] = {}
        slow: set[str] = set()
        timings_slow: dict[str, Timing] = {}
        cold: dict[str, float] = {}
        for impl in impls:
            entry = checks.get(impl.name)
            if entry is not None and entry["status"] in ("missing", "unsupported", "skipped", "raises", "timeout"):
                continue
            try:
                with time_limit(self.s.call_limit_s):
                    prepared[impl.name] = _setup(impl, problem)
                    start = time.perf_counter()
                    prepared[impl.name].call()  # cold: plans, caches, lazy initialization
                    cold[impl.name] = time.perf_counter() - start
                if cold[impl.name] > SLOW_CALL_S:
                    slow.add(impl.name)
                elif self.s.memory:  # a warm call under the memory profiler doubles as a warm-up call
                    memory[impl.name] = peak_memory(prepared[impl.name].call, self.s.device)
            except Exception as error:  # noqa: BLE001
                status, note = _status_of(error)
                checks[impl.name] = {"status": status, "note": note, "rel_error": None}
                prepared.pop(impl.name, None)
        for name in slow:  # its cold call is its one sample: its cost dwarfs the noise, more calls would blow the budget
            timings_slow[name] = Timing([cold[name]], 1)
        timings = time_interleaved(
            {name: p.call for name, p in prepared.items() if name not in slow},
            repeat=self.s.repeat, warmup=max(0, self.s.warmup - (1 if self.s.memory else 0)), device=self.s.device,
            min_sample_s=self.s.min_sample_s, budget_s=self.s.budget_s,
        ) if prepared else {}
        timings.update(timings_slow)
        flops = quantity.flops(case)
        ref_time = timings[quantity.reference].median if quantity.reference in timings else None
        for impl in impls:
            record = self._base(case, quantity, impl)
            record.update(checks.get(impl.name, {"status": "unchecked", "note": "", "rel_error": None}))
            if impl.name in prepared and record["note"] == "":
                record["note"] = prepared[impl.name].note
            if impl.name in timings:
                t = timings[impl.name]
                record.update(t.to_dict())
                if impl.name in slow:
                    record["note"] = "; ".join(filter(None, [record["note"], f"slow (> {SLOW_CALL_S:g} s): one (cold) call timed"]))
                record["gflops"] = flops / t.median / 1e9
                record["ratio_vs_reference"] = t.median / ref_time if ref_time else None
                if impl.name in memory:
                    record["peak_bytes"] = memory[impl.name]
            if impl.name == "tnderiv" and quantity.name in tnderiv_impls.PLANNED:
                try:
                    record["plan"] = tnderiv_impls.plan_facts(problem, quantity.name)
                except Exception as error:  # noqa: BLE001
                    record["plan"] = {"error": _status_of(error)[1]}
            self.records.append(record)

    def _base(self, case: Case, quantity: Quantity, impl: Impl) -> dict[str, Any]:
        return {
            "layer": case.id, "category": case.category, "describe": case.describe(), "quantity": quantity.name,
            "impl": impl.name, "reference": quantity.reference, "flops": quantity.flops(case) if case.category != "probe" else None,
        }

    def measure_overhead(self, case: Case, problem: Problem) -> None:
        """Warm API call vs the plan's compiled terms run directly; cold call after clearing every plan cache."""
        import tnderiv

        for quantity in tnderiv_impls.PLANNED:
            entry: dict[str, Any] = {"layer": case.id, "category": case.category, "quantity": quantity}
            try:
                api = tnderiv_impls.IMPL_SETUPS[quantity](problem).call
                direct = tnderiv_impls.direct_call(problem, quantity)
                a, b = api(), direct()
                if not torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max())):
                    raise AssertionError("the direct call and the API disagree")
                # a difference of a few percent needs more and longer samples than the comparisons between libraries
                t = time_interleaved({"api": api, "direct": direct}, repeat=max(self.s.repeat, 9), warmup=1,
                                     device=self.s.device, min_sample_s=max(self.s.min_sample_s, 0.01), budget_s=self.s.budget_s)
                entry.update(api_s=t["api"].median, direct_s=t["direct"].median,
                             overhead=t["api"].median / t["direct"].median - 1)
                tnderiv.clear_caches()
                start = time.perf_counter()
                api()
                cold = time.perf_counter() - start
                entry.update(cold_s=cold, cold_plan_s=max(0.0, cold - t["api"].median))
            except Exception as error:  # noqa: BLE001
                entry["error"] = _status_of(error)[1]
            self.overhead.append(entry)

    # ----- everything ------------------------------------------------------------------------------
    def run(self, cases: Sequence[Case], quantities: Sequence[Quantity]) -> None:
        timed = [c for c in cases if c.category != "probe"]
        progress = Progress(len(cases) * len(quantities) + (len(timed) if self.s.overhead else 0))
        for case in cases:
            probe = case.category == "probe"
            try:
                problem = None if probe else Problem(case, torch.float32, self.s.device)
                check_case = case if (probe or not self.s.check_batch) else dataclasses.replace(case, batch=self.s.check_batch)
                problem64 = Problem(check_case, torch.float64, self.s.device) if (self.s.check or probe) else None
            except Exception as error:  # noqa: BLE001
                self.notes.append(f"{case.id}: could not build the layer: {_status_of(error)[1]}")
                continue
            for quantity in quantities:
                impls = self._impls(quantity, case)
                checks: dict[str, dict[str, Any]] = {}
                if problem64 is not None:
                    try:
                        checks = self.check(case, quantity, problem64, impls)
                    except Exception as error:  # noqa: BLE001 — the oracle itself failed
                        self.notes.append(f"{case.id} {quantity.name}: oracle failed: {_status_of(error)[1]}")
                        progress.line(f"{case.id} {quantity.name}: oracle failed")
                        continue
                if probe:
                    for impl in impls:
                        record = self._base(case, quantity, impl)
                        record.update(checks[impl.name])
                        self.records.append(record)
                    bad = [f"{n}={c['status']}" for n, c in checks.items() if c["status"] != "ok"]
                    progress.line(f"{case.id} {quantity.name}: checked ({', '.join(bad) or 'all ok'})")
                    continue
                assert problem is not None
                self.measure(case, quantity, problem, impls, checks)
                progress.line(self._summary(case, quantity))
            if problem is not None and self.s.overhead:
                self.measure_overhead(case, problem)
                ov = [o for o in self.overhead if o["layer"] == case.id and "overhead" in o]
                text = ", ".join(f"{o['quantity']} {o['overhead']:+.1%} cold {o['cold_plan_s'] * 1e3:.0f}ms" for o in ov)
                progress.line(f"{case.id} tnderiv call overhead: {text or 'n/a'}")
            self.after_case()

    def _summary(self, case: Case, quantity: Quantity) -> str:
        rows = [r for r in self.records if r["layer"] == case.id and r["quantity"] == quantity.name]
        parts = []
        for r in rows:
            if "median_s" in r:
                flag = "" if r["status"] == "ok" else f"[{r['status']}]"
                parts.append(f"{r['impl']} {r['median_s'] * 1e3:.2f}ms{flag}")
            else:
                parts.append(f"{r['impl']} {r['status']}")
        return f"{case.id} {quantity.name}: " + ", ".join(parts)

    def to_json(self, cases: Sequence[Case], quantities: Sequence[Quantity], command: str, peak: dict[str, Any], pinned: dict[str, Any]) -> dict[str, Any]:
        return {
            "meta": {
                "command": command,
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "device": self.s.device,
                "device_name": _device_name(self.s.device),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "git_commit": _git_commit(),
                "versions": _versions(),
                "settings": {**dataclasses.asdict(self.s), **pinned},
                "dtype": "float32",
                "check": "float64 oracle (torch autograd / torch conv), relative Frobenius error ≤ tolerance"
                         + (f", at batch {self.s.check_batch}" if self.s.check_batch else ""),
                "matmul_peak": peak,
                "memory_method": "torch.cuda.max_memory_allocated" if self.s.device.startswith("cuda") else CPU_MEMORY_METHOD,
                "cases": [{"id": c.id, "category": c.category, "describe": c.describe(), "note": c.note} for c in cases],
                "quantities": [{"name": q.name, "title": q.title, "reference": q.reference, "tolerance": q.tolerance} for q in quantities],
                "notes": self.notes,
            },
            "results": self.records,
            "overhead": self.overhead,
        }


def dumps(data: dict[str, Any]) -> str:
    """JSON with one result per line (compact, and diffs stay readable)."""
    lines = ["{"]
    keys = list(data)
    for i, key in enumerate(keys):
        value = data[key]
        end = "," if i < len(keys) - 1 else ""
        if isinstance(value, list):
            items = [json.dumps(v, default=str, ensure_ascii=False) for v in value]
            body = ",\n  ".join(items)
            lines.append(f"{json.dumps(key)}: [\n  {body}\n]{end}" if items else f"{json.dumps(key)}: []{end}")
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value, default=str, ensure_ascii=False, indent=1)}{end}")
    return "\n".join(lines) + "\n}\n"


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PEERS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def run(
    settings: Settings,
    quantities: Sequence[Quantity],
    layer_patterns: Sequence[str] | None,
    probes: bool,
    dense: bool,
    out: Path,
    command: str,
) -> dict[str, Any]:
    """Run the benchmark and write the JSON; returns it."""
    if settings.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={settings.device!r}: CUDA is not available on this machine")
    pinned = pin_settings(settings.device, settings.threads, settings.tf32)
    selected = cases_mod.suite_cases(settings.device) + (cases_mod.dense_cases(settings.device) if dense else [])
    selected = cases_mod.select(selected, layer_patterns)
    if probes:
        selected = cases_mod.probe_cases() + selected
    print(f"benchmarking {len(selected)} layers × {len(quantities)} quantities on {settings.device} "
          f"({pinned['threads']} threads, TF32 {'on' if settings.tf32 else 'off'})", file=sys.stderr, flush=True)
    peak = matmul_peak(settings.device)
    print(f"matmul peak: {peak['gflops']:.1f} GFLOP/s (float32, n={peak['size']})", file=sys.stderr, flush=True)
    runner = Runner(settings)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.json")

    def save(path: Path) -> dict[str, Any]:
        data = runner.to_json(selected, quantities, command, peak, pinned)
        path.write_text(dumps(data))
        return data

    runner.after_case = lambda: save(partial)  # an interrupted run keeps what it measured
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peers' warnings (BackPACK's hooks, torch's 'same' copies) would drown the progress
        runner.run(selected, quantities)
    data = save(out)
    partial.unlink(missing_ok=True)
    print(f"wrote {out}", file=sys.stderr)
    return data
