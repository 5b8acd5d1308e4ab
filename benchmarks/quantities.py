"""The benchmarked quantities: what each computes, its reference implementation and its FLOP model.

FLOPs are those of the classic formulation (a convolution as a GEMM on the unfolded input), counted
as 2 per multiply-add, so that GFLOP/s compare implementations on the same work.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.cases import NUM_CLASSES, Case, conv_flops


@dataclass(frozen=True)
class Quantity:
    """``reference``: the implementation ratios are taken against (always torch-only, always available)."""

    name: str
    title: str
    reference: str
    flops: Callable[[Case], int]
    # relative Frobenius error in float64; 1e-6 leaves room for peers that build constants in float32
    # (einconv's scale factors), while a wrong padding or group structure is off by ≥ 1e-2
    tolerance: float = 1e-6


def _dims(case: Case) -> tuple[int, int, int, int]:
    """(groups, d_in, d_out, positions L) of the weight's Kronecker structure."""
    kw = case.kwargs
    if case.kind == "linear":
        return 1, kw["in_features"], kw["out_features"], math.prod(case.x_shape[1:-1])
    g = kw["groups"]
    d_in = kw["in_channels"] // g * math.prod(kw["kernel_size"])
    out = case.output_shape()
    return g, d_in, kw["out_channels"] // g, math.prod(out[2:])


def _kfac_a(approx: str) -> Callable[[Case], int]:
    def flops(case: Case) -> int:
        g, d_in, _, length = _dims(case)
        if approx == "expand":
            return 2 * case.batch * length * g * d_in * d_in
        return case.batch * length * g * d_in + 2 * case.batch * g * d_in * d_in

    return flops


def _kfac_g(approx: str) -> Callable[[Case], int]:
    def flops(case: Case) -> int:
        g, _, d_out, length = _dims(case)
        if approx == "expand":
            return 2 * case.batch * length * g * d_out * d_out
        return case.batch * length * g * d_out + 2 * case.batch * g * d_out * d_out

    return flops


def _weight_numel(case: Case) -> int:
    g, d_in, d_out, _ = _dims(case)
    return g * d_in * d_out


QUANTITIES: dict[str, Quantity] = {
    q.name: q
    for q in (
        Quantity("forward", "forward", "torch", conv_flops),
        Quantity("vjp_x", "input VJP", "torch", conv_flops),
        Quantity("vjp_weight", "weight VJP", "torch", conv_flops),
        Quantity("per_sample_grad", "per-sample gradients", "unfold", conv_flops),
        Quantity("kfac_A_expand", "KFAC-expand input factor A", "unfold", _kfac_a("expand")),
        Quantity("kfac_A_reduce", "KFAC-reduce input factor A", "unfold", _kfac_a("reduce")),
        Quantity("kfac_expand", "KFAC-expand, both factors", "unfold", lambda c: _kfac_a("expand")(c) + _kfac_g("expand")(c)),
        Quantity("kfac_reduce", "KFAC-reduce, both factors", "unfold", lambda c: _kfac_a("reduce")(c) + _kfac_g("reduce")(c)),
        Quantity("sum_grad_squared", "sum of squared per-sample gradients", "unfold",
                 lambda c: conv_flops(c) + 2 * c.batch * _weight_numel(c)),
        Quantity("batch_l2", "per-sample gradient L2 norms", "unfold",
                 lambda c: conv_flops(c) + 2 * c.batch * _weight_numel(c)),
        Quantity("diag_ggn", f"diagonal GGN (MSE on a {NUM_CLASSES}-output linear head)", "unfold",
                 lambda c: NUM_CLASSES * (conv_flops(c) + 2 * c.batch * _weight_numel(c))),
    )
}


def parse_quantities(names: list[str] | None) -> list[Quantity]:
    """The named quantities (all when ``names`` is empty); raises listing the valid names."""
    if not names:
        return list(QUANTITIES.values())
    unknown = [n for n in names if n not in QUANTITIES]
    if unknown:
        raise ValueError(f"unknown quantities {unknown}; valid quantities are {list(QUANTITIES)}")
    return [QUANTITIES[n] for n in names]
