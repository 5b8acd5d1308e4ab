"""Hessian-diagonal approximations on small networks: L1 error to the exact diagonal and cost relative to a gradient.

The comparison of the HesScale papers (arXiv 2210.11639, 2406.03276) on synthetic data: BL89, HesScale and
HesScaleGN (``tnderiv.model.hesscale``), the exact and Monte-Carlo GGN diagonals (dense ``Jᵀ S`` per sample with
``torch.func``; BackPACK's ``DiagGGNExact``/``DiagGGNMC`` timed beside them) and a one-sample Hutchinson estimate
``v ⊙ Hv``, each against the exact Hessian diagonal from ``torch.func.hessian`` (float64, checked against
BackPACK's ``DiagHessian``). Errors average over freshly initialized networks and batches; costs are medians of
interleaved float32 timings in one process (CPU time of the process, one thread; wall time beside), divided by one gradient step (forward, loss, backward).

    .venv/bin/python -m benchmarks.bench_hesscale [--draws 10] [--repeat 11] [--out docs/benchmarks/hesscale.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

import tnderiv
from benchmarks.timing import pin_settings, time_interleaved
from tnderiv.model.hesscale import hessian_diagonal

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "benchmarks" / "hesscale.json"
CLASSES = 10
Diag = dict[str, torch.Tensor]


def mlp(act: type[nn.Module]) -> Callable[[], nn.Sequential]:
    return lambda: nn.Sequential(nn.Linear(16, 32), act(), nn.Linear(32, 32), act(), nn.Linear(32, CLASSES))


def cnn(c_in: int = 1, width: int = 4, pooled: int = 2) -> nn.Sequential:
    """conv–tanh–pool twice, then a dense head; ``pooled`` is the side of the last feature map."""
    return nn.Sequential(
        nn.Conv2d(c_in, width, 3, padding=1),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * pooled * pooled, CLASSES),
    )


def mlp_wide() -> nn.Sequential:
    return nn.Sequential(nn.Linear(256, 512), nn.Tanh(), nn.Linear(512, 512), nn.Tanh(), nn.Linear(512, CLASSES))


def cnn_wide() -> nn.Sequential:
    return cnn(3, 16, 8)


# name → (model factory, input shape without the batch, batch size); errors need the exact Hessian
PROBLEMS: dict[str, tuple[Callable[[], nn.Sequential], tuple[int, ...], int]] = {
    "mlp_tanh": (mlp(nn.Tanh), (16,), 32),
    "mlp_relu": (mlp(nn.ReLU), (16,), 32),
    "cnn_tanh": (cnn, (1, 8, 8), 32),
}
# costs only (the exact Hessian and the dense GGN of these are out of reach): where fixed overheads amortize
COST_ONLY: dict[str, tuple[Callable[[], nn.Sequential], tuple[int, ...], int]] = {
    "mlp_wide": (mlp_wide, (256,), 128),
    "cnn_wide": (cnn_wide, (3, 32, 32), 64),
}
# BackPACK's DiagHessian carries one column per hidden unit for the f″ terms: for cnn_wide that is tens of GB
SKIP_WHEN_LARGE = ("ggn_exact", "exact_hessian", "backpack_diag_hessian")


def batch(shape: tuple[int, ...], size: int, seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + seed)
    return torch.randn(size, *shape, generator=gen, dtype=dtype), torch.randint(0, CLASSES, (size,), generator=gen)


# ----- the estimates --------------------------------------------------------------------------------------
def exact_hessian(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Diag:
    """The exact Hessian diagonal, one dense block per parameter tensor (torch.func.hessian)."""
    out = {}
    for name, p in model.named_parameters():
        h = torch.func.hessian(lambda t, name=name: loss_fn(torch.func.functional_call(model, {name: t}, (x,)), y))(p.detach())
        out[name] = h.reshape(p.numel(), p.numel()).diagonal().reshape(p.shape)
    return out


def ggn_diag(model: nn.Module, x: torch.Tensor, sqrt: torch.Tensor) -> Diag:
    """``Σ_{n,m} (J_nᵀ s[m, n])²`` with per-sample VJPs of every column (vmap over samples and columns)."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def column(xn: torch.Tensor, sn: torch.Tensor) -> Diag:
        _, pull = torch.func.vjp(lambda p: torch.func.functional_call(model, p, (xn[None],))[0], params)
        return pull(sn)[0]

    per = torch.func.vmap(torch.func.vmap(column, in_dims=(None, 0)), in_dims=(0, 1))(x, sqrt)
    return {k: (v**2).sum((0, 1)) for k, v in per.items()}


