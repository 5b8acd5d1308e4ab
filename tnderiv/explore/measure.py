"""Time one candidate order on this machine's device with random operands (best and median of repeated runs)."""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

from tnderiv.api import plan as plan_of
from tnderiv.explore.settings import Settings, Target, resolve
from tnderiv.plan.bind import OUTPUT

MAX_ELEMENTS = 1 << 25  # operands of more elements than this are not allocated for a measurement
MAX_BYTES = 1 << 30  # nor orders whose intermediates need more than this at once
BUDGET_S = 0.3  # time spent repeating one measurement


def measure(target: Target, settings: Settings, optimize: Any) -> dict[str, Any]:
    """Best and median wall time of the term's plan with ``optimize`` (a path or ``'auto'``), float32, on cuda if present."""
    import torch

    resolved = resolve(target, settings)
    term = resolved.terms[settings.term]
    shapes = resolved.term_shapes(settings.term)
    operands = {name: shape for name, shape in shapes.items() if name != OUTPUT}
    total = sum(math.prod(shape) for shape in operands.values())
    if total > MAX_ELEMENTS:
        raise ValueError(f"operands of {total:,} elements: the explorer measures up to {MAX_ELEMENTS:,} (make the sizes smaller)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    plan = plan_of(term, shapes, optimize=optimize, device=device)
    if plan.peak_memory > MAX_BYTES:
        raise ValueError(f"this order's intermediates need {plan.peak_memory:,} bytes at once: the explorer measures up to "
                         f"{MAX_BYTES:,} (make the sizes smaller or pick an order with a smaller peak)")  # fmt: skip
    generator = torch.Generator(device=device).manual_seed(0)
    tensors = {name: torch.randn(shape, generator=generator, device=device) for name, shape in operands.items()}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):  # warm-up: first-call allocations, kernel selection, caches
        plan(tensors)
    sync()
    times: list[float] = []
    deadline = time.perf_counter() + BUDGET_S
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 200):
        start = time.perf_counter()
        plan(tensors)
        sync()
        times.append(time.perf_counter() - start)
    # the fastest run is the one least disturbed by other work on the machine (timeit's advice); the median is typical
    return {"best_s": min(times), "median_s": statistics.median(times), "repeats": len(times), "device": device,
            "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu"}  # fmt: skip
