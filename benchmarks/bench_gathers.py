"""Fused gathers (``tnderiv.plan.gathers``): before vs after, side by side with the peers, in one process.

For the depthwise and grouped real layers of the suite (``data/conv_layers.json``, CPU sizes: batch 8,
halved spatial sizes), and with ``--extra`` the other layers whose plans the change touches, this times
interleaved, one thread:

- ``kfac_A_expand``: unfold + matmul (``benchmarks.unfold.kfac_input``) vs ``tnderiv.kfac_factors_input``;
- ``forward``: torch's module vs ``tnderiv.forward``;
- ``per_sample_grad``: ``torch.func.vmap(grad)`` vs ``tnderiv.per_sample_grad``;

each with tnderiv's compiled plans built twice, with ``FUSED_GATHERS`` off (``before``: one gather step
per pattern) and on (``after``), both held and run directly (no call overhead), beside the public call
(``tnderiv``: the plans that now run, with its call overhead). Every variant is first checked against the
float64 oracle of ``benchmarks.oracles`` at batch 2.

    python -m benchmarks.bench_gathers [--out docs/benchmarks/gathers.json] [--repeat 7] [--extra] [--only PATTERN]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import benchmarks.impls.tnderiv_impls  # noqa: F401  (registers the implementations)
import benchmarks.impls.torch_impls  # noqa: F401
import tnderiv
from benchmarks import oracles
from benchmarks.cases import Case, suite_cases
from benchmarks.impls import impls_for
from benchmarks.impls.tnderiv_impls import weight_only_spec
from benchmarks.problem import Problem
from benchmarks.timing import pin_settings, time_interleaved

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "gathers.json"
gathers = importlib.import_module("tnderiv.plan.gathers")
PEERS = {"kfac_A_expand": "unfold", "forward": "torch", "per_sample_grad": "vmap"}
# layers (besides depthwise and grouped) whose plans fused gathers change: KFAC-expand halves of 2D/3D
# layers, one-pattern (1D) halves, and per-sample gradients planned as gather + batched GEMM
EXTRA = ("2c2d/conv2", "3c3d/conv2", "resnet18/layer2.0.conv1", "r3d_18/stem", "wav2vec2/feature_extractor.conv0", "dcgan_generator/up2")


def selected(case: Case, extra: bool) -> bool:
    return case.kind == "conv" and (case.kwargs.get("groups", 1) > 1 or (extra and case.id in EXTRA))


def _direct(p: Problem, quantity: str) -> Callable[[], Any]:
    """The quantity's plans built under the current ``FUSED_GATHERS``, held and run without checks."""
    from tnderiv.api import _network
    from tnderiv.calculus.kfac import Approx, input_factor
    from tnderiv.plan.gram import get_gram_plan

    if quantity == "kfac_A_expand":
        network = _network(weight_only_spec(p), {"x": tuple(p.x.shape)})
        _, factor = input_factor(network, Approx.EXPAND)
        # the GramPlan kfac_factors_input runs (strategy and lags chosen by the cost model)
        gram = get_gram_plan(factor, {"x": tuple(p.x.shape)}, p.x, "auto", network.check_sizes, strategy="auto", lags=None)
        given, scale = {"x": p.x}, p.x.shape[0] * _positions(p)  # tnderiv averages; the oracle sums
        return lambda: gram.run(given)[0] * scale
    if quantity == "forward":
        operands = {"x": p.x, **{name: t.detach() for name, t in p.module.named_parameters()}}
        plan = tnderiv.plan(p.module, {k: tuple(v.shape) for k, v in operands.items()}, quantity="forward", dtype=p.x.dtype)
        return lambda: plan.execute(operands)
    operands = {"x": p.x, "grad_out": p.grad_out}
    plan = tnderiv.plan(weight_only_spec(p), {k: tuple(v.shape) for k, v in operands.items()}, quantity="per_sample_grad_weight", dtype=p.x.dtype)
    return lambda: plan.execute(operands)


