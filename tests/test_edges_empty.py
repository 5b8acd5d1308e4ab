"""Empty inputs (N = 0, an empty weight-sharing or normalized axis): empty results like torch's.

Oracles: the torch module's forward and ``torch.autograd`` on the same empty tensors.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tnderiv

F64 = torch.float64


def t(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=F64)


CASES = {
    "conv2d-N0": (lambda: nn.Conv2d(2, 3, 3, padding=1), (0, 2, 5, 5)),
    "conv1d-stride-N0": (lambda: nn.Conv1d(2, 4, 3, stride=2, groups=2), (0, 2, 9)),
    "conv-transpose-N0": (lambda: nn.ConvTranspose2d(2, 3, 3, stride=2), (0, 2, 3, 4)),
    "linear-N0": (lambda: nn.Linear(3, 2), (0, 3)),
    "linear-empty-seq": (lambda: nn.Linear(3, 2), (4, 0, 3)),
    "layernorm-N0": (lambda: nn.LayerNorm(4), (0, 4)),
    "layernorm-empty-seq": (lambda: nn.LayerNorm(4), (2, 0, 4)),
    "batchnorm-train-N0": (lambda: nn.BatchNorm2d(2), (0, 2, 3, 3)),
    "batchnorm-eval-N0": (lambda: nn.BatchNorm2d(2).eval(), (0, 2, 3, 3)),
    "groupnorm-empty-spatial": (lambda: nn.GroupNorm(1, 2), (2, 2, 0, 3)),
    "instancenorm-N0": (lambda: nn.InstanceNorm1d(2), (0, 2, 5)),  # torch fails on affine=True with N = 0
}


def _case(name: str) -> tuple[nn.Module, torch.Tensor]:
    build, shape = CASES[name]
    return build().double(), t(*shape)


@pytest.mark.parametrize("name", CASES)
def test_forward_and_vjps_of_empty_inputs_match_torch(name):
    module, x = _case(name)
    x.requires_grad_(True)
    out = module(x)
    g = t(*out.shape)
    y = tnderiv.forward(module, x.detach())
    assert y.shape == out.shape
    params = dict(module.named_parameters())
    grads = torch.autograd.grad(out, [x, *params.values()], g, allow_unused=True)
    expected = dict(zip(["x", *params], grads))
    ours = {"x": tnderiv.vjp(module, "x", g, x=x.detach())}
    for p in params:
        ours[p] = tnderiv.vjp(module, p, g, x=x.detach())
    for key, value in ours.items():
        want = expected[key] if expected[key] is not None else torch.zeros_like(params[key])
        if name == "groupnorm-empty-spatial" and key == "weight":
            # a sum over no element is 0; torch's GroupNorm backward kernel returns nan here (Σ g·x·rstd, rstd = nan)
            assert torch.isnan(want).all()
            want = torch.zeros_like(want)
        assert value.shape == want.shape, key
        torch.testing.assert_close(value.detach(), want)


@pytest.mark.parametrize("name", ["conv2d-N0", "linear-N0", "linear-empty-seq", "layernorm-N0", "groupnorm-empty-spatial"])
def test_per_sample_grad_and_ggn_of_empty_inputs(name):
    module, x = _case(name)
    out = module(x)
    g = t(*out.shape)
    psg = tnderiv.per_sample_grad(module, x, g)
    for p, value in module.named_parameters():
        assert psg[p].shape == (x.shape[0], *value.shape)
    s = t(3, *out.shape)
    diag = tnderiv.ggn(module, x, s, kind="diag")
    assert torch.equal(diag.detach(), torch.zeros_like(module.weight))  # a sum over no sample


def test_grad_stats_of_an_empty_batch_follow_torch_reductions():
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    x, g = t(0, 2, 4, 4), t(0, 3, 4, 4)
    stats = tnderiv.grad_stats(conv, x, g)
    per_sample = torch.zeros(0, *conv.weight.shape, dtype=F64)  # what the per-sample gradients are
    torch.testing.assert_close(stats["sum_grad_squared"]["weight"], (per_sample**2).sum(0))
    torch.testing.assert_close(stats["variance"]["weight"], (per_sample**2).mean(0) - per_sample.mean(0) ** 2, equal_nan=True)
    assert stats["batch_l2"]["weight"].shape == (0,) and stats["batch_dot"]["bias"].shape == (0, 0)
    assert stats.strategy("variance") == "empty"


def test_empty_results_carry_gradients_like_torch():
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    tnderiv.forward(conv, t(0, 2, 5, 5)).sum().backward()
    torch.testing.assert_close(conv.weight.grad, torch.zeros_like(conv.weight))


def test_loss_hessian_sqrt_of_an_empty_batch():
    s = tnderiv.loss_hessian_sqrt("cross_entropy", t(0, 4), torch.zeros(0, dtype=torch.long))
    assert s.shape == (4, 0, 4)
    assert tnderiv.loss_hessian_sqrt("mse", t(0, 3), t(0, 3), mc_samples=2).shape == (2, 0, 3)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: tnderiv.forward(nn.Conv2d(2, 3, 3, padding=1), torch.randn(2, 2, 0, 5)), "input size 0"),
        (lambda: tnderiv.forward(nn.Conv2d(2, 3, 1, padding=1), torch.randn(2, 2, 0, 5)), "empty spatial axis"),
        (lambda: tnderiv.kfac(nn.Linear(3, 2), torch.randn(0, 3), torch.randn(0, 2)), "KFAC needs at least one sample"),
    ],
    ids=["conv-empty-spatial", "conv1x1-empty-spatial", "kfac-N0"],
)
def test_what_torch_refuses_is_refused_clearly(call, words):
    with pytest.raises(ValueError, match=words):
        call()
