"""KFAC-expand input factor ``A`` by lag correlations vs unfold + matmul vs tnderiv's previous (gather + GEMM) path.

For every real conv layer of the suite (``data/conv_layers.json``, CPU sizes: batch 8, halved spatial
sizes) where the lag form is exact (stride 1, zeros padding, not transposed), this times side by side,
interleaved, one thread:

- ``unfold``: ``benchmarks.unfold.kfac_input`` (im2col, then one batched GEMM; a sum, not scaled by ``1/(N·O)``);
- ``previous``: ``tnderiv.kfac_factors_input`` with the lag path off (``LAG_STRATEGY=False``);
- ``lags``: ``tnderiv.kfac_factors_input`` with the lag path forced (``LAG_STRATEGY=True``);
- ``auto``: the cost model's choice per layer (``LAG_STRATEGY=None``),

checks all of them against ``unfold`` in float64 first, and records the FLOPs of the lag program
(lag GEMMs + border corrections) against the unfold formulation's ``2·G·N·O·d²``.

    python -m benchmarks.bench_kfac_lags [--out docs/benchmarks/kfac_lags.json] [--repeat 7] [--only PATTERN]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path
from typing import Any

import torch

import tnderiv
import tnderiv.api_kfac as api_kfac
from benchmarks.cases import Case, suite_cases
from benchmarks.timing import pin_settings, time_interleaved
from benchmarks.unfold import kfac_input, unfold_input
from tnderiv.api import _network
from tnderiv.calculus.kfac import Approx, input_factor
from tnderiv.plan.keys import PlanOptions
from tnderiv.plan.lags import lag_program

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "kfac_lags.json"


def eligible(case: Case) -> bool:
    """Stride 1, zeros padding, a plain convolution: where the lag form is exact."""
    kw = case.kwargs
    return case.kind == "conv" and not case.transposed and all(s == 1 for s in kw["stride"]) and kw.get("padding_mode", "zeros") == "zeros"


def _with(strategy: bool | None, module: torch.nn.Module, x: torch.Tensor) -> Any:
    api_kfac.LAG_STRATEGY = strategy
    try:
        return tnderiv.kfac_factors_input(module, x)
    finally:
        api_kfac.LAG_STRATEGY = None


def _program(module: torch.nn.Module, x: torch.Tensor) -> Any:
    """The lag program for this layer (forced), for its FLOPs and the cost model's scores."""
    network = _network(module, {"x": tuple(x.shape)})
    _, factor = input_factor(network, Approx.EXPAND)
    side = api_kfac._input_side(network, {"x": x}, Approx.EXPAND, api_kfac.BiasMode.SEPARATE, PlanOptions(), False)
    return lag_program(factor.glued, side.plan.sizes, 1.0, force=True)


def full_size_flops(case_id: str) -> dict[str, Any] | None:
    """FLOPs of both formulations at the layer's full input size (not timed: the suite halves sizes on CPU)."""
    full = {c.id: c for c in suite_cases("cuda", batch=1)}.get(case_id)
    if full is None:
        return None
    program = _program(full.module(), torch.zeros(full.x_shape))
    if program is None:
        return None
    cost = program.cost
    return {"x_shape": list(full.x_shape), "flops_unfold": cost.unfold_flops, "flops_lags": cost.lag_flops, "flops_saved": 1 - cost.lag_flops / cost.unfold_flops, "chosen": cost.chosen}


def run_case(case: Case, repeat: int) -> dict[str, Any] | None:
    module = case.module(torch.float64)
    x = torch.randn(case.x_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    program = _program(module, x)
    if program is None:
        return None
    a = unfold_input(module, x)  # [N, G, d, L]
    reference = kfac_input(module, x, "expand") / (a.shape[0] * a.shape[-1])  # kfac_input sums; A averages
    errors = {name: float((_with(flag, module, x) - reference).abs().max() / reference.abs().max()) for name, flag in (("previous", False), ("lags", True))}
    module32, x32 = module.float(), x.float()
    calls = {
        "unfold": lambda: kfac_input(module32, x32, "expand"),
        "previous": lambda: _with(False, module32, x32),
        "lags": lambda: _with(True, module32, x32),
        "auto": lambda: _with(None, module32, x32),
    }
    timings = time_interleaved(calls, repeat=repeat, warmup=2, device="cpu", budget_s=2.0)
    cost = program.cost
    row = {
        "id": case.id,
        "category": case.category,
        "x_shape": list(case.x_shape),
        "kernel": list(program.kernel),
        "dilation": list(program.dilation),
        "groups": program.groups,
        "lags": len(program.shifts),
        "frame_slabs": len(program.slabs),
        "chosen": cost.chosen,
        "flops_unfold": cost.unfold_flops,
        "flops_lags": cost.lag_flops,
        "flops_saved": 1 - cost.lag_flops / cost.unfold_flops,
        "full_size": full_size_flops(case.id),
        "score_unfold": cost.unfold_time,
        "score_lags": cost.lag_time,
        "max_rel_error_float64": errors,
        "median_s": {name: t.median for name, t in timings.items()},
        "timings": {name: t.to_dict() for name, t in timings.items()},
    }
    row["ratio_lags_vs_unfold"] = row["median_s"]["lags"] / row["median_s"]["unfold"]
    row["ratio_lags_vs_previous"] = row["median_s"]["lags"] / row["median_s"]["previous"]
    row["ratio_auto_vs_unfold"] = row["median_s"]["auto"] / row["median_s"]["unfold"]
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--only", default=None, help="substring of the case ids to run")
    args = parser.parse_args(argv)
    settings = pin_settings("cpu", 1, False)
    cases = [c for c in suite_cases("cpu") if eligible(c) and (args.only is None or args.only in c.id)]
    skipped = [c.id for c in suite_cases("cpu") if not eligible(c)]
    rows = []
    for case in cases:
        row = run_case(case, args.repeat)
        if row is None:
            skipped.append(case.id)
            continue
        rows.append(row)
        print(
            f"{case.id:40s} chosen={row['chosen']!s:5s} flops saved {row['flops_saved']:6.1%}  "
            f"unfold {row['median_s']['unfold'] * 1e3:8.3f} ms  previous {row['median_s']['previous'] * 1e3:8.3f} ms  "
            f"lags {row['median_s']['lags'] * 1e3:8.3f} ms  auto {row['median_s']['auto'] * 1e3:8.3f} ms",
            flush=True,
        )
    summary = {
        "median_ratio_lags_vs_unfold": statistics.median(r["ratio_lags_vs_unfold"] for r in rows) if rows else None,
        "median_ratio_lags_vs_previous": statistics.median(r["ratio_lags_vs_previous"] for r in rows) if rows else None,
        "median_ratio_auto_vs_unfold": statistics.median(r["ratio_auto_vs_unfold"] for r in rows) if rows else None,
        "median_flops_saved": statistics.median(r["flops_saved"] for r in rows) if rows else None,
        "median_flops_saved_full_size": statistics.median(r["full_size"]["flops_saved"] for r in rows if r["full_size"]) if rows else None,
        "chosen": [r["id"] for r in rows if r["chosen"]],
    }
    meta = {"settings": settings, "torch": torch.__version__, "machine": platform.machine(), "processor": platform.processor(), "note": "shared, noisy 2-core machine"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "summary": summary, "skipped": skipped, "rows": rows}, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
