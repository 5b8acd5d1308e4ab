"""ViViT's headline, side by side: the cost of k = 10 GGN eigenpairs against k = 1, and against a gradient step,
for tnderiv (``Curvature.ggn_eigen``) and vivit-for-pytorch (BackPACK), in one process.

    .venv/bin/python -m benchmarks.bench_vivit [--quick]

Writes docs/benchmarks/vivit.json. CPU, one thread, float32, interleaved medians (benchmarks/timing.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

import tnderiv
from benchmarks.timing import pin_settings, time_interleaved

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "vivit.json"


def model_and_data(batch: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small CNN on CIFAR-sized input (conv, ReLU, pool, conv, ReLU, pool, dense): BackPACK supports it."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 8 * 8, 10),
    )
    return model, torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))


def _symeig(self: torch.Tensor, eigenvectors: bool = False, upper: bool = True) -> Any:
    evals, evecs = torch.linalg.eigh(self, UPLO="U" if upper else "L")
    return evals, evecs


def vivit_eigh(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int) -> Any:
    """vivit-for-pytorch's top-k GGN eigenpairs (its ``Tensor.symeig`` call shimmed to ``torch.linalg.eigh``)."""
    from backpack import backpack, extend
    from vivit.linalg.eigh import EighComputation

    torch.Tensor.symeig = _symeig  # type: ignore[attr-defined]  # removed from torch 1.13; vivit 1.0 still calls it
    computation = EighComputation()
    group = {"params": list(model.parameters()), "criterion": lambda evals: list(range(evals.numel() - k, evals.numel()))}
    ext = extend(model)
    loss = extend(nn.CrossEntropyLoss())
    with backpack(computation.get_extension(), extension_hook=computation.get_extension_hook([group])):
        loss(ext(x), y).backward()
    return computation.get_result(group)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="batch 4, few repeats (a smoke run)")
    args = parser.parse_args(argv)
    settings = pin_settings("cpu", 1, False)
    batch = 4 if args.quick else 32
    model, x, y = model_and_data(batch)
    curv = tnderiv.Curvature(model, nn.CrossEntropyLoss())

    def step() -> None:
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()

    # agreement before timing: the top eigenvalues of both (float32)
    ours = curv.ggn_eigen(x, y, k=3).eigenvalues
    calls: dict[str, Any] = {
        "gradient step": step,
        "tnderiv k=1": lambda: curv.ggn_eigen(x, y, k=1),
        "tnderiv k=10": lambda: curv.ggn_eigen(x, y, k=10),
    }
    agree = None
    try:
        theirs = vivit_eigh(model, x, y, 3)[0].flip(0)
        agree = float(((ours - theirs).abs() / theirs.abs()).max())
        calls["vivit k=1"] = lambda: vivit_eigh(model, x, y, 1)
        calls["vivit k=10"] = lambda: vivit_eigh(model, x, y, 10)
    except ImportError:
        pass
    times = time_interleaved(calls, repeat=3 if args.quick else 7, warmup=1, device="cpu", budget_s=5.0)
    base = times["gradient step"].median
    result = {
        "settings": {**settings, "batch": batch, "model": "conv16-pool-conv16-pool-dense10, 32x32, cross-entropy (M = 10)"},
        "top3_relative_difference_to_vivit": agree,
        "seconds": {k: t.median for k, t in times.items()},
        "multiples_of_gradient_step": {k: t.median / base for k, t in times.items()},
        "k10_over_k1": {
            "tnderiv": times["tnderiv k=10"].median / times["tnderiv k=1"].median,
            **({"vivit": times["vivit k=10"].median / times["vivit k=1"].median} if "vivit k=1" in times else {}),
        },
    }
    if not args.quick:
        OUT.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
