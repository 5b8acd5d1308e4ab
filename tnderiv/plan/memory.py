"""The memory budget: what a call may allocate, checked from the plan's estimates before anything runs.

The budget is the one set by ``set_memory_budget(bytes)`` or, by default (``None``), the memory available
on the device right now: ``MemAvailable`` of ``/proc/meminfo`` on CPU (Linux; elsewhere unchecked),
``torch.cuda.mem_get_info`` on CUDA. A call whose result plus peak intermediates would exceed it raises
``MemoryBudgetError`` (a ``MemoryError``) naming the quantity, the bytes needed, the budget and what to
do. Without a budget of their own, calls that need less than ``UNCHECKED_BELOW`` bytes are not checked
(reading the available memory costs more than such a call).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

UNCHECKED_BELOW = 64 << 20  # bytes: smaller calls skip the default (available-memory) check
_REFRESH_S = 0.5  # how long a reading of the available memory is reused

_budget: int | None = None
_threshold = UNCHECKED_BELOW
_readings: dict[str, tuple[float, int | None]] = {}


class MemoryBudgetError(MemoryError):
    """A result or its intermediates would exceed the memory budget; raised before anything is allocated.

    ``quantity``, ``needed`` (bytes), ``budget`` (bytes) and ``source`` (where the budget comes from) are attributes.
    """

    def __init__(self, quantity: str, needed: int, budget: int, source: str, detail: str, options: Sequence[str]) -> None:
        self.quantity, self.needed, self.budget, self.source = quantity, needed, budget, source
        message = (
            f"{quantity} needs {format_bytes(needed)} ({needed:,} bytes: {detail}), more than the memory budget of "
            f"{format_bytes(budget)} ({source}); nothing was allocated. Options: " + "; ".join(options)
        )
        super().__init__(message)


def set_memory_budget(nbytes: int | None) -> None:
    """Limit what one call may allocate to ``nbytes`` (result plus peak intermediates); ``None``: the memory available."""
    global _budget, _threshold
    if nbytes is not None and (not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < 1):
        raise ValueError(f"memory budget {nbytes!r}: expected a positive number of bytes (int) or None (the memory available)")
    _budget = nbytes
    _threshold = UNCHECKED_BELOW if nbytes is None else min(UNCHECKED_BELOW, nbytes)


def get_memory_budget() -> int | None:
    """The budget set by ``set_memory_budget`` (``None``: the memory available on the device, read when needed)."""
    return _budget


def needs_check(nbytes: int) -> bool:
    """Whether a call of ``nbytes`` must be checked (a cheap comparison, for warm calls)."""
    return nbytes >= _threshold


def budget_for(device: Any) -> tuple[int | None, str]:
    """``(bytes, where they come from)`` for a call on ``device`` (``None`` where the available memory is unknown)."""
    if _budget is not None:
        return _budget, "set by tnderiv.set_memory_budget"
    key = str(device)
    now = time.monotonic()
    reading = _readings.get(key)
    if reading is None or now - reading[0] > _REFRESH_S:
        reading = (now, _available(device))
        _readings[key] = reading
    where = "GPU memory free" if key.startswith("cuda") else "memory available (MemAvailable)"
    return reading[1], f"{where} on {key}"


def _available(device: Any) -> int | None:
    key = str(device)
    if key.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(key))[0])
    if key != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_fits(quantity: str, needed: int, device: Any, detail: str, options: Sequence[str]) -> None:
    """Raise ``MemoryBudgetError`` if ``needed`` bytes exceed the budget for ``device``."""
    if not needs_check(needed):
        return
    budget, source = budget_for(device)
    if budget is not None and needed > budget:
        raise MemoryBudgetError(quantity, needed, budget, source, detail, options)


def format_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:,.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    raise AssertionError  # pragma: no cover


SMALLER_BATCH = "a smaller batch (fewer samples per call)"
SET_BUDGET = "tnderiv.set_memory_budget(bytes) to set the budget yourself (None: the memory available)"
MEMORY_LIMIT = "memory_limit=<bytes> to split the intermediates over the batch"
SMALLER_QUANTITY = "a smaller quantity (GGN kind='diag' instead of 'block', KFAC instead of a dense block, one parameter at a time)"
MC_COLUMNS = "fewer loss-Hessian columns: tnderiv.loss_hessian_sqrt(..., mc_samples=M) instead of the exact square root"

__all__ = ["MemoryBudgetError", "UNCHECKED_BELOW", "check_fits", "format_bytes", "get_memory_budget", "set_memory_budget"]
