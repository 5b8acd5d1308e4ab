"""docs/benchmarks.md and its plots, generated from the JSON results of ``python -m benchmarks run``."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.targets import OVERHEAD_TARGETS, SUITE_EXCLUDED, TARGETS, Outcome

CATEGORY_ORDER = ("general", "dense", "downsampling", "depthwise", "mixed", "transposed", "linear")
STATUS_MARK = {"ok": "✓", "wrong": "✗ wrong", "raises": "raises", "unsupported": "unsupported", "missing": "missing",
               "skipped": "skipped", "timeout": "timeout"}


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds * 1e3:.3g}" if seconds < 10 else f"{seconds * 1e3:.0f}"


def _bytes(value: float | None) -> str:
    if value is None:
        return "–"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{int(value)} B"


def _impl_order(names: set[str], reference: str) -> list[str]:
    rank = {"torch": 0, "unfold": 1, "vmap": 2, "einconv": 3, "backpack": 4, "backpack-kfac": 4, "backpack-kflr": 5,
            "curvlinops": 6, "tnderiv": 9, "tnderiv-glued": 10, "tnderiv-materialize": 11}
    return sorted(names, key=lambda n: (n != reference, rank.get(n, 8), n))


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


class Report:
    def __init__(self, data: dict[str, Any], path: Path) -> None:
        self.data, self.path = data, path
        self.meta = data["meta"]
        self.device = "cuda" if str(self.meta["device"]).startswith("cuda") else "cpu"
        self.records = data["results"]
        self.timed = [r for r in self.records if r["category"] != "probe"]
        self.quantities = [q for q in self.meta["quantities"]]

    # ----- sections ------------------------------------------------------------------------------------
    def setup(self) -> list[str]:
        m, s = self.meta, self.meta["settings"]
        versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
        missing = ", ".join(k for k, v in m["versions"].items() if not v)
        batch = {c["describe"].split(" on [")[1].split(",")[0] for c in m["cases"] if c.get("describe") and "probe" not in c["id"]}
        lines = [
            f"- **{self.device.upper()}** `{self.path.name}`: {m['device_name']}; {s['threads']} torch thread(s); "
            f"TF32 {'on' if s['tf32'] else 'off'}; float32; batch {', '.join(sorted(batch))}; "
            f"{s['repeat']} samples (median) after {s['warmup']} warm-up calls, implementations interleaved.",
            f"- Run {m['date']} at commit `{(m.get('git_commit') or '?')[:10]}`: `{m['command']}`.",
            f"- Measured matmul peak: **{m['matmul_peak']['gflops']:.1f} GFLOP/s** (float32 `torch.mm`, n={m['matmul_peak']['size']}).",
            f"- Versions: {versions}." + (f" Not installed: {missing}." if missing else ""),
            f"- Correctness: {m['check']}; tolerance per quantity "
            f"{', '.join(sorted({str(q['tolerance']) for q in self.quantities}))}.",
            f"- Peak memory: {m['memory_method']}.",
        ]
        lines += [f"- Note: {n}" for n in m.get("notes", [])]
        return lines

    def targets(self) -> list[str]:
        rows = ["| Issue | Target | Measured | Met |", "|---|---|---|---|"]
        misses = []
        for t in TARGETS:
            if t.device not in ("any", self.device):
                continue
            outcome = t.evaluate(self.timed)
            rows.append(self._target_row(t.issue, t.text, outcome))
            if outcome.met is False:
                misses.append((t.text, outcome, t.why))
        for _, issue, text, evaluate, why in OVERHEAD_TARGETS:
            outcome = evaluate(self.data.get("overhead", []))
            rows.append(self._target_row(issue, text, outcome))
            if outcome.met is False:
                misses.append((text, outcome, why))
        if self.device == "cpu":
            rows.append("| 7 | GPU: KFAC-reduce ≥ 4.5× faster than unfold on the best layer, faster in median | "
                        "pending: no GPU result in this file | – |")
        out = rows
        if misses:
            out += ["", "Where a target is missed:", ""]
            for text, outcome, why in misses:
                out.append(f"- **{text}** — {outcome.measured}. {outcome.worst + '. ' if outcome.worst else ''}"
                           + (f"Why, and what would fix it: {why}" if why else ""))
        return out

    @staticmethod
    def _target_row(issue: int, text: str, outcome: Outcome) -> str:
        met = {True: "**yes**", False: "**no**", None: "n/a"}[outcome.met]
        return f"| {issue} | {text} | {outcome.measured} | {met} |"

    def correctness(self) -> list[str]:
        probes = [r for r in self.records if r["category"] == "probe"]
        out: list[str] = []
        if probes:
            impls = _impl_order({r["impl"] for r in probes}, "torch")
            layers = list(dict.fromkeys(r["layer"] for r in probes))
            notes = {c["id"]: c["note"] for c in self.meta["cases"]}
            out += ["Small layers with the settings that break peers, every quantity checked against the float64 oracle. "
                    "A cell lists the quantities that are wrong (✗) or raise; ✓: all correct; n/a: not implemented by it.", ""]
            out += ["| Probe | " + " | ".join(impls) + " |", "|---|" + "---|" * len(impls)]
            details = []
            for layer in layers:
                cells = []
                for impl in impls:
                    mine = [r for r in probes if r["layer"] == layer and r["impl"] == impl]
                    if not mine:
                        cells.append("n/a")
                        continue
                    bad = [r for r in mine if r["status"] not in ("ok", "skipped", "missing")]
                    missing = all(r["status"] == "missing" for r in mine)
                    if missing:
                        cells.append("missing")
                    elif not bad:
                        cells.append("✓")
                    else:
                        by_status: dict[str, list[str]] = defaultdict(list)
                        for r in bad:
                            by_status[STATUS_MARK.get(r["status"], r["status"])].append(r["quantity"])
                        cells.append("<br>".join(f"{status}: {', '.join(qs)}" for status, qs in by_status.items()))
                        details += [f"- `{layer}` {impl} {r['quantity']}: {r['status']} — {r['note']}" for r in bad]
                out.append(f"| {layer.split('/', 1)[1]} ({notes.get(layer, '')}) | " + " | ".join(cells) + " |")
            if details:
                out += ["", "<details><summary>What each failure says</summary>", "", *details, "", "</details>"]
        suite_bad = [r for r in self.timed if r["status"] in ("wrong", "raises", "timeout")]
        out += ["", f"On the benchmarked layers: {len(suite_bad)} wrong or raising result(s)"
                + (":" if suite_bad else ".")]
        out += [f"- `{r['layer']}` {r['impl']} {r['quantity']}: {r['status']} — {r['note']}" for r in suite_bad[:60]]
        unsupported = defaultdict(list)
        for r in self.timed:
            if r["status"] in ("unsupported", "missing", "skipped"):
                reason = r["note"].split(" ([")[0]  # size-guard notes differ only in their sizes
                unsupported[(r["impl"], r["quantity"], r["status"], reason)].append(r["layer"])
        if unsupported:
            out += ["", "Not run (refused, not installed, or skipped by a size guard):", ""]
            for (impl, q, status, note), layers in sorted(unsupported.items()):
                out.append(f"- {impl} {q}: {status} on {len(layers)} layer(s) — {note}")
        return out

    def summary(self) -> list[str]:
        out = ["Median over the suite's layers of each implementation's time divided by the reference's time "
               "(< 1: faster than the reference). Only correct results count; the number of layers is in parentheses.", ""]
        categories = [c for c in CATEGORY_ORDER if any(r["category"] == c for r in self.timed)]
        for q in self.quantities:
            recs = [r for r in self.timed if r["quantity"] == q["name"] and r.get("ratio_vs_reference") and r["status"] == "ok"]
            if not recs:
                continue
            impls = _impl_order({r["impl"] for r in recs}, q["reference"])
            out += [f"**{q['title']}** (`{q['name']}`, reference: {q['reference']})", ""]
            out += ["| Implementation | all suite layers | " + " | ".join(categories) + " | median GFLOP/s | median peak memory |",
                    "|---|---|" + "---|" * len(categories) + "---|---|"]
            for impl in impls:
                mine = [r for r in recs if r["impl"] == impl]
                suite = [r["ratio_vs_reference"] for r in mine if r["category"] not in SUITE_EXCLUDED]
                cells = [self._cell(suite)]
                for c in categories:
                    cells.append(self._cell([r["ratio_vs_reference"] for r in mine if r["category"] == c]))
                gflops = _median([r["gflops"] for r in mine if r.get("gflops")])
                mem = _median([r["peak_bytes"] for r in mine if r.get("peak_bytes") is not None])
                out.append(f"| {impl} | " + " | ".join(cells) + f" | {gflops:.1f} | {_bytes(mem)} |")
            out.append("")
        return out

    @staticmethod
    def _cell(values: Sequence[float]) -> str:
        return f"{statistics.median(values):.2f}× ({len(values)})" if values else "–"

    def per_layer(self) -> list[str]:
        peak = self.meta["matmul_peak"]["gflops"]
        out: list[str] = []
        for q in self.quantities:
            recs = [r for r in self.timed if r["quantity"] == q["name"]]
            if not recs:
                continue
            impls = _impl_order({r["impl"] for r in recs}, q["reference"])
            out += [f"### {q['title']} (`{q['name']}`)", "",
                    f"Milliseconds per call (median); ratio = tnderiv / {q['reference']}; tnderiv's GFLOP/s as % of the "
                    f"matmul peak; ✗ wrong result, – not run.", ""]
            out += ["| Layer | Category | " + " | ".join(impls) + " | ratio | tnderiv GFLOP/s | tnderiv peak mem |",
                    "|---|---|" + "---|" * len(impls) + "---|---|---|"]
            layers = list(dict.fromkeys(r["layer"] for r in recs))
            for layer in layers:
                by_impl = {r["impl"]: r for r in recs if r["layer"] == layer}
                cells = []
                for impl in impls:
                    r = by_impl.get(impl)
                    if r is None or "median_s" not in r:
                        cells.append("–" if r is None or r["status"] in ("ok", "unchecked") else STATUS_MARK.get(r["status"], r["status"]))
                        continue
                    mark = "" if r["status"] == "ok" else " ✗" if r["status"] == "wrong" else f" ({r['status']})"
                    cells.append(_ms(r["median_s"]) + mark)
                t = by_impl.get("tnderiv", {})
                ratio = f"{t['ratio_vs_reference']:.2f}×" if t.get("ratio_vs_reference") and t.get("status") == "ok" else "–"
                gf = f"{t['gflops']:.1f} ({t['gflops'] / peak:.0%})" if t.get("gflops") else "–"
                category = by_impl[next(iter(by_impl))]["category"]
                out.append(f"| {layer} | {category} | " + " | ".join(cells) + f" | {ratio} | {gf} | {_bytes(t.get('peak_bytes'))} |")
            out.append("")
        return out

    def overhead(self) -> list[str]:
        rows = self.data.get("overhead", [])
        if not rows:
            return ["Not measured in this run."]
        out = ["Warm call through the public API vs the plan's compiled terms called directly, and the first call after "
               "clearing every plan cache with tnderiv.clear_caches() (cold plan = cold call − warm call). These numbers were measured when clear_caches() kept derivations; it now clears them too (derivation is then part of a cold call).", "",
               "| Quantity | median warm overhead | max warm overhead | median cold plan | max cold plan |", "|---|---|---|---|---|"]
        by_q = defaultdict(list)
        for o in rows:
            if "overhead" in o:
                by_q[o["quantity"]].append(o)
        for q, items in by_q.items():
            ov = [o["overhead"] for o in items]
            cold = [o["cold_plan_s"] for o in items]
            out.append(f"| {q} | {statistics.median(ov):+.1%} | {max(ov):+.1%} | {statistics.median(cold) * 1e3:.1f} ms | "
                       f"{max(cold) * 1e3:.0f} ms |")
        errors = [o for o in rows if "error" in o]
        if errors:
            out += ["", *[f"- `{o['layer']}` {o['quantity']}: {o['error']}" for o in errors[:20]]]
        return out

    # ----- plots -------------------------------------------------------------------------------------------
    def plots(self, folder: Path) -> list[str]:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return ["(plots need matplotlib: `pip install -e '.[bench]'`)"]
        links = []
        summary = self._summary_plot(plt, folder)
        if summary:
            links.append(f"![median ratios by category]({summary})")
        for q in self.quantities:
            name = self._quantity_plot(plt, folder, q)
            if name:
                links.append(f"![{q['title']}]({name})")
        return links

    def _summary_plot(self, plt: Any, folder: Path) -> str | None:
        categories = [c for c in CATEGORY_ORDER if any(r["category"] == c for r in self.timed)]
        quantities = [q for q in self.quantities if any(r["quantity"] == q["name"] and r["impl"] == "tnderiv" and
                                                        r.get("ratio_vs_reference") for r in self.timed)]
        if not quantities or not categories:
            return None
        fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(quantities)), 4.5))
        width = 0.8 / len(categories)
        for j, c in enumerate(categories):
            values = []
            for q in quantities:
                v = [r["ratio_vs_reference"] for r in self.timed if r["quantity"] == q["name"] and r["impl"] == "tnderiv"
                     and r["category"] == c and r.get("ratio_vs_reference") and r["status"] == "ok"]
                values.append(statistics.median(v) if v else math.nan)
            ax.bar([i + j * width for i in range(len(quantities))], values, width, label=c)
        ax.axhline(1, color="black", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(quantities))])
        ax.set_xticklabels([f"{q['name']}\n(vs {q['reference']})" for q in quantities], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("tnderiv time / reference time (median)")
        ax.set_title(f"tnderiv vs reference by layer category ({self.device.upper()})")
        ax.legend(fontsize=8, ncol=2)
        fig.tight_layout()
        name = f"{self.device}_summary.png"
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        return f"benchmarks/{name}"

    def _quantity_plot(self, plt: Any, folder: Path, q: dict[str, Any]) -> str | None:
        recs = [r for r in self.timed if r["quantity"] == q["name"] and r.get("ratio_vs_reference")]
        if not recs:
            return None
        impls = [i for i in _impl_order({r["impl"] for r in recs}, q["reference"]) if i != q["reference"]]
        cats = {r["layer"]: r["category"] for r in recs}
        rank = {c: i for i, c in enumerate(CATEGORY_ORDER)}
        layers = sorted(dict.fromkeys(r["layer"] for r in recs), key=lambda layer: rank.get(cats[layer], 99))
        fig, ax = plt.subplots(figsize=(max(8, 0.32 * len(layers) * max(1, len(impls)) / 2), 4.8))
        width = 0.8 / max(1, len(impls))
        for j, impl in enumerate(impls):
            xs, ys, wrong = [], [], []
            for i, layer in enumerate(layers):
                r = next((r for r in recs if r["layer"] == layer and r["impl"] == impl), None)
                if r is None:
                    continue
                xs.append(i + j * width)
                ys.append(r["ratio_vs_reference"])
                wrong.append(r["status"] != "ok")
            bars = ax.bar(xs, ys, width, label=impl)
            for bar, bad in zip(bars, wrong):
                if bad:
                    bar.set_hatch("xx")
                    bar.set_alpha(0.5)
        ax.axhline(1, color="black", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(layers))])
        ax.set_xticklabels([f"{layer} [{cats[layer]}]" for layer in layers], rotation=70, ha="right", fontsize=6)
        ax.set_ylabel(f"time / {q['reference']} time")
        ax.set_title(f"{q['title']} ({self.device.upper()}); hatched: wrong result")
        ax.legend(fontsize=7, ncol=3)
        fig.tight_layout()
        name = f"{self.device}_{q['name']}.png"
        fig.savefig(folder / name, dpi=100)
        plt.close(fig)
        return f"benchmarks/{name}"


HEADER = """# Benchmarks

