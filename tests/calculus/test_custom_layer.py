"""A layer defined only by its diagram gets every quantity without further code (checked against torch)."""

from __future__ import annotations

import pytest
import torch

import tnderiv
from tnderiv.ir import Diagram, DiagramSum, ones, operand

N, I_, J_, O_ = 3, 4, 5, 2  # batch, x1 features, x2 features, outputs
TOL = dict(rtol=1e-10, atol=1e-10)


def bilinear(with_bias: bool) -> tnderiv.DiagramLayer:
    """``y[n, o] = Σ x1[n, i] weight[o, i, j] x2[n, j] (+ bias[o])``."""
    sizes = {"n": "N", "o": "O", "i": "I", "j": "J"}
    main = Diagram(
        (operand("x1", "n", "i"), operand("weight", "o", "i", "j"), operand("x2", "n", "j")), ("n", "o"), sizes
    )
    if not with_bias:
        return tnderiv.DiagramLayer(main, inputs=("x1", "x2"), params=("weight",))
    bias = Diagram((operand("bias", "o"), ones("n")), ("n", "o"), sizes)
    return tnderiv.DiagramLayer(DiagramSum((main, bias)), inputs=("x1", "x2"), params=("weight", "bias"))


def torch_bilinear(x1: torch.Tensor, x2: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    y = torch.einsum("ni,oij,nj->no", x1, w, x2)
    return y if b is None else y + b


def operands(with_bias: bool) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    t = {
        "x1": torch.randn(N, I_, generator=gen, dtype=torch.float64),
        "x2": torch.randn(N, J_, generator=gen, dtype=torch.float64),
        "weight": torch.randn(O_, I_, J_, generator=gen, dtype=torch.float64),
    }
    if with_bias:
        t["bias"] = torch.randn(O_, generator=gen, dtype=torch.float64)
    return t


def call(t: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch_bilinear(t["x1"], t["x2"], t["weight"], t.get("bias"))


def autograd_vjps(t: dict[str, torch.Tensor], g: torch.Tensor) -> dict[str, torch.Tensor]:
    leaves = {k: v.clone().requires_grad_(True) for k, v in t.items()}
    return dict(zip(leaves, torch.autograd.grad(call(leaves), list(leaves.values()), g)))


@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
def test_bilinear_every_quantity(with_bias: bool) -> None:
    layer = bilinear(with_bias)
    t = operands(with_bias)
    y = call(t)
    torch.testing.assert_close(tnderiv.evaluate(layer, "forward", **t), y, **TOL)
    torch.testing.assert_close(
        tnderiv.forward(layer, None, t["weight"], t.get("bias"), x1=t["x1"], x2=t["x2"]), y, **TOL
    )

    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    grads = autograd_vjps(t, g)
    for wrt in t:
        others = {k: v for k, v in t.items() if k != wrt}
        got = tnderiv.evaluate(layer, f"vjp_{wrt}", grad_out=g, **others)
        torch.testing.assert_close(got, grads[wrt], **TOL, msg=lambda m, w=wrt: f"evaluate vjp_{w}: {m}")
        # passing wrt's own value too only tells its shape
        got = tnderiv.vjp(layer, wrt, g, **t)
        torch.testing.assert_close(got, grads[wrt], **TOL, msg=lambda m, w=wrt: f"vjp {w}: {m}")

    for wrt in ("x1", "x2", "weight"):
        tangent = torch.randn_like(t[wrt])

        def moved(v: torch.Tensor, w: str = wrt) -> torch.Tensor:
            return call({**t, w: v})

        _, expected = torch.func.jvp(moved, (t[wrt],), (tangent,))
        others = {k: v for k, v in t.items() if k != wrt}
        torch.testing.assert_close(tnderiv.jvp(layer, wrt, tangent, **others), expected, **TOL)
        torch.testing.assert_close(tnderiv.evaluate(layer, f"jvp_{wrt}", tangent=tangent, **others), expected, **TOL)

    def loss(
        w: torch.Tensor, bias: torch.Tensor | None, x1: torch.Tensor, x2: torch.Tensor, gi: torch.Tensor
    ) -> torch.Tensor:
        return (torch_bilinear(x1[None], x2[None], w, bias) * gi[None]).sum()

    argnums = (0, 1) if with_bias else 0
    per_sample = torch.func.vmap(torch.func.grad(loss, argnums=argnums), in_dims=(None, None, 0, 0, 0))
    found = per_sample(t["weight"], t.get("bias"), t["x1"], t["x2"], g)
    want = {"weight": found[0], "bias": found[1]} if with_bias else {"weight": found}
    psg = tnderiv.per_sample_grad(layer, None, g, x1=t["x1"], x2=t["x2"], weight=t["weight"])
    assert set(psg) == set(want)
    for name in want:
        torch.testing.assert_close(psg[name], want[name], **TOL)
        single = tnderiv.evaluate(layer, f"per_sample_grad_{name}", grad_out=g, x1=t["x1"], x2=t["x2"])
        torch.testing.assert_close(single, want[name], **TOL)


def test_repeated_operand_uses_the_product_rule() -> None:
    """``y[n, o] = Σ x[n, i] weight[o, i, j] x[n, j]``: x occurs twice, so its VJP and JVP are sums of two terms."""
    sizes = {"n": "N", "o": "O", "i": "I", "j": "I"}
    quad = Diagram(
        (operand("x", "n", "i"), operand("weight", "o", "i", "j"), operand("x", "n", "j")), ("n", "o"), sizes
    )
    layer = tnderiv.DiagramLayer(quad, inputs=("x",), params=("weight",))
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(N, I_, generator=gen, dtype=torch.float64)
    w = torch.randn(O_, I_, I_, generator=gen, dtype=torch.float64)

    def f(x_: torch.Tensor, w_: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ni,oij,nj->no", x_, w_, x_)

    y = f(x, w)
    torch.testing.assert_close(tnderiv.evaluate(layer, "forward", x=x, weight=w), y, **TOL)
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    gx, gw = torch.func.vjp(f, x, w)[1](g)
    torch.testing.assert_close(tnderiv.evaluate(layer, "vjp_x", grad_out=g, x=x, weight=w), gx, **TOL)
    torch.testing.assert_close(tnderiv.vjp(layer, "x", g, x=x, weight=w), gx, **TOL)
    torch.testing.assert_close(tnderiv.vjp(layer, "weight", g, x=x), gw, **TOL)
    tangent = torch.randn_like(x)
    _, expected = torch.func.jvp(lambda x_: f(x_, w), (x,), (tangent,))
    torch.testing.assert_close(tnderiv.jvp(layer, "x", tangent, x=x, weight=w), expected, **TOL)


def test_repeated_call_derives_once() -> None:
    """A diagram layer's quantities are derived (and simplified) once, like a Conv's, not on every call."""
    from tnderiv.calculus.quantities import derive

    layer = bilinear(with_bias=False)
    t = operands(with_bias=False)
    g = torch.ones(N, O_, dtype=torch.float64)
    tnderiv.vjp(layer, "weight", g, x1=t["x1"], x2=t["x2"])
    misses = derive.cache_info().misses
    tnderiv.vjp(layer, "weight", g, x1=t["x1"], x2=t["x2"])
    assert derive.cache_info().misses == misses
