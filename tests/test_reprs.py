"""Results print as shapes, never as tensors: short reprs for KFAC, its inverse, GradStats, StatChoice, specs,
whole-model results and structured Grams (issue 11: repr(KFAC) used to be 35,501 characters)."""

from __future__ import annotations

import torch
from torch import nn

import tnderiv


def _short(obj: object, *fragments: str, limit: int = 400) -> None:
    text = repr(obj)
    assert len(text) <= limit, (len(text), text[:200])
    assert "tensor(" not in text, text
    for fragment in fragments:
        assert fragment in text, (fragment, text)


def test_layer_results_print_shapes() -> None:
    conv = nn.Conv2d(16, 32, 3, padding=1)
    x, g = torch.randn(4, 16, 12, 12), torch.randn(4, 32, 12, 12)
    k = tnderiv.kfac(conv, x, g)
    _short(k, "KFAC(expand", "A [1, 144, 144]", "G [1, 32, 32]", "'weight': [32, 16, 3, 3]")
    _short(k.inverse(0.1), "KroneckerOperator(", "eigendecomposed", "right [1, 144, 144]")
    stats = tnderiv.grad_stats(conv, x, g)
    _short(stats, "sum_grad_squared: weight [32, 16, 3, 3]", "batch_dot: weight [4, 4]")
    _short(stats.choices["batch_l2"]["weight"], "batch_l2/weight", "plans")
    _short(tnderiv.layers.spec_of(conv), "Conv(", "in_channels=16")
    _short(tnderiv.structured_gram(torch.randn(6, 3), "block_diagonal:2"), "block_diagonal:2", "[3, 2, 2]")


def test_model_results_print_shapes() -> None:
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    res = tnderiv.Curvature(model, nn.CrossEntropyLoss()).compute(
        torch.randn(6, 5), torch.randint(0, 3, (6,)), ("per_sample_grad", "kfac", "ggn_diag"), set_grad=False
    )
    _short(res, "CurvatureResult(", "N=6")
    _short(res["0"]["kfac"], "KFAC(")
    eig = tnderiv.Curvature(model, nn.CrossEntropyLoss()).ggn_eigen(torch.randn(6, 5), torch.randint(0, 3, (6,)), k=2)
    _short(eig, "GGNEigen(K=2")
