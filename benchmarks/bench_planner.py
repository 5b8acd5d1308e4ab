"""Side-by-side timings of tnderiv's structure-aware planner against torch, einconv, unfold+einsum and vmap(grad).

CPU, batch 8, spatial sizes halved, over the layers of ``data/conv_layers.json``; implementations are
timed round-robin in one process (so machine load hits all alike) and every result is checked
against torch first. Writes ``docs/benchmarks_planner.md`` (per layer and medians).

    .venv/bin/python -m benchmarks.bench_planner [--repeat 7] [--only NAME] [--out docs/benchmarks_planner.md]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import tnderiv
from benchmarks import unfold as unfold_ref
from tnderiv.calculus import derive
from tnderiv.layers import spec_of
from tnderiv.plan.bind import OUTPUT
from tnderiv.plan.compiled import Plan

ROOT = Path(__file__).resolve().parent.parent
BATCH = 8


def module_of(layer: dict[str, Any]) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """The torch module of a layer and its input shape at batch 8 with halved spatial sizes."""
    dims = layer["dims"]
    kind = ("ConvTranspose" if layer.get("transposed") else "Conv") + f"{dims}d"
    kwargs = dict(stride=tuple(layer["stride"]), dilation=tuple(layer["dilation"]), groups=layer["groups"], bias=layer["bias"])
    padding = layer["padding"]
    kwargs["padding"] = padding if isinstance(padding, str) else tuple(padding)
    if layer.get("transposed"):
        kwargs["output_padding"] = tuple(layer.get("output_padding", [0] * dims))
    module = getattr(torch.nn, kind)(layer["in_channels"], layer["out_channels"], tuple(layer["kernel_size"]), **kwargs)
    size = tuple(max(1, s // 2) for s in layer["input_size"])
    return module.eval(), (BATCH, layer["in_channels"], *size)


def timed(fns: dict[str, Callable[[], Any]], repeat: int) -> dict[str, float]:
    """Best seconds per call of each function, timed round-robin after a warm-up call.

    The minimum, not the median: on a shared machine other processes only ever add time.
    """
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: min(s) for name, s in samples.items()}


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    scale = b.abs().max().item() + 1e-6
    return a.shape == b.shape and bool(((a - b).abs().max() / scale) < 1e-3)


def _einconv_forward(m: torch.nn.Module, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    from einconv.functionals import convNd

    return convNd(x, w, b, stride=m.stride, padding=m.padding, dilation=m.dilation, groups=m.groups)


def _einconv_input_vjp(m: torch.nn.Module, w: torch.Tensor, g: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    from einconv.expressions import convNd_input_vjp

    equation, operands, shape = convNd_input_vjp.einsum_expression(
        w, g, size, stride=m.stride, padding=m.padding, dilation=m.dilation, groups=m.groups
    )
    return torch.einsum(equation, *operands).reshape(shape)


def _torch_grads(m: torch.nn.Module, x: torch.Tensor, g: torch.Tensor, mask: list[bool]) -> tuple[Any, ...]:
    """torch's own convolution backward kernel (what autograd runs)."""
    padding = m.padding
    if isinstance(padding, str):  # 'same': what F.conv does internally
        return torch.autograd.grad(m(x), [t for t, keep in zip((x, m.weight), mask[:2]) if keep], g)
    return torch.ops.aten.convolution_backward(
        g, x, m.weight, None, list(m.stride), list(padding), list(m.dilation), m.transposed,
        list(m.output_padding), m.groups, mask,
    )


