"""What a plan checks before it runs: the operands it is given, and the memory it will need."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tnderiv.ir import terms_of
from tnderiv.plan.memory import (
    MC_COLUMNS,
    MEMORY_LIMIT,
    SET_BUDGET,
    SMALLER_BATCH,
    SMALLER_QUANTITY,
    check_fits,
    format_bytes,
)
from tnderiv.plan.protocol import CompiledPlan


def check_operands(plan: CompiledPlan, given: Mapping[str, Any]) -> None:
    """Raise unless ``given`` has every operand of ``plan`` with the shape, dtype and device it was made for."""
    missing = [n for n in plan.operand_names if n not in given]
    if missing:
        raise ValueError(f"missing operands {missing}; the plan needs {list(plan.operand_names)}")
    like = plan._like
    for name in plan.operand_names:
        array, expected = given[name], plan.shapes.get(name)
        shape = getattr(array, "shape", None)
        if shape is None:
            raise TypeError(f"{name} must be an array (torch.Tensor or cupy.ndarray), got {type(array).__name__}")
        if expected is not None and tuple(shape) != expected:
            raise ValueError(
                f"{name} has shape {tuple(shape)}, but this plan was made for {name} of shape {expected}; "
                "a plan runs only the shapes it was planned for (plan again, or call tnderiv.forward/vjp/..., "
                "which plan once per shape)"
            )
        if array.dtype != like.dtype:
            raise TypeError(f"{name} has dtype {array.dtype}, but this plan was made for {like.dtype}")
        if array.device != like.device:
            raise ValueError(f"{name} is on {array.device}, but this plan was made for {like.device}")


def result_bytes(plan: CompiledPlan) -> int:
    return math.prod(plan.out_shape) * plan.term_plans[0].itemsize


def needed_bytes(plan: CompiledPlan) -> int:
    """The result plus the intermediates alive at the peak (chunked: all chunk results, their concatenation, one chunk's intermediates)."""
    result = result_bytes(plan)
    if plan._chunked is not None:
        return 2 * result + plan._chunked.peak_memory
    return max(plan.peak_memory, result)


def check_plan_memory(plan: CompiledPlan, quantity: str) -> None:
    """Raise ``MemoryBudgetError`` if ``plan.needed_bytes`` exceed the budget, with the options that would help."""
    needed, result = plan.needed_bytes, result_bytes(plan)
    detail = f"result {list(plan.out_shape)} of {result:,} bytes, peak with intermediates {format_bytes(needed)}"
    per_sample = bool({"n", "m"} & set(terms_of(plan.expr)[0].open_legs))
    intermediates = needed > 2 * result
    options = []
    if per_sample or intermediates:
        options.append(SMALLER_BATCH)
    else:
        options.append(f"the result alone is {format_bytes(result)} and does not shrink with the batch: {SMALLER_QUANTITY}")
    if intermediates and plan._chunked is None:
        options.append(MEMORY_LIMIT)
    if "sqrt_out" in plan.operand_names and (per_sample or intermediates):
        options.append(MC_COLUMNS)
    options.append(SET_BUDGET)
    check_fits(quantity, needed, plan._like.device, detail, options)
