"""Timing and memory: pinned settings, interleaved warmed-up median timings, peak memory, matmul peak."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

CPU_MEMORY_METHOD = (
    "torch profiler memory timeline (profile_memory=True): peak bytes of torch tensors allocated during the call "
    "and not freed before it, minus nothing preexisting; Python objects and allocator caching are not counted"
)


class CallTimeout(Exception):
    """A call ran past the per-call limit."""


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise ``CallTimeout`` in the block after ``seconds`` (checked between Python bytecodes, so a single long
    kernel finishes first). Main thread only; ``None`` or 0: no limit."""
    if not seconds:
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise CallTimeout(f"exceeded the {seconds:g} s limit per call")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def pin_settings(device: str, threads: int | None, tf32: bool) -> dict[str, Any]:
    """Fix thread count and TF32 flags; returns them for the results' metadata."""
    if threads is not None:
        torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = False
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    return {"threads": torch.get_num_threads(), "tf32": tf32, "cudnn_benchmark": False}


def synchronizer(device: str) -> Callable[[], None]:
    if device.startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


@dataclass
class Timing:
    """Seconds per call: the median of ``samples``; each sample averages ``number`` back-to-back calls."""

    samples: list[float]
    number: int

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def to_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "samples_s": self.samples, "number": self.number}


def time_interleaved(
    calls: dict[str, Callable[[], Any]],
    *,
    repeat: int,
    warmup: int,
    device: str,
    min_sample_s: float = 0.005,
    budget_s: float = 1.0,
) -> dict[str, Timing]:
    """``warmup`` untimed calls each, then samples taken round-robin (the order rotates every round).

    The first timed call calibrates ``number`` (calls per sample, so that a sample lasts at least
    ``min_sample_s``) and, when ``number == 1``, is the first sample. Every call gets ``repeat``
    samples, fewer (but at least 3) when they would take longer than ``budget_s``.
    """
    sync = synchronizer(device)

    def once(fn: Callable[[], Any]) -> float:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    for fn in calls.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {}
    number: dict[str, int] = {}
    wanted: dict[str, int] = {}
    for name, fn in calls.items():
        t = once(fn)
        number[name] = max(1, min(100, math.ceil(min_sample_s / max(t, 1e-7))))
        samples[name] = [t] if number[name] == 1 else []
        wanted[name] = max(min(3, repeat), min(repeat, int(budget_s / max(t * number[name], 1e-9))))
    names = list(calls)
    for round_ in range(max(wanted.values(), default=0)):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            if len(samples[name]) >= wanted[name]:
                continue
            fn, k = calls[name], number[name]
            sync()
            start = time.perf_counter()
            for _ in range(k):
                fn()
            sync()
            samples[name].append((time.perf_counter() - start) / k)
    return {name: Timing(samples[name], number[name]) for name in names}


def peak_memory(fn: Callable[[], Any], device: str) -> int | None:
    """Peak bytes allocated by one call beyond what was allocated before it (None if not measurable)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        result = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        del result
        return int(peak)
    return _cpu_peak(fn)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler's C++ start/stop lines (written to file descriptor 2)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _cpu_peak(fn: Callable[[], Any]) -> int | None:
    try:
        from torch.profiler import ProfilerActivity, profile
        from torch.profiler._memory_profiler import Action
    except ImportError:  # pragma: no cover
        return None
    with warnings.catch_warnings(), _quiet_stderr():
        warnings.simplefilter("ignore")
        try:
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
                result = fn()
                del result
            timeline = prof._memory_profile().timeline
        except Exception:  # noqa: BLE001 — a private API: fall back to "not measured"
            return None
    current = peak = 0
    for _, action, _, size in timeline:
        if action == Action.CREATE:
            current += size
        elif action == Action.DESTROY:
            current -= size
        peak = max(peak, current)
    return int(peak)


def matmul_peak(device: str, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The best measured GFLOP/s of a square ``torch.mm`` (the device's practical peak under these settings)."""
    sizes = (512, 1024, 2048) if device == "cpu" else (2048, 4096, 8192)
    best: dict[str, Any] = {"gflops": 0.0, "size": None}
    for n in sizes:
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        t = time_interleaved({"mm": lambda a=a, b=b: a @ b}, repeat=5, warmup=1, device=device, budget_s=2.0)["mm"]
        gflops = 2 * n**3 / t.median / 1e9
        if gflops > best["gflops"]:
            best = {"gflops": gflops, "size": n}
    return best
