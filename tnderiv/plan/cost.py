"""The structure-aware cost model: what one contraction step costs, by the kernel that runs it.

Dense models (opt_einsum's FLOPs) price a 0/1 index pattern like any tensor: contracting ``x`` with
``Π[k, o, i]`` costs ``2·|x|·K·O`` multiply-adds although it only copies ``|x|·K·O / I`` numbers.
Here a step of data with a 0/1 constant is a *gather* (cost ≈ elements moved), a step with a copy
tensor a *relabel*, a convolution kernel its useful multiply-adds, a constant-only step nothing (it is
folded when the plan is built), and dense steps their GEMM FLOPs plus the elements they touch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

# One element moved costs about as much time as this many FLOPs in a BLAS kernel (memory-bound vs.
# compute-bound on CPUs and GPUs alike, within a factor of a few).
MOVE_COST = 8.0
# torch's convolution kernels avoid materializing the unfolded input where windows overlap; they then
# run at about this fraction of the time a GEMM with the same FLOPs plus its gather would take.
CONV_DISCOUNT = 0.5
# a fixed price per kernel launch, in FLOP-equivalents, so that needless steps are avoided
LAUNCH_COST = 2_000.0
# A weight gradient with many groups of several channels each (the per-sample trick: groups = N·G)
# runs well only with enough output positions per group; below this many it slows down in
# proportion. Measured on CPU (torch 2.13, 1 thread, N = 8, 3x3 kernels) against unfold + batched
# GEMM: break-even near 30 positions for up to 128x128 channels per group, near 150-200 for 256x256
# and more; 2-3x slower at 3x3 outputs.
GROUPED_WEIGHT_POSITIONS = 64
GROUPED_WEIGHT_POSITIONS_WIDE = 400
WIDE_GROUP = 128 * 128

KernelKind = Literal[
    "GEMM",
    "batched GEMM",
    "elementwise",
    "Hadamard sum",
    "outer product",
    "reduction",
    "transpose",
    "einsum",
    "gather",
    "scatter",
    "relabel",
    "conv",
    "conv_transpose",
    "conv_weight",
    "folded",
]  # what runs a step (the report and the cost model name kernels by it)
KINDS: tuple[KernelKind, ...] = get_args(KernelKind)


@dataclass(frozen=True)
class StepCost:
    """Cost of one step: ``flops_dense`` (every tensor dense), ``flops`` (useful arithmetic), ``moved`` elements, ``size`` of the output."""

    kind: KernelKind
    flops_dense: int
    flops: int
    moved: int
    size: int
    factor: float = 1.0  # time per FLOP relative to a GEMM (see ``conv_factor``)

    @property
    def time(self) -> float:
        """A time-like score in FLOP-equivalents (what candidate orders are ranked by)."""
        if self.kind == "folded":
            return 0.0
        return self.flops * self.factor + MOVE_COST * self.moved + LAUNCH_COST


def conv_factor(overlapping: bool, slowdown: float = 1.0) -> float:
    """Time per FLOP of a torch convolution kernel: cheaper than unfold + GEMM only where windows overlap."""
    return (CONV_DISCOUNT if overlapping else 1.0) * slowdown



def grouped_weight_slowdown(groups: int, channels_per_group: int, positions: int) -> float:
    """Slowdown of a grouped convolution weight gradient with few output positions (1 if not grouped or depthwise)."""
    if groups <= 1 or channels_per_group <= 4:
        return 1.0
    needed = GROUPED_WEIGHT_POSITIONS_WIDE if channels_per_group > WIDE_GROUP else GROUPED_WEIGHT_POSITIONS
    return max(1.0, needed / max(positions, 1))


def total_time(costs: list[StepCost]) -> float:
    """The score of a whole contraction order."""
    return sum(c.time for c in costs)