def bench_layer(layer: dict[str, Any], repeat: int) -> dict[str, Any]:
    torch.manual_seed(0)
    m, shape = module_of(layer)
    x = torch.randn(shape)
    w = m.weight.detach()
    b = None if m.bias is None else m.bias.detach()
    with torch.no_grad():
        y = m(x)
    g = torch.randn_like(y)
    transposed = bool(layer.get("transposed"))
    same = isinstance(m.padding, str)
    spec = spec_of(m)
    row: dict[str, Any] = {"layer": f"{layer['net']}/{layer['name']}", "category": layer["category"]}

    # forward
    fns: dict[str, Callable[[], Any]] = {
        "torch": lambda: F.conv_transpose2d(x, w, b, m.stride, m.padding, m.output_padding, m.groups, m.dilation)
        if transposed and x.dim() == 4
        else m._conv_forward(x, w, b),  # type: ignore[operator]
        "tnderiv": lambda: tnderiv.forward(spec, x, w, b),
    }
    if not transposed:
        fns["einconv"] = lambda: _einconv_forward(m, x, w, b)
    ref = y
    for name, fn in fns.items():
        assert _close(fn(), ref), f"{row['layer']}: forward of {name} disagrees with torch"
    row["forward"] = timed(fns, repeat)

    # input VJP
    xg = x.clone().requires_grad_(True) if same else x
    gx_ref = (torch.autograd.grad(m(xg), xg, g)[0] if same else _torch_grads(m, x, g, [True, False, False])[0])
    fns = {
        "torch": (lambda: torch.autograd.grad(m(xg), xg, g)[0]) if same else (lambda: _torch_grads(m, x, g, [True, False, False])[0]),
        "tnderiv": lambda: tnderiv.vjp(spec, "x", g, weight=w, x_shape=x.shape),
    }
    if not transposed:
        fns["einconv"] = lambda: _einconv_input_vjp(m, w, g, tuple(x.shape[2:]))
    for name, fn in fns.items():
        assert _close(fn(), gx_ref), f"{row['layer']}: input VJP of {name} disagrees with torch"
    row["vjp_x"] = timed(fns, repeat)

    # weight VJP
    gw_ref = unfold_ref.weight_vjp(m, x, g)
    fns = {
        "unfold+einsum": lambda: unfold_ref.weight_vjp(m, x, g),
        "tnderiv": lambda: tnderiv.vjp(spec, "weight", g, x=x),
    }
    if not same:
        fns["torch"] = lambda: _torch_grads(m, x, g, [False, True, False])[1]
    for name, fn in fns.items():
        assert _close(fn(), gw_ref), f"{row['layer']}: weight VJP of {name} disagrees"
    row["vjp_weight"] = timed(fns, repeat)

    # per-sample gradients of the weight
    params = {"weight": m.weight.detach()}
    if m.bias is not None:
        params["bias"] = m.bias.detach()

    def sample_loss(p: dict[str, torch.Tensor], xn: torch.Tensor, gn: torch.Tensor) -> torch.Tensor:
        return (torch.func.functional_call(m, p, (xn.unsqueeze(0),)) * gn.unsqueeze(0)).sum()

    vmapped = torch.func.vmap(torch.func.grad(sample_loss), in_dims=(None, 0, 0))
    psg_ref = unfold_ref.per_sample_grad(m, x, g)
    fns = {
        "unfold+einsum": lambda: unfold_ref.per_sample_grad(m, x, g),
        "vmap(grad)": lambda: vmapped(params, x, g)["weight"],
        "tnderiv": lambda: tnderiv.per_sample_grad(spec, x, g, params=["weight"])["weight"],
    }
    for name, fn in fns.items():
        assert _close(fn(), psg_ref), f"{row['layer']}: per-sample gradients of {name} disagree"
    row["psg"] = timed(fns, repeat)

    # warm call vs the compiled expression; cold planning time
    overhead = {}
    planning = {}
    tensors = {"x": x, "weight": w, "grad_out": g}
    if b is not None:
        tensors["bias"] = b
    calls = {
        "forward": lambda: tnderiv.forward(spec, x, w, b),
        "vjp_x": lambda: tnderiv.vjp(spec, "x", g, weight=w, x_shape=x.shape),
        "vjp_weight": lambda: tnderiv.vjp(spec, "weight", g, x=x),
        "per_sample_grad_weight": lambda: tnderiv.per_sample_grad(spec, x, g, params=["weight"]),
    }
    network = spec.network({"x": tuple(x.shape)})
    for quantity, api_call in calls.items():
        expr = derive(network, quantity)
        shapes = {name: tuple(tensors[name].shape) for name in expr.operand_names}
        if quantity == "vjp_x":
            shapes[OUTPUT] = tuple(x.shape)
        operands = {name: tensors[name] for name in expr.operand_names}
        plan = Plan(expr, shapes, x, "auto", network.check_sizes)
        t = timed({"api": api_call, "compiled": lambda plan=plan, operands=operands: plan.run(operands)}, repeat * 2)
        overhead[quantity] = t["api"] / t["compiled"] - 1
        cold = []
        for _ in range(5):
            start = time.perf_counter()
            Plan(expr, shapes, x, "auto", network.check_sizes)
            cold.append(time.perf_counter() - start)
        planning[quantity] = min(cold)
    row["overhead"] = overhead
    row["planning"] = planning
    return row


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g}"


