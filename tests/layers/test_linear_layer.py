"""Linear with 0, 1 and 2 weight-sharing legs against torch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tnderiv

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=2e-4, atol=2e-4)}


def check_linear(batch: int, shared: tuple[int, ...], cin: int, cout: int, bias: bool, dtype: torch.dtype) -> None:
    tol = TOL[dtype]
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=dtype)

    spec = tnderiv.Linear(cin, cout, bias=bias)
    x, w = rand(batch, *shared, cin), rand(cout, cin)
    b = rand(cout) if bias else None
    y = F.linear(x, w, b)
    g, tx, tw = rand(*y.shape), rand(*x.shape), rand(*w.shape)

    torch.testing.assert_close(tnderiv.forward(spec, x, w, b), y, **tol)
    primals = (x, w) if b is None else (x, w, b)
    leaves = tuple(p.clone().requires_grad_(True) for p in primals)
    grads = torch.autograd.grad(F.linear(*leaves), leaves, g)
    torch.testing.assert_close(tnderiv.vjp(spec, "x", g, weight=w, x_shape=x.shape), grads[0], **tol)
    torch.testing.assert_close(tnderiv.vjp(spec, "x", g, weight=w, x=x), grads[0], **tol)
    torch.testing.assert_close(tnderiv.vjp(spec, "weight", g, x=x), grads[1], **tol)
    if b is not None:
        torch.testing.assert_close(tnderiv.vjp(spec, "bias", g), grads[2], **tol)

    _, jx = torch.func.jvp(lambda x_: F.linear(x_, w, b), (x,), (tx,))
    _, jw = torch.func.jvp(lambda w_: F.linear(x, w_, b), (w,), (tw,))
    torch.testing.assert_close(tnderiv.jvp(spec, "x", tx, weight=w), jx, **tol)
    torch.testing.assert_close(tnderiv.jvp(spec, "weight", tw, x=x), jw, **tol)

    def loss(w_: torch.Tensor, b_: torch.Tensor | None, xi: torch.Tensor, gi: torch.Tensor) -> torch.Tensor:
        return (F.linear(xi, w_, b_) * gi).sum()

    argnums = 0 if b is None else (0, 1)
    want = torch.func.vmap(torch.func.grad(loss, argnums=argnums), in_dims=(None, None, 0, 0))(w, b, x, g)
    want = {"weight": want} if b is None else {"weight": want[0], "bias": want[1]}
    psg = tnderiv.per_sample_grad(spec, x, g)
    assert set(psg) == set(want)
    for name in want:
        assert psg[name].shape == (batch, *primals[1 + list(want).index(name)].shape)
        torch.testing.assert_close(psg[name], want[name], **tol)


@pytest.mark.parametrize("shared", [(), (3,), (2, 3)], ids=["no-sharing", "one-leg", "two-legs"])
@pytest.mark.parametrize("bias", [True, False])
def test_linear(shared: tuple[int, ...], bias: bool) -> None:
    check_linear(3, shared, 4, 5, bias, torch.float64)


@settings(max_examples=15)
@given(
    batch=st.integers(1, 4),
    shared=st.lists(st.integers(1, 4), max_size=2).map(tuple),
    cin=st.integers(1, 5),
    cout=st.integers(1, 5),
    bias=st.booleans(),
    dtype=st.sampled_from([torch.float64, torch.float32]),
)
def test_linear_sweep(batch: int, shared: tuple[int, ...], cin: int, cout: int, bias: bool, dtype: torch.dtype) -> None:
    check_linear(batch, shared, cin, cout, bias, dtype)


@pytest.mark.parametrize("shared", [(), (3,), (2, 3)])
def test_linear_module(shared: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    module = nn.Linear(4, 3).double()
    spec = tnderiv.Linear.from_module(module)
    assert spec == tnderiv.Linear(4, 3, bias=True)
    assert tnderiv.Linear.from_module(nn.Linear(4, 3, bias=False)).bias is False
    x = torch.randn(2, *shared, 4, dtype=torch.float64, requires_grad=True)
    y = module(x)
    g = torch.randn_like(y)
    y.backward(g)
    tol = dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(tnderiv.forward(module, x.detach()), y.detach(), **tol)
    torch.testing.assert_close(tnderiv.vjp(module, "x", g, x_shape=x.shape), x.grad, **tol)
    torch.testing.assert_close(tnderiv.vjp(module, "weight", g, x=x.detach()), module.weight.grad, **tol)
    torch.testing.assert_close(tnderiv.vjp(module, "bias", g), module.bias.grad, **tol)
    psg = tnderiv.per_sample_grad(module, x.detach(), g)
    torch.testing.assert_close(psg["weight"].sum(0), module.weight.grad, **tol)
    torch.testing.assert_close(psg["bias"].sum(0), module.bias.grad, **tol)
