"""Torch modules as they are now: settings changed after the first call, and gradients w.r.t. their parameters.

Oracles: the module's own forward and ``torch.autograd`` through it (float64).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tnderiv

F64 = torch.float64


def t(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=F64)


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# ----- item 1: a module changed after its first use -----------------------------------------------------
def _set_padding_mode(m: nn.Module) -> None:
    m.padding_mode = "reflect"


def _set_stride(m: nn.Module) -> None:
    m.stride = (2, 1)


def _set_dilation(m: nn.Module) -> None:
    m.dilation = (2, 2)


def _set_padding(m: nn.Module) -> None:
    m.padding = (0, 1)


def _drop_bias(m: nn.Module) -> None:
    m.bias = None


def _set_groups(m: nn.Module) -> None:
    m.groups = 2
    m.weight = nn.Parameter(t(4, 2, 3, 3))


@pytest.mark.parametrize(
    "change", [_set_padding_mode, _set_stride, _set_dilation, _set_padding, _drop_bias, _set_groups], ids=lambda f: f.__name__[1:]
)
def test_conv_changed_after_first_use(change):
    conv = nn.Conv2d(4, 4, 3, padding=1).double()
    x = t(2, 4, 7, 6)
    close(tnderiv.forward(conv, x), conv(x).detach())
    change(conv)
    with torch.no_grad():
        close(tnderiv.forward(conv, x), conv(x))
        g = t(*conv(x).shape)
    out = conv(x.requires_grad_())
    (gx,) = torch.autograd.grad(out, x, g)
    close(tnderiv.vjp(conv, "x", g, x_shape=x.shape).detach(), gx)


@pytest.mark.parametrize(
    "module, x",
    [
        (nn.LayerNorm(5), (3, 5)),
        (nn.GroupNorm(2, 4), (3, 4, 5)),
        (nn.BatchNorm2d(3), (4, 3, 2, 2)),
        (nn.InstanceNorm1d(3, affine=True), (2, 3, 6)),
    ],
    ids=["LayerNorm", "GroupNorm", "BatchNorm2d", "InstanceNorm1d"],
)
def test_norm_eps_and_mode_changed_after_first_use(module, x):
    module = module.double()
    x = t(*x)
    if isinstance(module, nn.BatchNorm2d):
        with torch.no_grad():
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
        module.eval()
    close(tnderiv.forward(module, x).detach(), module(x).detach())
    module.eps = 0.7
    close(tnderiv.forward(module, x).detach(), module(x).detach())
    module.train(not module.training)
    with torch.no_grad():
        expected = module(x)
    close(tnderiv.forward(module, x).detach(), expected)


def test_linear_bias_removed_after_first_use():
    lin = nn.Linear(3, 2).double()
    x = t(4, 3)
    close(tnderiv.forward(lin, x).detach(), lin(x).detach())
    lin.bias = None
    close(tnderiv.forward(lin, x).detach(), lin(x).detach())


# ----- item 4: gradients w.r.t. a module's own parameters -------------------------------------------
MODULES = {
    "conv2d": (lambda: nn.Conv2d(2, 4, 3, padding=1, groups=2), (2, 2, 5, 4)),
    "conv2d-reflect": (lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"), (2, 2, 5, 5)),
    "conv1x1": (lambda: nn.Conv2d(2, 3, 1), (2, 2, 3, 3)),
    "conv1d-stride": (lambda: nn.Conv1d(2, 3, 3, stride=2, dilation=2), (2, 2, 11)),
    "conv-transpose": (lambda: nn.ConvTranspose2d(2, 3, 3, stride=2), (2, 2, 3, 4)),
    "linear-shared": (lambda: nn.Linear(3, 4), (2, 5, 3)),
    "layernorm": (lambda: nn.LayerNorm(4), (3, 4)),
    "batchnorm-train": (lambda: nn.BatchNorm2d(2), (3, 2, 3, 3)),
    "groupnorm": (lambda: nn.GroupNorm(2, 4), (3, 4, 5)),
}


def _module(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    build, shape = MODULES[name]
    module = build().double()
    for p in module.parameters():  # norm layers start at weight 1, bias 0: move them off
        p.data.uniform_(-1, 1)
    return module, t(*shape)


@pytest.mark.parametrize("name", MODULES)
def test_forward_is_differentiable_in_module_parameters(name):
    module, x = _module(name)
    y = tnderiv.forward(module, x)
    expected = module(x)
    v = t(*expected.shape)
    params = list(module.parameters())
    ours = torch.autograd.grad((y * v).sum(), params)
    theirs = torch.autograd.grad((expected * v).sum(), params)
    for a, b in zip(ours, theirs):
        close(a, b)


def test_backward_fills_module_grads():
    conv = nn.Conv2d(2, 3, 3).double()
    tnderiv.forward(conv, t(2, 2, 5, 5)).sum().backward()
    assert conv.weight.grad is not None and conv.bias.grad is not None
    assert conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["conv2d", "conv-transpose", "linear-shared", "layernorm", "groupnorm", "batchnorm-train"])
def test_vjp_x_is_differentiable_in_module_parameters(name):
    """``vjp(module, "x", g)`` reads the weight: second derivatives w.r.t. it match torch's double backward."""
    module, x = _module(name)
    x.requires_grad_(True)
    out = module(x)
    g = t(*out.shape)
    (gx_torch,) = torch.autograd.grad(out, x, g, create_graph=True)
    gx = tnderiv.vjp(module, "x", g, x=x.detach())
    close(gx.detach(), gx_torch.detach())
    u = t(*x.shape)
    params = list(module.parameters())
    ours = torch.autograd.grad((gx * u).sum(), params, allow_unused=True)
    theirs = torch.autograd.grad((gx_torch * u).sum(), params, allow_unused=True)
    for a, b in zip(ours, theirs):
        if b is None:
            assert a is None or a.abs().max() == 0
        else:
            close(a, b)