def _positions(p: Problem) -> int:
    import math

    return math.prod(p.out_shape[2:])


def _variants(p: Problem, quantity: str) -> dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]]:
    """Name → (timed call, conversion of its result to the oracle's layout and scaling)."""
    calls: dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]] = {}
    for impl in impls_for(quantity):
        if impl.name in (PEERS[quantity], "tnderiv"):
            prepared = impl.setup(p)
            calls[impl.name] = (prepared.call, prepared.extract)
    for name, flag in (("before", False), ("after", True)):
        gathers.FUSED_GATHERS = flag
        tnderiv.clear_caches()
        calls[name] = (_direct(p, quantity), lambda result: result)
    gathers.FUSED_GATHERS = True
    return calls


def _error(result: Any, want: torch.Tensor) -> float:
    got = (result.reshape(want.shape) if hasattr(result, "reshape") else result).detach()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-300))


def check(case: Case, quantity: str) -> dict[str, float]:
    """Relative max error of every variant against the float64 oracle, at batch 2."""
    small = next(c for c in suite_cases("cpu", batch=2) if c.id == case.id)
    p = Problem(small, torch.float64)
    want = oracles.ORACLES[quantity](p)
    return {name: _error(extract(call()), want) for name, (call, extract) in _variants(p, quantity).items()}


def run_case(case: Case, quantity: str, repeat: int) -> dict[str, Any]:
    errors = check(case, quantity)
    p = Problem(case)
    calls = {name: call for name, (call, _) in _variants(p, quantity).items()}
    timings = time_interleaved(calls, repeat=repeat, warmup=2, device="cpu", budget_s=2.0)
    median = {name: t.median for name, t in timings.items()}
    peer = median[PEERS[quantity]]
    return {
        "id": case.id,
        "category": case.category,
        "quantity": quantity,
        "x_shape": list(case.x_shape),
        "groups": case.kwargs.get("groups", 1),
        "median_s": median,
        "ratio": {name: value / peer for name, value in median.items() if name != PEERS[quantity]},
        "after_vs_before": median["after"] / median["before"],
        "max_rel_error_float64": errors,
        "timings": {name: t.to_dict() for name, t in timings.items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--extra", action="store_true", help="also the other layers whose plans fused gathers change")
    parser.add_argument("--only", default=None, help="substring of the case ids to run")
    parser.add_argument("--quantities", nargs="*", default=list(PEERS))
    args = parser.parse_args(argv)
    settings = pin_settings("cpu", 1, False)
    load_start = os.getloadavg()
    cases = [c for c in suite_cases("cpu") if selected(c, args.extra) and (args.only is None or args.only in c.id)]
    rows = []
    for case in cases:
        for quantity in args.quantities:
            row = run_case(case, quantity, args.repeat)
            rows.append(row)
            ms = {k: f"{v * 1e3:.3f}" for k, v in row["median_s"].items()}
            print(f"{case.id:38s} {quantity:16s} {ms}  tnderiv/peer {row['ratio']['tnderiv']:.2f}  after/before {row['after_vs_before']:.2f}", flush=True)
    summary = {
        q: {
            "median_ratio_before": statistics.median(r["ratio"]["before"] for r in rows if r["quantity"] == q),
            "median_ratio_after": statistics.median(r["ratio"]["after"] for r in rows if r["quantity"] == q),
            "median_ratio_tnderiv": statistics.median(r["ratio"]["tnderiv"] for r in rows if r["quantity"] == q),
            "worst_ratio_tnderiv": max(r["ratio"]["tnderiv"] for r in rows if r["quantity"] == q),
        }
        for q in args.quantities
        if any(r["quantity"] == q for r in rows)
    }
    meta = {
        "settings": settings,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "note": "shared 2-core machine; medians of interleaved samples",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    print("load average start/end:", load_start, os.getloadavg())


if __name__ == "__main__":
    main()
