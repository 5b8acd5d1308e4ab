"""The public API: what it exports, result layouts, diagrams, interop with autograd, devices and backends."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

import tnderiv
from tnderiv import Diagram, DiagramSum

SPEC = tnderiv.Conv(4, 6, (3, 2), stride=(2, 1), padding=((1, 0), (0, 1)), groups=2)
TOL = dict(rtol=1e-10, atol=1e-10)


def oracle(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return F.conv2d(F.pad(x, (0, 1, 1, 0)), w, b, stride=(2, 1), groups=2)


def operands(dtype: torch.dtype = torch.float64, device: str = "cpu") -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 5, 4, generator=gen, dtype=dtype)
    w = torch.randn(6, 2, 3, 2, generator=gen, dtype=dtype)
    b = torch.randn(6, generator=gen, dtype=dtype)
    g = torch.randn(oracle(x, w, b).shape, generator=gen, dtype=dtype)
    return tuple(t.to(device) for t in (x, w, b, g))


def test_public_names() -> None:
    for name in ("forward", "vjp", "jvp", "per_sample_grad", "diagram", "plan", "evaluate", "Conv", "Linear"):
        assert name in tnderiv.__all__ and callable(getattr(tnderiv, name))
    assert isinstance(tnderiv.PLAN_CACHE.info().maxsize, int)


def test_results_have_user_layouts_and_dtype() -> None:
    for dtype in (torch.float64, torch.float32):
        x, w, b, g = operands(dtype)
        tol = TOL if dtype is torch.float64 else dict(rtol=1e-4, atol=1e-4)
        y = tnderiv.forward(SPEC, x, w, b)
        assert y.shape == oracle(x, w, b).shape and y.dtype == dtype
        torch.testing.assert_close(y, oracle(x, w, b), **tol)
        assert tnderiv.vjp(SPEC, "x", g, weight=w, x_shape=x.shape).shape == x.shape
        assert tnderiv.vjp(SPEC, "x", g, weight=w, x=x).shape == x.shape
        assert tnderiv.vjp(SPEC, "weight", g, x=x).shape == w.shape
        assert tnderiv.vjp(SPEC, "bias", g).shape == b.shape
        psg = tnderiv.per_sample_grad(SPEC, x, g)
        assert psg["weight"].shape == (2, *w.shape) and psg["bias"].shape == (2, *b.shape)
        assert psg["weight"].dtype == dtype
        only_bias = tnderiv.per_sample_grad(SPEC, x, g, params=["bias"])
        assert set(only_bias) == {"bias"}


def test_evaluate_by_name_matches_torch() -> None:
    x, w, b, g = operands()
    torch.testing.assert_close(tnderiv.evaluate(SPEC, "forward", x=x, weight=w, bias=b), oracle(x, w, b), **TOL)
    xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    gx, gw = torch.autograd.grad(oracle(xr, wr, b), (xr, wr), g)
    torch.testing.assert_close(tnderiv.vjp(SPEC, "x", g, weight=w, x=x), gx, **TOL)
    torch.testing.assert_close(tnderiv.evaluate(SPEC, "vjp_weight", grad_out=g, x=x), gw, **TOL)
    psg = tnderiv.evaluate(SPEC, "per_sample_grad", x=x, grad_out=g)  # default: the weight
    torch.testing.assert_close(psg.sum(0), gw, **TOL)


def test_diagrams_are_values_and_print_with_leg_names() -> None:
    fwd = tnderiv.diagram(SPEC, "forward")
    assert isinstance(fwd, DiagramSum) and len(fwd.terms) == 2  # conv + bias
    assert tnderiv.diagram(SPEC, "forward") == fwd and hash(tnderiv.diagram(SPEC, "forward")) == hash(fwd)
    vjp_w = tnderiv.diagram(SPEC, "vjp_weight")
    assert isinstance(vjp_w, Diagram)
    assert set(vjp_w.operand_names) == {"x", "grad_out"}
    text = str(vjp_w)
    for leg in ("n", "c_in", "c_out", "k0", "k1"):
        assert leg in text
    psg = tnderiv.diagram(SPEC, "per_sample_grad")
    assert psg.open_legs[0] == "n"
    assert "n" not in vjp_w.open_legs
    assert tnderiv.diagram(SPEC, "vjp_bias") != vjp_w


@pytest.mark.parametrize(
    "quantity", ["forward", "vjp_x", "vjp_weight", "vjp_bias", "jvp_weight", "per_sample_grad_weight"]
)
def test_unsimplified_and_simplified_diagrams_agree_with_torch(quantity: str) -> None:
    """The raw graph-surgery result, planned as is, already gives torch's numbers (and so does the simplified one)."""
    x, w, b, g = operands()
    values = {"x": x, "weight": w, "bias": b, "grad_out": g, "tangent": w}
    xr, wr, br = (t.clone().requires_grad_(True) for t in (x, w, b))
    gx, gw, gb = torch.autograd.grad(oracle(xr, wr, br), (xr, wr, br), g)
    expected = {
        "forward": oracle(x, w, b),
        "vjp_x": gx,
        "vjp_weight": gw,
        "vjp_bias": gb,
        "jvp_weight": F.conv2d(F.pad(x, (0, 1, 1, 0)), w, None, stride=(2, 1), groups=2),
        "per_sample_grad_weight": torch.stack(
            [torch.autograd.grad(oracle(x[i : i + 1], wr, br), wr, g[i : i + 1])[0] for i in range(2)]
        ),
    }[quantity]
    for simplify in (False, True):
        d = tnderiv.diagram(SPEC, quantity, simplify=simplify)
        needed = {name: values[name] for name in d.operand_names}
        shapes = {name: tuple(v.shape) for name, v in needed.items()}
        if quantity == "vjp_x":
            shapes["output"] = tuple(x.shape)
        p = tnderiv.plan(d, shapes, dtype=torch.float64)
        torch.testing.assert_close(p(**needed), expected, **TOL, msg=lambda m, s=simplify: f"simplify={s}: {m}")