def _geo(values: list[float]) -> float:
    return math.exp(statistics.mean(math.log(v) for v in values))


def report(rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Planner benchmarks (CPU)",
        "",
        "Written by `benchmarks/bench_planner.py`: batch 8, spatial sizes of `data/conv_layers.json` halved, float32,",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, implementations timed round-robin in one",
        "process (best of repeated calls, milliseconds); every result checked against torch before timing.",
        "`tnderiv` is the public API with a warm plan cache. Ratios are tnderiv / reference (below 1: tnderiv faster).",
        "",
        "References: `torch` is the layer's own forward and `convolution_backward` (autograd's kernels; for `'same'`",
        "padding autograd including the forward); `einconv` its `convNd` and input-VJP einsum expressions (no",
        "transposed layers); `unfold+einsum` the opacus approach (`benchmarks/unfold.py`); `vmap(grad)` is",
        "`torch.func.vmap(torch.func.grad(...))` over the batch. Measured on a shared 2-core machine while other jobs",
        "ran: timings of single layers can be off by tens of percent, medians are steadier.",
        "",
        "What tnderiv runs (see `str(tnderiv.plan(...))`): each term is planned twice, as derived and after the",
        "plan-stage rewrite rules (dense patterns, down-sampling, squeezes), and every candidate contraction order of",
        "both is scored by the structure-aware cost model. Steps that are exactly a convolution run as torch's kernels",
        "(forward, transposed, weight gradient; per-sample gradients as a weight gradient with `groups = N·G`),",
        "steps of data with one pattern as gathers (unfold views of the padded input) and dense steps as a",
        "`torch.matmul` on views. The cost model prices grouped weight gradients with few output positions and",
        "shallow GEMMs by measured slowdowns, so per-sample gradients switch to gather + batched GEMM where the",
        "grouped kernel is slow.",
        "",
    ]
    sections = [
        ("forward", "Forward", ["torch", "einconv"]),
        ("vjp_x", "Input VJP", ["torch", "einconv"]),
        ("vjp_weight", "Weight VJP", ["unfold+einsum", "torch"]),
        ("psg", "Per-sample weight gradients", ["unfold+einsum", "vmap(grad)"]),
    ]
    summary = []
    for key, title, refs in sections:
        lines += [f"## {title}", "", "| layer | category | tnderiv | " + " | ".join(refs) + " | " + " | ".join(f"÷ {r}" for r in refs) + " |"]
        lines.append("|" + "---|" * (3 + 2 * len(refs)))
        ratios: dict[str, list[float]] = {r: [] for r in refs}
        for row in rows:
            t = row[key]
            cells = [_ms(t["tnderiv"])] + [_ms(t[r]) if r in t else "n/a" for r in refs]
            quotients = []
            for r in refs:
                if r in t:
                    ratios[r].append(t["tnderiv"] / t[r])
                    quotients.append(f"{t['tnderiv'] / t[r]:.2f}")
                else:
                    quotients.append("n/a")
            lines.append(f"| {row['layer']} | {row['category']} | " + " | ".join(cells + quotients) + " |")
        for r in refs:
            if ratios[r]:
                summary.append(
                    f"| {title} | {r} | {statistics.median(ratios[r]):.2f} | {_geo(ratios[r]):.2f} | {max(ratios[r]):.2f} | "
                    f"{sum(q < 1 for q in ratios[r])}/{len(ratios[r])} |"
                )
        lines.append("")
    lines += ["## Warm-call overhead and cold planning", "", "| layer | " + " | ".join(f"{q} overhead" for q in rows[0]["overhead"]) + " | " + " | ".join(f"{q} plan ms" for q in rows[0]["planning"]) + " |"]
    lines.append("|" + "---|" * (1 + 2 * len(rows[0]["overhead"])))
    over_all, plan_all = [], []
    for row in rows:
        over_all += list(row["overhead"].values())
        plan_all += list(row["planning"].values())
        lines.append(
            f"| {row['layer']} | " + " | ".join(f"{v * 100:+.1f}%" for v in row["overhead"].values()) + " | "
            + " | ".join(_ms(v) for v in row["planning"].values()) + " |"
        )
    lines += [
        "",
        "## Medians over layers",
        "",
        "| quantity | reference | median ratio | geometric mean | worst | layers where tnderiv is faster |",
        "|---|---|---|---|---|---|",
        *summary,
        "",
        f"Warm-call overhead (API call over running the compiled plan directly): median {statistics.median(over_all) * 100:+.1f}%, "
        f"worst {max(over_all) * 100:+.1f}%. Cold planning: median {_ms(statistics.median(plan_all))} ms, worst {_ms(max(plan_all))} ms.",
        "",
        "## Targets",
        "",
        *targets(rows, over_all, plan_all),
        "",
    ]
    return "\n".join(lines)


