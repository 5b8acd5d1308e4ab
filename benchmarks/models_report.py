"""The whole-model benchmark page (``docs/benchmarks_models.md``) and plot, from ``docs/benchmarks/models.json``.

    .venv/bin/python -m benchmarks.models_report     # rebuild the page and the plot from the JSON alone
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.models_impls import TITLES
from benchmarks.models_targets import CAUSES, FIXES, FLOOR, TARGETS, evaluate

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "benchmarks" / "models.json"
PAGE = ROOT / "docs" / "benchmarks_models.md"
PLOT = ROOT / "docs" / "benchmarks" / "models.png"
LIBRARIES = ("tnderiv", "backpack", "curvlinops", "torch.func")
BOUNDS = {"per_sample_grad": 2.0, "sum_grad_squared": 1.5, "batch_l2": 1.5, "variance": 1.5, "first_order": 1.5,
          "kfac_mc": 1.6, "ggn_diag_mc": 1.5}
TASK_ORDER = ("per_sample_grad", "sum_grad_squared", "batch_l2", "variance", "first_order", "kfac_mc", "kfac", "ggn_diag", "ggn_diag_mc")


TRANSFORMER = (
    " The transformer's attention is written by hand from `nn.Linear` and `torch.softmax` (`benchmarks/models_zoo.py`), "
    "so every parameter is on tnderiv's derived path (Linear with a sequence leg, LayerNorm); `nn.TransformerEncoderLayer` "
    "would put its packed `in_proj` on the `torch.func` fallback and is not what is timed here."
)


NETWORK_NOTES = {
    "resnet18": "BackPACK needs its torch.fx converter (`use_converter=True`) for the residual graph's second-order "
    "extensions; KFAC/KFLR then raise on `AdaptiveAvgPool2d`, and DiagGGNExact raises in float64 and is wrong in "
    "float32 (relative errors 0.5–1.1 per parameter against the oracle), so it is not timed. Its DiagGGNMC runs "
    "through the same backpropagation and is timed, but a Monte-Carlo result is checked by shape only: treat it "
    "as unverified. curvlinops covers the convolutions and the linear head, not the batch norms.",
    "transformer": "BackPACK's first-order extensions run on the `nn.Linear` layers (the LayerNorms are not covered: "
    "8 of 34 parameters); its converter cannot trace the model, so its second-order extensions are not available. "
    "curvlinops covers the `nn.Linear` layers.",
}


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "–"
    if "ratio" in row:
        mb = f", {row['peak_bytes'] / 2**20:.0f} MB" if (row.get("peak_bytes") or 0) >= 2**20 else ""
        samples = len(row.get("samples_s", []))
        return f"**{row['ratio']:.2f}×** ({row['median_s'] * 1e3:.0f} ms{mb}{'' if samples > 1 else ', 1 sample'})"
    status = row.get("status", "?")
    return {"unsupported": "refuses", "raises": "raises", "wrong": "✗ wrong"}.get(status, status)


def table(data: dict[str, Any], model: str) -> list[str]:
    rows = [r for r in data["rows"] if r["model"] == model]
    grad = next((r for r in rows if r["task"] == "grad" and "median_s" in r), None)
    lines = []
    if grad:
        mb = f", peak {grad['peak_bytes'] / 2**20:.0f} MB" if (grad.get("peak_bytes") or 0) >= 2**20 else ""
        lines.append(f"Gradient step: **{grad['median_s'] * 1e3:.0f} ms** (median of {len(grad['samples_s'])}{mb}).")
        lines.append("")
    lines += ["| task | " + " | ".join(LIBRARIES) + " |", "|---|" + "---|" * len(LIBRARIES)]
    for task in TASK_ORDER:
        here = {r["library"]: r for r in rows if r["task"] == task}
        if not here:
            continue
        lines.append(f"| {TITLES[task]} | " + " | ".join(_cell(here.get(lib)) if lib in here else "n/a" for lib in LIBRARIES) + " |")
    return lines


def notes(data: dict[str, Any], model: str) -> list[str]:
    out = []
    for r in data["rows"]:
        if r["model"] == model and (r["status"] != "ok" or r.get("note")) and r["task"] != "grad":
            text = r.get("note") or ""
            if r["status"] == "ok" and ("Monte-Carlo" in text and text.startswith("Monte-Carlo")):
                continue
            out.append(f"- {r['library']} / {r['task']}: {r['status']}{' — ' + text if text else ''}")
    return out


def cold_table(data: dict[str, Any]) -> list[str]:
    lines = ["| network | request | first call | warm call | gradient step | first call / gradient step | (first − warm) / gradient step |",
             "|---|---|---|---|---|---|---|"]
    for c in data.get("cold", []):
        if "error" in c:
            lines.append(f"| {c['model']} | {TITLES.get(c['task'], c['task'])} | failed: {c['error'][:80]} | | | | |")
            continue
        lines.append(f"| {c['model']} | {TITLES.get(c['task'], c['task'])} | {c['cold_s']:.2f} s | {c['warm_s']:.2f} s | "
                     f"{c['grad_s'] * 1e3:.0f} ms | **{c['ratio']:.1f}×** | {c['planning_ratio']:.1f}× |")
    return lines


def plot(data: dict[str, Any], path: Path = PLOT) -> Path | None:
    """One panel per network: each task's time as a multiple of a gradient step, per library (log scale)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    models = [n["model"] for n in data["networks"]]
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 5.4), squeeze=False)
    colors = {"tnderiv": "#1f77b4", "backpack": "#d62728", "curvlinops": "#2ca02c", "torch.func": "#9467bd"}
    for ax, model in zip(axes[0], models):
        rows = [r for r in data["rows"] if r["model"] == model and "ratio" in r and r["task"] != "grad"]
        tasks = [t for t in TASK_ORDER if any(r["task"] == t for r in rows)]
        width = 0.8 / len(LIBRARIES)
        for j, lib in enumerate(LIBRARIES):
            ys, xs = [], []
            for i, task in enumerate(tasks):
                r = next((r for r in rows if r["task"] == task and r["library"] == lib), None)
                if r is not None:
                    ys.append(i + (j - (len(LIBRARIES) - 1) / 2) * width)
                    xs.append(r["ratio"])
            if xs:
                ax.barh(ys, xs, height=width, color=colors[lib], label=lib)
        if model == "3c3d":  # issue 15's bounds (multiples of a gradient step) as black ticks on tnderiv's bar
            shift = -(len(LIBRARIES) - 1) / 2 * width
            marks = [(i + shift, BOUNDS[t]) for i, t in enumerate(tasks) if t in BOUNDS]
            if marks:
                ax.scatter([b for _, b in marks], [y for y, _ in marks], marker="|", s=220, color="black", zorder=3,
                           label="target")
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_yticks(range(len(tasks)))
        ax.set_yticklabels([t.replace("_", " ") for t in tasks], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("time / gradient step (log)")
        ax.set_title(model)
        ax.grid(axis="x", which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9)
    fig.suptitle("Whole networks, CPU, 1 thread, batch 32\ntime as a multiple of one gradient step (lower is better)", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render(data: dict[str, Any]) -> str:
    m = data["meta"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    load = ", ".join(f"{v:.1f}" for v in m.get("load_average_at_start", []))
    lines = [
        "# Whole-model benchmarks",
        "",
        "<!-- Generated by `python -m benchmarks.models_report` from docs/benchmarks/models.json; edit benchmarks/models_report.py "
        "and benchmarks/models_targets.py, not this file. -->",
        "",
        "`tnderiv.Curvature` ([Whole models](whole-models.md)) on whole networks, side by side with a plain gradient step",
        "(forward + `loss.backward()`), [BackPACK](https://backpack.pt) (`BatchGrad`, `SumGradSquared`, `BatchL2Grad`,",
        "`Variance`, `KFAC` (MC, 1 sample), `KFLR`, `DiagGGNExact`, `DiagGGNMC`), [curvlinops](https://github.com/f-dangel/curvlinops)",
        "(`KFACLinearOperator`, type-2 and MC, expand) and `torch.func.vmap(grad)`, all in one process per network.",
        "Every time is a **multiple of one gradient step** of the same network and batch (lower is better).",
        "",
        "## Reproduce",
        "",
        "    .venv/bin/python -m benchmarks.bench_models            # full run (this page, models.json, models.png)",
        "    .venv/bin/python -m benchmarks.bench_models --quick    # 3C3D at batch 8, three tasks: a fast check",
        "    .venv/bin/python -m benchmarks.models_report           # rebuild this page from the JSON",
        "",
        "## Method",
        "",
        "- CPU, **one torch thread**, float32, batch 32, `nn.CrossEntropyLoss()` (mean). Networks: "
        + "; ".join(f"**{n['model']}**: {n['describe']}" for n in data["networks"]) + "."
        + (TRANSFORMER if any(n["model"] == "transformer" for n in data["networks"]) else ""),
        "- **Correctness before timing**: every configuration is first run in float64 on a small batch and compared "
        "with independent autograd oracles (`benchmarks/models_oracles.py`: per-sample gradients one backward per "
        "sample, statistics as their reductions, the exact GGN diagonal one backward per sample and Hessian-root "
        "column, KFAC factors from the unfolded inputs and the pulled-back root columns, relative error ≤ 1e-7). "
        "Peers are converted to tnderiv's conventions ([conventions](conventions.md)): BackPACK's KFLR/KFAC `A` "
        "is divided by the positions `S`, its `G` compared with the positions-summed `G`. Only correct "
        "configurations are timed; Monte-Carlo ones are checked on `A` and by shape.",
        "- **Timing**: one worker process per network with every library; each configuration is called once "
        "(planning, caches), then calls are interleaved round-robin with the order rotating every round and the "
        "median of the samples is reported; ratios are medians over the gradient step's median of the same worker. "
        "tnderiv's calls are warm (plans cached), as in a training loop; its first call on a fresh process is "
        "measured separately below. Every call starts from `.grad = None` and leaves no results on the model. "
        "Networks other than 3C3D take fewer samples (see their plans in the JSON): a configuration whose first "
        "call exceeds its plan's `slow_s` is sampled once.",
        f"- **Peak memory** (beside each time): {m['memory_method']}. It counts everything the call allocates "
        "(results included). Allocations under 64 KB come from the C heap, whose freed blocks are reused without "
        "raising the resident size, so a call made of many small tensors can read below 1 MB (ResNet-18 at 32×32, "
        "whose last stages are 2×2 and 1×1 pixels); such cells show no memory. Compare the large values.",
        f"- **Noise**: the machine ({m['device']}, {m['cpus']} cores) was shared with other jobs during the run "
        f"(load average {load} at the start): absolute times are inflated and vary by tens of percent; the "
        "interleaving and the medians keep the *ratios* comparable, but read them with that margin.",
        f"- The full run took {sum(n.get('seconds', 0) for n in data['networks']) / 60:.0f} min in the workers plus the "
        "fresh processes of the first calls. "
        f"Run {m['date']} at commit `{(m.get('git_commit') or '?')[:10]}`: `{m['command']}`. Versions: {versions}.",
        "",
        "![time as a multiple of a gradient step](benchmarks/models.png)",
        "",
    ]
    for net in data["networks"]:
        lines += [f"## {net['model']}", "", *table(data, net["model"]), ""]
        extra = notes(data, net["model"]) + ([f"- {NETWORK_NOTES[net['model']]}"] if net["model"] in NETWORK_NOTES else [])
        if extra:
            lines += ["Notes:", "", *extra, ""]
    lines += ["## First call on a fresh process", "",
              "A new process per request: two gradient steps warm torch, `tnderiv.clear_caches()`, then the first "
              "`compute` (derivation and planning of every layer) is timed, then three warm calls and three gradient "
              "steps (medians).", "", *cold_table(data), ""]
    lines += ["## Targets (issue 15, on 3C3D)", "", "| target | measured | met |", "|---|---|---|"]
    outcomes = evaluate(data)
    for target in TARGETS:
        o = outcomes[target.id]
        met = "–" if o.met is None else ("**yes**" if o.met else "**no**")
        lines.append(f"| {target.text} | {o.measured} | {met} |")
    missed = [t for t in TARGETS if outcomes[t.id].met is False]
    if missed:
        lines += ["", "### Where a target is missed: the measured cause", "", FLOOR, ""]
        for t in missed:
            lines.append(f"- **{t.text}** ({outcomes[t.id].measured}). {CAUSES.get(t.id, 'Cause not yet measured.')}")
    if FIXES:
        lines += ["", "### Proposed fixes (measured; the first applied in part)", "", *[f"- {f}" for f in FIXES]]
    return "\n".join(lines) + "\n"


def write_page(data: dict[str, Any] | None = None) -> Path:
    data = data if data is not None else json.loads(RESULTS.read_text())
    plot(data)
    PAGE.write_text(render(data))
    return PAGE


def ratio_of(data: dict[str, Any], model: str, library: str, task: str) -> float | None:
    r = next((r for r in data["rows"] if r["model"] == model and r["library"] == library and r["task"] == task), None)
    return None if r is None else r.get("ratio")


def median_or_none(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


if __name__ == "__main__":
    print(write_page())