def test_results_flow_through_torch_autograd() -> None:
    """tnderiv's output is an ordinary differentiable torch expression of its inputs."""
    x, w, b, g = operands()
    xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    y = tnderiv.forward(SPEC, xr, wr, b)
    got = torch.autograd.grad(y, (xr, wr), g)
    expected = torch.autograd.grad(oracle(xr, wr, b), (xr, wr), g)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, **TOL)


def test_non_contiguous_inputs() -> None:
    x, w, b, g = operands()
    x_nc = x.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    assert not x_nc.is_contiguous()
    torch.testing.assert_close(tnderiv.forward(SPEC, x_nc, w, b), oracle(x, w, b), **TOL)
    x_cl = x.to(memory_format=torch.channels_last)
    torch.testing.assert_close(tnderiv.vjp(SPEC, "weight", g, x=x_cl), tnderiv.vjp(SPEC, "weight", g, x=x), **TOL)
    g_nc = g.transpose(0, 1).contiguous().transpose(0, 1)
    wr = w.clone().requires_grad_(True)
    (gw,) = torch.autograd.grad(oracle(x, wr, b), wr, g)
    torch.testing.assert_close(tnderiv.vjp(SPEC, "weight", g_nc, x=x_nc), gw, **TOL)


# ----- devices and backends ----------------------------------------------------------------------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_forward_vjp_per_sample(dtype: torch.dtype) -> None:
    x, w, b, g = operands(dtype, "cuda")
    tol = TOL if dtype is torch.float64 else dict(rtol=1e-3, atol=1e-3)
    y = tnderiv.forward(SPEC, x, w, b)
    assert y.device.type == "cuda"
    torch.testing.assert_close(y, oracle(x, w, b), **tol)
    xr, wr, br = (t.clone().requires_grad_(True) for t in (x, w, b))
    gx, gw, gb = torch.autograd.grad(oracle(xr, wr, br), (xr, wr, br), g)
    torch.testing.assert_close(tnderiv.vjp(SPEC, "x", g, weight=w, x_shape=x.shape), gx, **tol)
    torch.testing.assert_close(tnderiv.vjp(SPEC, "weight", g, x=x), gw, **tol)
    torch.testing.assert_close(tnderiv.vjp(SPEC, "bias", g), gb, **tol)
    psg = tnderiv.per_sample_grad(SPEC, x, g)
    torch.testing.assert_close(psg["weight"].sum(0), gw, **tol)
    assert psg["weight"].device.type == "cuda"
    # a CUDA plan is cached apart from the CPU plan of the same shapes
    cpu = [t.cpu() for t in (x, w, b)]
    torch.testing.assert_close(tnderiv.forward(SPEC, *cpu).cuda(), y, **tol)


@needs_cuda
@pytest.mark.skipif(importlib.util.find_spec("cupy") is None, reason="cupy is not installed (optional extra)")
def test_cupy_arrays() -> None:
    import cupy

    x, w, b, g = operands(torch.float64)
    cx, cw, cb, cg = (cupy.asarray(t.numpy()) for t in (x, w, b, g))
    y = tnderiv.forward(SPEC, cx, cw, cb)
    assert isinstance(y, cupy.ndarray)
    torch.testing.assert_close(torch.from_numpy(cupy.asnumpy(y)), oracle(x, w, b), **TOL)
    wr = w.clone().requires_grad_(True)
    (gw,) = torch.autograd.grad(oracle(x, wr, b), wr, g)
    got = tnderiv.vjp(SPEC, "weight", cg, x=cx)
    torch.testing.assert_close(torch.from_numpy(cupy.asnumpy(got)), gw, **TOL)
    got_b = tnderiv.vjp(SPEC, "bias", cg)
    torch.testing.assert_close(torch.from_numpy(cupy.asnumpy(got_b)), g.sum(dim=(0, 2, 3)), **TOL)
    with pytest.raises(TypeError, match="weight.*cupy|cupy.*weight|torch"):
        tnderiv.forward(SPEC, cx, w, cb)


def test_jvp_of_the_bias_broadcasts_the_tangent() -> None:
    x, w, b, _ = operands()
    tangent = torch.randn_like(b)
    _, expected = torch.func.jvp(lambda b_: oracle(x, w, b_), (b,), (tangent,))
    torch.testing.assert_close(tnderiv.jvp(SPEC, "bias", tangent, x=x, weight=w), expected, **TOL)