def targets(rows: list[dict[str, Any]], overhead: list[float], planning: list[float]) -> list[str]:
    """The issue's speed targets, each with the measured figure and whether it is met."""

    def ratios(key: str, ref: str) -> list[float]:
        return [row[key]["tnderiv"] / row[key][ref] for row in rows if ref in row[key]]

    def line(text: str, value: str, met: bool) -> str:
        return f"- {'met' if met else 'NOT met'}: {text} — {value}"

    out = []
    for key, title in (("forward", "forward"), ("vjp_x", "input VJP")):
        r = ratios(key, "torch")
        out.append(line(f"{title} no slower than 1.5x torch (median)", f"{statistics.median(r):.2f}x", statistics.median(r) <= 1.5))
        e = ratios(key, "einconv")
        out.append(line(f"{title} faster than einconv on every layer", f"{sum(q < 1 for q in e)}/{len(e)} layers, worst {max(e):.2f}x", max(e) < 1))
    for key, title in (("vjp_weight", "weight VJP"), ("psg", "per-sample gradients")):
        r = ratios(key, "unfold+einsum")
        out.append(line(f"{title} at least as fast as unfold + einsum (median)", f"{statistics.median(r):.2f}x", statistics.median(r) <= 1))
    r = ratios("psg", "vmap(grad)")
    out.append(line("per-sample gradients faster than vmap(grad) (median)", f"{statistics.median(r):.2f}x", statistics.median(r) < 1))
    med = statistics.median(overhead)
    out.append(line("warm call < 5% over the compiled plan (median)", f"{med * 100:+.1f}%", med < 0.05))
    out.append(line("cold call plans in < 20 ms (median)", f"{_ms(statistics.median(planning))} ms (worst {_ms(max(planning))} ms)", statistics.median(planning) < 0.02))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--only", default=None, help="substring of net/name to run")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks_planner.md"))
    parser.add_argument("--json", default=None, help="also write the raw timings here")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    layers = json.loads((ROOT / "data" / "conv_layers.json").read_text())["layers"]
    rows = []
    for layer in layers:
        name = f"{layer['net']}/{layer['name']}"
        if args.only and args.only not in name:
            continue
        tnderiv.clear_caches()
        start = time.perf_counter()
        rows.append(bench_layer(layer, args.repeat))
        r = rows[-1]
        print(
            f"{name:40s} fwd {r['forward']['tnderiv'] / r['forward']['torch']:.2f}x torch  "
            f"vjp_x {r['vjp_x']['tnderiv'] / r['vjp_x']['torch']:.2f}x  "
            f"vjp_w {r['vjp_weight']['tnderiv'] / r['vjp_weight']['unfold+einsum']:.2f}x unfold  "
            f"psg {r['psg']['tnderiv'] / r['psg']['unfold+einsum']:.2f}x unfold {r['psg']['tnderiv'] / r['psg']['vmap(grad)']:.2f}x vmap  "
            f"({time.perf_counter() - start:.1f}s)",
            flush=True,
        )
    Path(args.out).write_text(report(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