def ggn_exact(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Diag:
    logits = model(x)
    return ggn_diag(model, x, tnderiv.loss_hessian_sqrt("cross_entropy", logits, y, reduction=loss_fn.reduction))


def ggn_mc(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator | None = None) -> Diag:
    logits = model(x)
    sqrt = tnderiv.loss_hessian_sqrt("cross_entropy", logits, y, mc_samples=1, reduction=loss_fn.reduction, generator=gen)
    return ggn_diag(model, x, sqrt)


def hutchinson(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator | None = None) -> Diag:
    """One Rademacher probe: ``v ⊙ Hv`` (Hessian-vector product by double backward)."""
    names, params = zip(*[(k, v) for k, v in model.named_parameters()])
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    probes = [torch.randint(0, 2, p.shape, generator=gen, dtype=p.dtype) * 2 - 1 for p in params]
    hv = torch.autograd.grad(grads, params, probes)
    return {k: v * h for k, v, h in zip(names, probes, hv)}


def hesscale_method(method: str) -> Callable[..., Diag]:
    def run(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor, gen: Any = None) -> Diag:
        _, per_module = hessian_diagonal(model, loss_fn, x, y, method=method)  # type: ignore[arg-type]
        return {f"{path}.{name}": v for path, per in per_module.items() for name, v in per.items()}

    return run


ESTIMATES: dict[str, Callable[..., Diag]] = {
    "bl89": hesscale_method("bl89"),
    "hesscale": hesscale_method("hesscale"),
    "hesscale_gn": hesscale_method("hesscale_gn"),
    "ggn_exact": lambda m, f, x, y, gen=None: ggn_exact(m, f, x, y),
    "ggn_mc": ggn_mc,
    "hutchinson": hutchinson,
}


def backpack_diag(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor, extension: Any, attr: str) -> Diag:
    """A BackPACK second-order extension's diagonal (model and loss already extended)."""
    from backpack import backpack

    model.zero_grad()
    loss = loss_fn(model(x), y)
    with backpack(extension):
        loss.backward()
    return {k: getattr(p, attr).detach().clone() for k, p in model.named_parameters()}


# ----- errors ---------------------------------------------------------------------------------------------
def l1(approx: Diag, exact: Diag) -> tuple[float, float]:
    """``Σ|approx − exact|`` over all parameters, and the same divided by ``Σ|exact|``."""
    err = sum(float((approx[k] - exact[k]).abs().sum()) for k in exact)
    norm = sum(float(exact[k].abs().sum()) for k in exact)
    return err, err / norm


def errors(name: str, draws: int) -> dict[str, Any]:
    """Mean and spread of the L1 errors over ``draws`` fresh networks and batches (float64)."""
    make, shape, size = PROBLEMS[name]
    loss_fn = nn.CrossEntropyLoss()
    raw: dict[str, list[float]] = {k: [] for k in ESTIMATES}
    rel: dict[str, list[float]] = {k: [] for k in ESTIMATES}
    backpack_gap = 0.0
    for draw in range(draws):
        torch.manual_seed(draw)
        model = make().to(torch.float64)
        x, y = batch(shape, size, draw, torch.float64)
        exact = exact_hessian(model, loss_fn, x, y)
        backpack_gap = max(backpack_gap, _backpack_check(model, loss_fn, x, y, exact))
        gen = torch.Generator().manual_seed(2000 + draw)
        for key, estimate in ESTIMATES.items():
            a, r = l1(estimate(model, loss_fn, x, y, gen), exact)
            raw[key].append(a)
            rel[key].append(r)
    return {
        "params": sum(p.numel() for p in make().parameters()),
        "draws": draws,
        "backpack_diag_hessian_max_abs_diff": backpack_gap,
        "l1": {k: statistics.mean(v) for k, v in raw.items()},
        "l1_normalized": {k: statistics.mean(v) for k, v in rel.items()},
        "l1_normalized_std": {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in rel.items()},
    }


def _backpack_check(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor, exact: Diag) -> float:
    """Largest |BackPACK DiagHessian − torch.func.hessian| (an independent check of the oracle)."""
    from backpack import extend
    from backpack.extensions import DiagHessian

    bp_model, bp_loss = extend(copy.deepcopy(model)), extend(copy.deepcopy(loss_fn))
    got = backpack_diag(bp_model, bp_loss, x, y, DiagHessian(), "diag_h")
    return max(float((got[k] - exact[k]).abs().max()) for k in exact)


# ----- costs ----------------------------------------------------------------------------------------------
def costs(name: str, repeat: int) -> dict[str, Any]:
    """Median seconds per call (float32) and the ratio to one gradient step, all timed round-robin."""
    from backpack import extend
    from backpack.extensions import DiagGGNExact, DiagGGNMC, DiagHessian

    make, shape, size = {**PROBLEMS, **COST_ONLY}[name]
    large = name in COST_ONLY
    torch.manual_seed(0)
    model = make()
    loss_fn = nn.CrossEntropyLoss()
    x, y = batch(shape, size, 0, torch.float32)
    bp_model, bp_loss = extend(copy.deepcopy(model)), extend(nn.CrossEntropyLoss())

    def gradient_step() -> None:
        model.zero_grad()
        loss_fn(model(x), y).backward()

    calls: dict[str, Callable[[], Any]] = {"gradient": gradient_step}
    calls.update({key: (lambda est=est: est(model, loss_fn, x, y)) for key, est in ESTIMATES.items()})
    calls["exact_hessian"] = lambda: exact_hessian(model, loss_fn, x, y)
    calls["backpack_ggn_exact"] = lambda: backpack_diag(bp_model, bp_loss, x, y, DiagGGNExact(), "diag_ggn_exact")
    calls["backpack_ggn_mc"] = lambda: backpack_diag(bp_model, bp_loss, x, y, DiagGGNMC(mc_samples=1), "diag_ggn_mc")
    calls["backpack_diag_hessian"] = lambda: backpack_diag(bp_model, bp_loss, x, y, DiagHessian(), "diag_h")
    for key in SKIP_WHEN_LARGE if large else ():
        del calls[key]
    cpu = time_cpu(calls, repeat=repeat, warmup=2, min_sample_s=0.02, budget_s=3.0)
    wall = time_interleaved(calls, repeat=repeat, warmup=1, device="cpu", min_sample_s=0.02, budget_s=3.0)
    return {
        "batch": size,
        "params": sum(p.numel() for p in model.parameters()),
        "cpu_seconds": cpu,
        "wall_seconds": {k: t.median for k, t in wall.items()},
        "relative_to_gradient": {k: t / cpu["gradient"] for k, t in cpu.items()},
        "wall_relative_to_gradient": {k: t.median / wall["gradient"].median for k, t in wall.items()},
    }


def time_cpu(
    calls: dict[str, Callable[[], Any]], *, repeat: int, warmup: int, min_sample_s: float, budget_s: float
) -> dict[str, float]:
    """Median CPU seconds of this process per call (``time.process_time``; one thread), samples taken round-robin.

    On a machine shared with other jobs, wall time charges their load to whichever call is running; the
    process's own CPU time does not.
    """
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    number, wanted, samples = {}, {}, {}
    for name, fn in calls.items():
        start = time.process_time()
        fn()
        once = max(time.process_time() - start, 1e-6)
        number[name] = max(1, min(200, math.ceil(min_sample_s / once)))
        wanted[name] = max(3, min(repeat, int(budget_s / (once * number[name]))))
        samples[name] = []
    names = list(calls)
    for round_ in range(max(wanted.values())):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            if len(samples[name]) >= wanted[name]:
                continue
            start = time.process_time()
            for _ in range(number[name]):
                calls[name]()
            samples[name].append((time.process_time() - start) / number[name])
    return {name: statistics.median(samples[name]) for name in names}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_hesscale", description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=10, help="networks and batches the errors average over (default 10)")
    parser.add_argument("--repeat", type=int, default=11, help="timed samples per method (median taken; default 11)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--only", nargs="+", choices=sorted({**PROBLEMS, **COST_ONLY}), help="a subset of the problems")
    parser.add_argument("--out", type=Path, default=OUT, help=f"JSON output (default {OUT.relative_to(ROOT)})")
    parser.add_argument("--table", type=Path, metavar="JSON", help="print the Markdown tables of a results file and exit")
    args = parser.parse_args(argv)
    if args.table is not None:
        print(table(json.loads(args.table.read_text())))
        return
    settings = pin_settings("cpu", args.threads, tf32=False)
    load_before = os.getloadavg()
    start = time.perf_counter()
    results: dict[str, Any] = {}
    for name in args.only or [*PROBLEMS, *COST_ONLY]:
        results[name] = {"costs": costs(name, args.repeat)}
        if name in PROBLEMS:
            results[name]["errors"] = errors(name, args.draws)
        _print(name, results[name])
    report = {
        "what": __doc__.splitlines()[0],
        "classes": CLASSES,
        "loss": "CrossEntropyLoss(reduction='mean'), uniform random labels, x ~ N(0, 1)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "settings": settings,
        "run_seconds": round(time.perf_counter() - start, 1),
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0], "cpus": os.cpu_count()},
        "problems": {name: _describe(name) for name in results},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