@pytest.mark.parametrize("name", ["conv2d", "linear-shared", "groupnorm"])
def test_per_sample_grad_is_differentiable_in_inputs(name):
    """Per-sample gradients as a function of x and grad_out (what a second-order method differentiates)."""
    module, x = _module(name)
    out = module(x)
    g = t(*out.shape).requires_grad_(True)
    x = x.requires_grad_(True)
    psg = tnderiv.per_sample_grad(module, x, g)
    weight = psg["weight"]
    # oracle: per-sample gradients by a loop of autograd with create_graph
    rows = []
    for n in range(x.shape[0]):
        xn = x[n : n + 1]
        yn = module(xn)
        (wn,) = torch.autograd.grad((yn * g[n : n + 1]).sum(), module.weight, create_graph=True)
        rows.append(wn)
    expected = torch.stack(rows)
    close(weight.detach(), expected.detach())
    u = t(*weight.shape)
    for a, b in zip(torch.autograd.grad((weight * u).sum(), (x, g)), torch.autograd.grad((expected * u).sum(), (x, g))):
        close(a, b)


def test_no_grad_results_do_not_require_grad():
    conv = nn.Conv2d(2, 3, 3).double()
    with torch.no_grad():
        assert not tnderiv.forward(conv, t(2, 2, 5, 5)).requires_grad
    assert tnderiv.forward(conv, t(2, 2, 5, 5)).requires_grad


# ----- the plan kernels under autograd (gathers, scatters, in-place accumulation, constants) ---------------
def _spec_cases():
    conv_r = tnderiv.Conv(2, 2, 3, dims=1, stride=2, padding=1, padding_mode="reflect")
    down = tnderiv.Conv(2, 3, 2, dims=1, stride=3, bias=False)  # stride > kernel: the down-sampling rewrite
    grouped = tnderiv.Conv(4, 4, 3, dims=1, dilation=2, groups=2, bias=False)
    trans = tnderiv.Conv(2, 3, 3, dims=1, stride=2, transposed=True, output_padding=1, bias=False)
    lin = tnderiv.Linear(3, 2)
    return {
        "forward-reflect-strided": (lambda x, w, b: tnderiv.forward(conv_r, x, w, b), ((2, 2, 7), (2, 2, 3), (2,))),
        "forward-downsample": (lambda x, w: tnderiv.forward(down, x, w), ((2, 2, 9), (3, 2, 2))),
        "forward-transposed": (lambda x, w: tnderiv.forward(trans, x, w), ((2, 2, 4), (2, 3, 3))),
        "vjp_x-strided": (lambda g, w: tnderiv.vjp(conv_r, "x", g, weight=w, x_shape=(2, 2, 7)), ((2, 2, 4), (2, 2, 3))),
        "vjp_weight-grouped": (lambda g, x: tnderiv.vjp(grouped, "weight", g, x=x), ((2, 4, 5), (2, 4, 9))),
        "per_sample_grad-reflect": (lambda x, g: tnderiv.per_sample_grad(conv_r, x, g)["weight"], ((2, 2, 7), (2, 2, 4))),
        "forward-linear-shared": (lambda x, w, b: tnderiv.forward(lin, x, w, b), ((2, 3, 3), (2, 3), (2,))),
        "ggn-diag": (lambda x, s: tnderiv.ggn(lin, x, s, kind="diag"), ((2, 3), (2, 2, 2))),
    }


@pytest.mark.parametrize("name", list(_spec_cases()))
def test_plan_kernels_pass_gradcheck(name):
    """First derivatives of every result w.r.t. every operand, against finite differences (float64)."""
    function, shapes = _spec_cases()[name]
    torch.manual_seed(0)
    inputs = tuple(t(*shape).requires_grad_(True) for shape in shapes)
    assert torch.autograd.gradcheck(function, inputs, eps=1e-6, atol=1e-6)


def test_glued_quantities_follow_a_module_changed_after_first_use():
    """KFAC, statistics and the GGN diagonal run from the call cache; a changed padding mode must plan again."""
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    x, g, s = t(4, 2, 5, 5), t(4, 3, 5, 5), t(2, 4, 3, 5, 5)
    tnderiv.kfac(conv, x, g)
    tnderiv.grad_stats(conv, x, g, ["sum_grad_squared"], params=["weight"])
    tnderiv.ggn(conv, x, s, kind="diag")
    conv.padding_mode = "reflect"
    a = torch.nn.functional.unfold(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"), 3)  # [N, 18, 25]
    rows = a.transpose(1, 2).reshape(-1, 18)
    close(tnderiv.kfac(conv, x, g).A[0], rows.T @ rows / rows.shape[0])

    def psg(cotangent: torch.Tensor) -> torch.Tensor:
        out = []
        for n in range(4):
            (w,) = torch.autograd.grad((conv(x[n : n + 1]) * cotangent[n : n + 1]).sum(), conv.weight)
            out.append(w)
        return torch.stack(out)

    close(tnderiv.grad_stats(conv, x, g, ["sum_grad_squared"], params=["weight"])["sum_grad_squared"]["weight"], (psg(g) ** 2).sum(0))
    close(tnderiv.ggn(conv, x, s, kind="diag"), sum((psg(s[m]) ** 2).sum(0) for m in range(2)))
