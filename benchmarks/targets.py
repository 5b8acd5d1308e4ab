"""The speed targets of issues 3 and 7, evaluated on the results (real-layer suite only, as the issues say)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Record = dict[str, Any]
SUITE_EXCLUDED = ("probe", "linear")


@dataclass(frozen=True)
class Outcome:
    measured: str
    met: bool | None  # None: not measurable from these results
    worst: str = ""


@dataclass(frozen=True)
class Target:
    """``why`` explains a miss and what would fix it (shown only when the target is missed)."""

    id: str
    issue: int
    text: str
    device: str  # "cpu", "cuda" or "any"
    evaluate: Callable[[Sequence[Record]], Outcome]
    why: str = ""


def _times(records: Sequence[Record], quantity: str, impl: str) -> dict[str, float]:
    """Median seconds per suite layer of a correct implementation."""
    return {
        r["layer"]: r["median_s"]
        for r in records
        if r["quantity"] == quantity and r["impl"] == impl and r["status"] == "ok" and "median_s" in r
        and r["category"] not in SUITE_EXCLUDED
    }


def ratios(records: Sequence[Record], quantity: str, impl: str, baseline: str) -> dict[str, float]:
    """``t(impl) / t(baseline)`` per suite layer where both are correct and timed."""
    a, b = _times(records, quantity, impl), _times(records, quantity, baseline)
    return {layer: a[layer] / b[layer] for layer in a if layer in b}


def _worst(r: dict[str, float], high: bool = True, k: int = 4, times: dict[str, float] | None = None) -> str:
    items = sorted(r.items(), key=lambda kv: kv[1], reverse=high)[:k]
    return ", ".join(
        f"{layer} {value:.2f}×" + (f" ({times[layer] * 1e3:.2g} ms)" if times and layer in times else "") for layer, value in items
    )


def median_at_most(quantity: str, baseline: str, bound: float, impl: str = "tnderiv") -> Callable[[Sequence[Record]], Outcome]:
    def evaluate(records: Sequence[Record]) -> Outcome:
        r = ratios(records, quantity, impl, baseline)
        if not r:
            return Outcome("no data", None)
        m = statistics.median(r.values())
        return Outcome(f"median {m:.2f}× over {len(r)} layers", m <= bound,
                       "slowest (tnderiv's time): " + _worst(r, times=_times(records, quantity, impl)))

    return evaluate


def every_layer_below(quantity: str, baseline: str, bound: float = 1.0, impl: str = "tnderiv") -> Callable[[Sequence[Record]], Outcome]:
    def evaluate(records: Sequence[Record]) -> Outcome:
        r = ratios(records, quantity, impl, baseline)
        if not r:
            return Outcome("no data", None)
        slower = {k: v for k, v in r.items() if v >= bound}
        text = f"faster on {len(r) - len(slower)}/{len(r)} layers (median {statistics.median(r.values()):.2f}×)"
        return Outcome(text, not slower, ("not faster: " + _worst(slower, times=_times(records, quantity, impl))) if slower else "")

    return evaluate


def kfac_reduce_speedup(records: Sequence[Record]) -> Outcome:
    r = ratios(records, "kfac_A_reduce", "tnderiv", "unfold")
    if not r:
        return Outcome("no data", None)
    speedups = {k: 1 / v for k, v in r.items()}
    m = statistics.median(speedups.values())
    slower = {k: v for k, v in speedups.items() if v < 1}
    text = f"median speed-up {m:.2f}×, slower on {len(slower)}/{len(r)} layers"
    times = _times(records, "kfac_A_reduce", "tnderiv")
    worst = "slower (speed-up, tnderiv's time): " + ", ".join(
        f"{k} {v:.2f}× ({times[k] * 1e3:.2g} ms)" for k, v in sorted(slower.items(), key=lambda kv: kv[1])
    ) if slower else ""
    return Outcome(text, m >= 2 and not slower, worst)


def best_speedup(quantity: str, baseline: str, bound: float) -> Callable[[Sequence[Record]], Outcome]:
    def evaluate(records: Sequence[Record]) -> Outcome:
        r = ratios(records, quantity, "tnderiv", baseline)
        if not r:
            return Outcome("no data", None)
        best = max(1 / v for v in r.values())
        m = statistics.median(1 / v for v in r.values())
        return Outcome(f"best speed-up {best:.2f}×, median {m:.2f}×", best >= bound and m > 1)

    return evaluate


def glued_stats(records: Sequence[Record]) -> Outcome:
    """Where ``strategy="auto"`` chose the glued network: materializing / auto ≥ 2 (median)."""
    values = {}
    for stat in ("sum_grad_squared", "batch_l2"):
        chosen = {r["layer"] for r in records if r["quantity"] == stat and r["impl"] == "tnderiv" and "→ glued" in r.get("note", "")}
        for layer, v in ratios(records, stat, "tnderiv-materialize", "tnderiv").items():
            if layer in chosen:
                values[f"{layer} {stat}"] = v
    if not values:
        return Outcome("the planner chose the glued network nowhere", None)
    m = statistics.median(values.values())
    return Outcome(f"median speed-up {m:.2f}× over {len(values)} (layer, statistic) pairs", m >= 2,
                   "smallest: " + _worst(values, high=False))


def warm_overhead(overhead: Sequence[Record]) -> Outcome:
    values = [o["overhead"] for o in overhead if "overhead" in o and o["category"] not in SUITE_EXCLUDED]
    if not values:
        return Outcome("no data", None)
    m = statistics.median(values)
    share = sum(v < 0.05 for v in values) / len(values)
    rows = [o for o in overhead if "overhead" in o and o["category"] not in SUITE_EXCLUDED]
    absolute = statistics.median(o["api_s"] - o["direct_s"] for o in rows)
    long = [o["overhead"] for o in rows if o["direct_s"] > 0.005]
    text = f"median {m:+.1%} (≈ {absolute * 1e3:.2f} ms per call); under 5% for {share:.0%} of {len(values)} calls"
    if long:
        text += f"; calls over 5 ms: median {statistics.median(long):+.1%}"
    return Outcome(text, m < 0.05)


def cold_plan(overhead: Sequence[Record]) -> Outcome:
    values = [o["cold_plan_s"] for o in overhead if "cold_plan_s" in o and o["category"] not in SUITE_EXCLUDED]
    if not values:
        return Outcome("no data", None)
    m, worst = statistics.median(values), max(values)
    share = sum(v < 0.02 for v in values) / len(values)
    return Outcome(f"median {m * 1e3:.1f} ms, max {worst * 1e3:.0f} ms; under 20 ms for {share:.0%}", m < 0.02)


TARGETS: tuple[Target, ...] = (
    Target("3.forward", 3, "forward no slower than 1.5× torch's convolution (median over layers)", "any",
           median_at_most("forward", "torch", 1.5),
           "torch calls one oneDNN/cuDNN convolution kernel; tnderiv runs an einsum schedule whose pattern steps move "
           "the input through strided views and GEMMs. Closing the gap needs fused gather-GEMM kernels (or dispatching "
           "the forward and input VJP of plain convolutions to torch's own kernel when the diagram is recognised)."),
    Target("3.vjp_x", 3, "input VJP no slower than 1.5× torch (median)", "any", median_at_most("vjp_x", "torch", 1.5),
           "as for the forward: the transposed pattern steps are gathers/scatter-adds that torch does inside one "
           "convolution-backward kernel."),
    Target("3.forward.einconv", 3, "forward faster than einconv on every layer", "any",
           every_layer_below("forward", "einconv"),
           "in the run at commit c35c88f the only miss was all-cnn-c/conv8, a 1×1 convolution on 3×3 positions "
           "taking under 1 ms, where tnderiv's bias term and call dispatch weigh as much as the GEMM itself. Fix: "
           "fold the bias into the GEMM's output (addmm) for dense-pattern forwards."),
    Target("3.vjp_x.einconv", 3, "input VJP faster than einconv on every layer", "any", every_layer_below("vjp_x", "einconv"),
           "in the run at commit c35c88f tnderiv lowered every convolution's input VJP to torch's conv_transpose; "
           "for 2c2d/conv1 (a single input channel, 'same' 5×5) that kernel took 5.7 ms where torch's own "
           "convolution_backward took 1.4 ms and einconv 3.1 ms; r3d_18/stem and convnext downsample2 were within "
           "10% (noise on this shared machine). Fix: lower input VJPs to aten.convolution_backward with "
           "output_mask (True, False, False) — the kernel autograd uses."),
    Target("3.vjp_weight", 3, "weight VJP at least as fast as unfold + einsum (median)", "any",
           median_at_most("vjp_weight", "unfold", 1.0),
           "unfold materializes the im2col matrix once and runs one GEMM; tnderiv's schedule contracts the pattern "
           "legs one spatial dimension at a time, each a separate kernel with its own intermediate."),
    Target("3.per_sample", 3, "per-sample gradients at least as fast as unfold + einsum (median)", "any",
           median_at_most("per_sample_grad", "unfold", 1.0),
           "as for the weight VJP: a batched GEMM on the unfolded input is hard to beat on CPU; an unfold-style "
           "lowering of pattern steps (gather once, then one batched GEMM) would close it."),
    Target("3.per_sample.vmap", 3, "per-sample gradients faster than torch.func.vmap(grad) (median)", "any",
           median_at_most("per_sample_grad", "vmap", 1.0)),
    Target("7.kfac_reduce", 7, "KFAC-reduce input factor ≥ 2× faster than unfold (median, CPU) and never slower", "cpu",
           kfac_reduce_speedup,
           "two causes. (1) On layers where both take well under a millisecond (1×1 convolutions, wav2vec2 conv0 "
           "with one input channel) tnderiv's fixed cost per call (two plans: the reduced half, then its Gram) "
           "exceeds the whole unfold computation. (2) Where a layer has few output positions and a long weight row "
           "(resnet18 layer4.1.conv2: d_in = 4608, 9 positions) the Gram matrix 2·N·d_in² dominates both "
           "implementations, so a 2× speed-up is unattainable there by construction; the target is meaningful where "
           "the unfolded input is large (positions ≫ d_in). (An intermediate commit, c35c88f, contracted Σ_o Π in "
           "'scatter' steps, 10–20× slower on depthwise layers; fixed in 562a596 by folding Σ_o Π into the small "
           "dense constant Π̄ before the half is planned.) Fix for (1): one fused plan for half and Gram."),
    Target("7.kfac_expand", 7, "KFAC-expand input factor at least as fast as unfold + matmul (median)", "any",
           median_at_most("kfac_A_expand", "unfold", 1.0),
           "expand's A is the Gram matrix of the unfolded input, and unfold (torch's im2col in C++) + one GEMM is the "
           "best schedule on CPU. tnderiv matches it on the large layers (0.9–1.1×) but loses on depthwise layers and "
           "on sub-millisecond layers. Its plan gathers one spatial dimension at a time (two passes, each writing a "
           "kernel-expanded copy of the input: e.g. 3.6 M then 5.4 M elements for mobilenet_v2 features.2.dw) where "
           "im2col makes one pass; on depthwise layers (d_in = 9 per group) the gathers are the whole cost, hence "
           "≈ 2×. Fix: fuse consecutive pattern gathers of one operand into a single gather (or call im2col when all "
           "its pattern legs are gathered)."),
    Target("7.kfac.einconv", 7, "KFAC-expand and -reduce input factors faster than einconv (median)", "any",
           lambda recs: _both(recs),
           "see KFAC-expand/reduce."),
    Target("7.stats", 7, "batch statistics without per-sample materialization ≥ 2× faster than materializing, "
           "where the planner chooses it (median)", "any", glued_stats,
           "the glued network's cost grows with the square of the number of output positions; where the planner picks "
           "it although materializing is faster, its FLOP model is off (it does not price the pattern gathers)."),
    Target("7.kfac_reduce.gpu", 7, "GPU: KFAC-reduce ≥ 4.5× faster than unfold on the best layer, and faster in median",
           "cuda", best_speedup("kfac_A_reduce", "unfold", 4.5)),
)

OVERHEAD_TARGETS = (
    ("3.warm", 3, "a warm call (plan cached) costs < 5% more than running the compiled expression directly", warm_overhead,
     "the overhead is a fixed cost per call, not a proportion, so the sub-millisecond layers of the CPU suite "
     "dominate the median, while calls over 5 ms are within the target. It is measured with samples of ≥ 10 ms "
     "interleaved on a machine shared with other jobs; a profile of a warm forward at commit c35c88f shows about "
     "25 µs of API work (call-cache key, module parameters, reshape) on a 250 µs call. Fix: skip re-reading "
     "module parameters and the key construction when the same tensors are passed again."),
    ("3.cold", 3, "a cold call plans in under 20 ms", cold_plan,
     "opt_einsum's exact dynamic programming and the constant-pattern construction run per new shape; caching "
     "pattern constants across plans and a greedy first plan would cut it."),
)


def _both(records: Sequence[Record]) -> Outcome:
    e = ratios(records, "kfac_A_expand", "tnderiv", "einconv")
    r = ratios(records, "kfac_A_reduce", "tnderiv", "einconv")
    if not e and not r:
        return Outcome("no data", None)
    me = statistics.median(e.values()) if e else float("nan")
    mr = statistics.median(r.values()) if r else float("nan")
    met = (not e or me < 1) and (not r or mr < 1)
    return Outcome(f"expand median {me:.2f}×, reduce median {mr:.2f}× of einconv's time", met)