LABELS = {
    "gradient": "gradient step (forward, loss, backward)",
    "bl89": "BL89 (`method=\"bl89\"`)",
    "hesscale": "HesScale (`method=\"hesscale\"`)",
    "hesscale_gn": "HesScaleGN (`method=\"hesscale_gn\"`)",
    "ggn_exact": "exact GGN diagonal (torch.func, per-sample `Jᵀ S`)",
    "ggn_mc": "MC GGN diagonal, 1 sample (torch.func)",
    "hutchinson": "Hutchinson `v ⊙ Hv`, 1 probe",
    "exact_hessian": "exact Hessian diagonal (`torch.func.hessian` per tensor)",
    "backpack_ggn_exact": "BackPACK `DiagGGNExact`",
    "backpack_ggn_mc": "BackPACK `DiagGGNMC(mc_samples=1)`",
    "backpack_diag_hessian": "BackPACK `DiagHessian`",
}


def table(report: dict[str, Any]) -> str:
    """Markdown: one table of errors and costs per problem."""
    lines = []
    for name, result in report["results"].items():
        cost, err = result["costs"], result.get("errors")
        cpu, wall = cost["relative_to_gradient"], cost["wall_relative_to_gradient"]
        lines += [f"**{name}**: {report['problems'][name]}, {cost['params']} parameters", ""]
        head = "| method | L1 / Σ\\|diag H\\| (mean ± std) | L1 (mean) |" if err is not None else "| method |"
        lines += [head + " cost ÷ gradient, CPU | wall |", "|---" * (5 if err is not None else 3) + "|"]
        for key, ratio in cpu.items():
            cells = [LABELS.get(key, key)]
            if err is not None:
                if key in err["l1_normalized"]:
                    cells += [f"{err['l1_normalized'][key]:.4f} ± {err['l1_normalized_std'][key]:.4f}", f"{err['l1'][key]:.3g}"]
                else:
                    cells += ["—", "—"]
            cells += [f"{ratio:.2f}", f"{wall[key]:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
        seconds = cost["cpu_seconds"]["gradient"]
        lines += ["", f"(one gradient step: {seconds * 1e3:.2f} ms CPU)", ""]
    return "\n".join(lines)


def _describe(name: str) -> str:
    make, shape, size = {**PROBLEMS, **COST_ONLY}[name]
    layers = " → ".join(_short(m) for m in make())
    return f"{layers} on inputs [{size}, {', '.join(map(str, shape))}]"


def _short(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return f"Linear({module.in_features}→{module.out_features})"
    if isinstance(module, nn.Conv2d):
        return f"Conv2d({module.in_channels}→{module.out_channels}, {module.kernel_size[0]}×{module.kernel_size[1]}, padding {module.padding[0]})"
    if isinstance(module, nn.MaxPool2d):
        return f"MaxPool2d({module.kernel_size})"
    return type(module).__name__


def _print(name: str, result: dict[str, Any]) -> None:
    cost = result["costs"]["relative_to_gradient"]
    err = result.get("errors")
    print(f"{name} ({result['costs']['params']} parameters, batch {result['costs']['batch']})")
    if err is not None:
        print(f"  BackPACK DiagHessian vs torch.func.hessian: max |diff| {err['backpack_diag_hessian_max_abs_diff']:.1e}")
        assert all(math.isfinite(v) for v in err["l1"].values())
    for key, ratio in cost.items():
        line = f"  {key:<22} cost ×{ratio:8.2f}"
        if err is not None and key in err["l1_normalized"]:
            line += f"   L1/|H| {err['l1_normalized'][key]:.4f} ± {err['l1_normalized_std'][key]:.4f}"
        print(line)


if __name__ == "__main__":
    main()