<!-- Generated by `python -m benchmarks report` from docs/benchmarks/*.json. Edit benchmarks/report.py, not this file. -->

tnderiv against its peers, side by side in one process on the same inputs: torch's own convolution and
autograd, `torch.func.vmap(grad)`, unfold + einsum (the opacus approach, written in `benchmarks/unfold.py`),
[einconv](https://github.com/f-dangel/einconv), [BackPACK](https://backpack.pt),
[curvlinops](https://github.com/f-dangel/curvlinops). The layers are the real-layer suite
(`data/conv_layers.json`; CPU: batch 8 and spatial sizes halved; GPU: batch 32 at full size) and four
BERT-base dense layers with a sequence axis (CPU: `[8, 128, ·]`; GPU: `[32, 512, ·]`). The engine's own
measurements (issue 14: one execution path, fused gathers, cold start, glued or materialized) are on
[their own page](benchmarks_engine.md).

## Reproduce

One command re-runs everything on this machine's CPU and regenerates this page and its plots
(peers are the optional `bench` extra; missing peers are skipped with a note):

    .venv/bin/pip install -e ".[bench]" -c benchmarks/constraints.txt
    .venv/bin/python -m benchmarks run --device cpu

(about 15 minutes with one thread on the shared 2-core machine these numbers come from; progress is
printed per layer and quantity, and an interrupted run leaves `docs/benchmarks/cpu.partial.json`).

On a GPU machine, `python -m benchmarks run --device cuda` adds `docs/benchmarks/cuda.json` and the page
shows both. `python -m benchmarks report` rebuilds the page from the JSON files alone. Subsets:
`--layers resnet18 depthwise`, `--quantities forward kfac_A_reduce`, `--impls tnderiv einconv`,
`--repeat 3`; `--help` lists the rest.

## Method

- Every implementation is first checked against an independent float64 oracle (torch's convolution
  and autograd; KFAC's input vectors from torch's convolution with an identity kernel) — a peer that
  disagrees is marked wrong (✗) and does not count towards any median or target. Factors are
  compared after converting each library's documented scaling to plain sums
  (`A = Σ a aᵀ`, `G = Σ g gᵀ`; reduce: sums over positions first).
- Timings are float32, after warm-up (the first call, then a call under the memory profiler), with the
  implementations interleaved round-robin; each sample repeats a call until it lasts ≥ 5 ms; the
  median of 5 samples is reported (3 when a call's samples would exceed 1 s; a call slower than 4 s is
  timed once; a call past 30 s is abandoned and reported as a timeout). Thread count and TF32 flags
  are pinned. Correctness is checked at batch 2 (same spatial sizes) to keep the float64 oracles cheap. tnderiv's calls are warm (plans cached), as in a training loop; its cold
  planning cost is reported separately.
- BackPACK and curvlinops work on a model and a backward pass, so their times include a forward and
  a backward of the layer (that is how they are used); einconv builds its expression per call (it has
  no cache). The diagonal GGN uses `MSELoss(reduction="sum")` on a 10-output linear head after the
  layer; tnderiv and unfold get the backpropagated square root `[10, N, *out]`.
- GFLOP/s use the FLOPs of the classic unfold + GEMM formulation of each quantity (2 per multiply-add),
  compared with the measured float32 matmul peak of the same device and thread count.
"""


def write_report(results: Sequence[Path], page: Path) -> None:
    """Regenerate ``page`` (and plots next to the results) from JSON ``results``."""
    reports = [Report(json.loads(p.read_text()), p) for p in results if p.exists()]
    lines = [HEADER]
    if not any(r.device == "cuda" for r in reports):
        lines.append("> **GPU numbers are pending**: no GPU was available when these results were produced. "
                     "Run `python -m benchmarks run --device cuda` on a GPU machine to add them.\n")
    for report in reports:
        folder = report.path.parent
        label = report.device.upper()
        lines += [f"## {label} results", "", *report.setup(), "",
                  f"### Targets from issues 3 and 7 ({label})", "", *report.targets(), "",
                  f"### Correctness ({label})", "", *report.correctness(), "",
                  f"### Summary: time relative to the reference ({label})", "", *report.summary(),
                  f"### Plots ({label})", "", *report.plots(folder), "",
                  f"### tnderiv call overhead ({label})", "", *report.overhead(), "",
                  f"## Per-layer results ({label})", "", *report.per_layer()]
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("\n".join(lines).rstrip() + "\n")
