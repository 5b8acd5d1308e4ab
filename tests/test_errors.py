"""Bad input: early ValueError/TypeError naming the argument, its value and what was expected."""

from __future__ import annotations

import re

import opt_einsum as oe
import pytest
import torch
from torch import nn

import tnderiv

F64 = torch.float64
SPEC = tnderiv.Conv(4, 6, 3, groups=2, bias=False)


def t(*shape: int, dtype: torch.dtype = F64, device: str = "cpu") -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype, device=device)


X, W, G = t(2, 4, 5, 5), t(6, 2, 3, 3), t(2, 6, 3, 3)


@pytest.fixture(autouse=True)
def no_planning_before_the_error(monkeypatch: pytest.MonkeyPatch):
    """Every error here comes before any contraction path is searched."""
    calls = [0]
    real = oe.contract_path

    def counting(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(oe, "contract_path", counting)
    yield
    assert calls[0] == 0, "a path was searched before the bad input was reported"


def raises(kind: type[Exception], *words: str):
    """pytest.raises requiring every word (argument names, values) in the message."""
    return pytest.raises(kind, match="(?s)" + "".join(f"(?=.*{re.escape(w)})" for w in words))


# ----- shapes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: tnderiv.forward(SPEC, t(2, 5, 5, 5), W), ("x", "(2, 5, 5, 5)", "axis 1", "expected 4")),
        (lambda: tnderiv.forward(SPEC, X, t(6, 2, 3, 2)), ("weight", "(6, 2, 3, 2)", "k1", "expected 3")),
        (lambda: tnderiv.forward(SPEC, X, t(6, 4, 3, 3)), ("weight", "c_in", "is 4", "expected 2")),
        (lambda: tnderiv.forward(SPEC, t(2, 4, 5), W), ("x", "(2, 4, 5)", "3 axes", "expected 4 axes")),
        (lambda: tnderiv.vjp(SPEC, "weight", t(3, 6, 3, 3), x=X), ("grad_out", "(3, 6, 3, 3)", "axis 0", "expected 2")),
        (lambda: tnderiv.vjp(SPEC, "weight", t(2, 6, 4, 3), x=X), ("grad_out", "o0", "is 4", "expected 3")),
        (lambda: tnderiv.vjp(SPEC, "x", t(2, 5, 3, 3), weight=W, x_shape=X.shape), ("grad_out", "is 5", "expected 6")),
        (lambda: tnderiv.vjp(SPEC, "x", G, weight=W, x_shape=(2, 4, 5)), ("(2, 4, 5)", "x_shape", "expected 4 axes")),
        (lambda: tnderiv.vjp(SPEC, "x", G, weight=W, x_shape=(2, 4, 6, 5)), ("grad_out", "I0=6", "expected 4")),
        (lambda: tnderiv.jvp(SPEC, "x", t(2, 3, 5, 5), weight=W), ("tangent", "(2, 3, 5, 5)", "expected 4")),
        (lambda: tnderiv.per_sample_grad(SPEC, X, t(2, 6, 3, 4)), ("grad_out", "(2, 6, 3, 4)", "expected 3")),
        (lambda: tnderiv.forward(SPEC, t(2, 4, 0, 5), W), ("spatial dimension 0", "input size 0")),
        (lambda: tnderiv.forward(tnderiv.Linear(3, 4, bias=False), t(2, 5), t(4, 3)), ("x", "(2, 5)", "expected 3")),
        (lambda: tnderiv.forward(tnderiv.Linear(3, 4, bias=False), t(3), t(4, 3)), ("x", "(3,)", "at least 2 axes")),
        (
            lambda: tnderiv.vjp(tnderiv.Linear(3, 4, bias=False), "weight", t(2, 6, 4), x=t(2, 5, 3)),
            ("grad_out", "(2, 6, 4)", "s0", "expected 5"),
        ),
        (lambda: tnderiv.forward(tnderiv.Linear(3, 4), t(2, 3), t(4, 3), t(5)), ("bias", "(5,)", "expected 4")),
    ],
    ids=[
        "x-channels",
        "weight-kernel",
        "weight-c_in",
        "x-rank",
        "grad_out-batch",
        "grad_out-spatial",
        "grad_out-channels",
        "x_shape-rank",
        "x_shape-spatial",
        "tangent-channels",
        "per-sample-grad_out",
        "empty-spatial",
        "linear-features",
        "linear-rank",
        "linear-shared",
        "bias-shape",
    ],
)
def test_shape_mismatch(call, words) -> None:
    with raises(ValueError, *words):
        call()


def test_dtype_mismatch() -> None:
    with raises(TypeError, "weight", "float32", "float64"):
        tnderiv.forward(SPEC, X, W.float())
    with raises(TypeError, "grad_out", "float32"):
        tnderiv.vjp(SPEC, "weight", G.float(), x=X)
    with raises(TypeError, "x", "int64", "floating"):
        tnderiv.forward(SPEC, X.long(), W.long())


def test_device_mismatch() -> None:
    # the meta device stands in for a second device on a machine without a GPU
    with raises(ValueError, "weight", "meta", "cpu"):
        tnderiv.forward(SPEC, X, W.to("meta"))
    with raises(ValueError, "grad_out", "meta", "cpu"):
        tnderiv.vjp(SPEC, "weight", G.to("meta"), x=X)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_cpu_mismatch() -> None:
    with raises(ValueError, "weight", "cuda", "cpu"):
        tnderiv.forward(SPEC, X, W.cuda())


def test_non_tensor_inputs() -> None:
    with raises(TypeError, "x", "ndarray"):
        tnderiv.forward(SPEC, X.numpy(), W)
    with raises(TypeError, "x", "list"):
        tnderiv.forward(SPEC, [[1.0]], W)
    with raises(TypeError, "grad_out", "ndarray"):
        tnderiv.vjp(SPEC, "weight", G.numpy(), x=X)
    with raises(TypeError, "weight", "float"):
        tnderiv.forward(SPEC, X, 1.0)
    with raises(ValueError, "x="):
        tnderiv.forward(SPEC, None, W)
    with raises(ValueError, "weight="):
        tnderiv.forward(SPEC, X)
    with raises(ValueError, "vjp_weight", "x="):
        tnderiv.vjp(SPEC, "weight", G)


# ----- hyperparameters -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(in_channels=3, out_channels=4, kernel_size=3, groups=2), ("in_channels=3", "groups=2")),
        (dict(in_channels=4, out_channels=3, kernel_size=3, groups=2), ("out_channels=3", "groups=2")),
        (dict(in_channels=1, out_channels=1, kernel_size=3, stride=2, padding="same"), ("'same'", "stride=(2, 2)")),
        (
            dict(in_channels=1, out_channels=1, kernel_size=3, stride=(1, 2), padding="same"),
            ("'same'", "stride=(1, 2)"),
        ),
        (
            dict(in_channels=1, out_channels=1, kernel_size=3, stride=2, transposed=True, output_padding=2),
            ("output_padding=(2, 2)", "stride=(2, 2)", "dilation=(1, 1)"),
        ),
        (
            dict(in_channels=1, out_channels=1, kernel_size=3, dilation=2, transposed=True, output_padding=(0, 2)),
            ("output_padding=(0, 2)", "dilation=(2, 2)"),
        ),
        (dict(in_channels=1, out_channels=1, kernel_size=3, output_padding=1), ("output_padding", "transposed")),
        (
            dict(in_channels=1, out_channels=1, kernel_size=3, padding_mode="mirror"),
            ("padding_mode='mirror'", "'reflect'", "'circular'"),
        ),
        (
            dict(in_channels=1, out_channels=1, kernel_size=3, transposed=True, padding_mode="reflect"),
            ("padding_mode='reflect'", "transposed"),
        ),
        (
            dict(in_channels=1, out_channels=1, kernel_size=3, transposed=True, padding="same"),
            ("padding='same'", "transposed"),
        ),
        (dict(in_channels=1, out_channels=1, kernel_size=3, padding="full"), ("padding='full'", "'same'", "'valid'")),
        (dict(in_channels=1, out_channels=1, kernel_size=3, padding=-1), ("padding=-1", "non-negative")),
        (dict(in_channels=1, out_channels=1, kernel_size=3, padding=(1, 1, 1)), ("padding=(1, 1, 1)", "2 ints")),
        (
            dict(in_channels=1, out_channels=1, kernel_size=3, padding=((1, 1, 1), 1)),
            ("padding=((1, 1, 1), 1)", "pair"),
        ),
        (dict(in_channels=1, out_channels=1, kernel_size=0), ("kernel_size=0", "≥ 1")),
        (dict(in_channels=1, out_channels=1, kernel_size=(3, 3, 3)), ("kernel_size=(3, 3, 3)", "2 ints")),
        (dict(in_channels=1, out_channels=1, kernel_size=3, stride=0), ("stride=0", "≥ 1")),
        (dict(in_channels=1, out_channels=1, kernel_size=3, dilation=(1, 0)), ("dilation=(1, 0)", "≥ 1")),
        (dict(in_channels=1, out_channels=1, kernel_size=3, dims=0), ("dims=0",)),
        (dict(in_channels=True, out_channels=1, kernel_size=3), ("in_channels=True", "positive int")),
        (dict(in_channels=2.0, out_channels=1, kernel_size=3), ("in_channels=2.0", "positive int")),
        (dict(in_channels=1, out_channels=0, kernel_size=3), ("out_channels=0", "positive int")),
        (dict(in_channels=1, out_channels=1, kernel_size=3.0), ("kernel_size=3.0",)),
    ],
    ids=lambda v: str(v)[:60] if isinstance(v, dict) else "",
)
def test_bad_hyperparameters(kwargs, words) -> None:
    with raises(ValueError, *words):
        tnderiv.Conv(**kwargs)


def test_linear_hyperparameters() -> None:
    with raises(ValueError, "in_features=0"):
        tnderiv.Linear(0, 3)
    with raises(ValueError, "out_features=2.5"):
        tnderiv.Linear(3, 2.5)


# ----- sizes the layer cannot take --------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec, x_shape, words",
    [
        (tnderiv.Conv(1, 1, 5, padding=1, bias=False), (1, 1, 2, 8), ("input size 2", "padding (1, 1)", "5")),
        (tnderiv.Conv(1, 1, 3, dilation=3, bias=False), (1, 1, 6, 8), ("input size 6", "7")),
        (
            tnderiv.Conv(1, 1, 3, padding=2, padding_mode="reflect", bias=False),
            (1, 1, 2, 5),
            ("reflect", "(2, 2)", "input size 2"),
        ),
        (
            tnderiv.Conv(1, 1, 3, padding=((0, 3), 0), padding_mode="reflect", bias=False),
            (1, 1, 3, 5),
            ("reflect", "(0, 3)", "input size 3"),
        ),
        (
            tnderiv.Conv(1, 1, 3, padding=3, padding_mode="circular", bias=False),
            (1, 1, 2, 5),
            ("circular", "(3, 3)", "input size 2"),
        ),
    ],
    ids=["kernel-larger-than-padded-input", "dilated-kernel", "reflect-pad-equals", "reflect-asymmetric", "circular"],
)
def test_impossible_sizes(spec, x_shape, words) -> None:
    x = t(*x_shape)
    w = t(1, 1, *spec.kernel_size)
    with raises(ValueError, *words):
        tnderiv.forward(spec, x, w)
    g = t(1, 1, 1, 1)
    with raises(ValueError, *words):
        tnderiv.vjp(spec, "x", g, weight=w, x_shape=x_shape)


def test_transposed_impossible_output_size() -> None:
    spec = tnderiv.Conv(2, 3, 3, stride=2, transposed=True)  # outputs 2·I + 1: always odd
    with raises(ValueError, "I0", "6"):
        tnderiv.vjp(spec, "bias", t(2, 3, 6, 7))


# ----- names -----------------------------------------------------------------------------------------
def test_unknown_quantity_and_operand_names() -> None:
    with raises(ValueError, "'hessian'", "'vjp'", "'per_sample_grad'", "'forward'"):
        tnderiv.diagram(SPEC, "hessian")
    with raises(ValueError, "'foo'", "vjp_foo", "'x'", "'weight'"):
        tnderiv.evaluate(SPEC, "vjp_foo", grad_out=G)
    with raises(ValueError, "'foo'", "'x'", "'weight'"):
        tnderiv.vjp(SPEC, "foo", G, x=X)
    with raises(ValueError, "'foo'", "'x'", "'weight'"):
        tnderiv.jvp(SPEC, "foo", X, weight=W)
    with raises(TypeError, "wrt", "int"):
        tnderiv.vjp(SPEC, 3, G, x=X)
    with raises(TypeError, "quantity", "int"):
        tnderiv.diagram(SPEC, 5)
    with raises(ValueError, "'gamma'", "'weight'"):
        tnderiv.per_sample_grad(SPEC, X, G, params=["gamma"])
    with raises(ValueError, "'bias'", "'weight'"):
        tnderiv.per_sample_grad(SPEC, X, G, params=["bias"])
    with raises(ValueError, "'x'", "per_sample_grad_x", "'weight'"):
        tnderiv.diagram(SPEC, "per_sample_grad_x")
    with raises(ValueError, "quantity=", "vjp_weight"):
        tnderiv.plan(SPEC, {"x": X.shape})


def test_bias_given_to_a_layer_without_bias() -> None:
    with raises(ValueError, "bias=", "no bias", "'weight'"):
        tnderiv.forward(SPEC, X, W, t(6))


def test_unsupported_module_names_its_type() -> None:
    lstm = nn.LSTM(3, 4)
    for call in (
        lambda: tnderiv.forward(lstm, t(2, 3)),
        lambda: tnderiv.vjp(lstm, "weight", t(2, 4), x=t(2, 3)),
        lambda: tnderiv.per_sample_grad(lstm, t(2, 3), t(2, 4)),
        lambda: tnderiv.diagram(lstm, "forward"),
        lambda: tnderiv.Conv.from_module(lstm),
    ):
        with raises(TypeError, "LSTM", "Conv2d", "Linear"):
            call()
    with raises(TypeError, "Linear.from_module", "Conv2d"):
        tnderiv.Linear.from_module(nn.Conv2d(1, 1, 1))
    with raises(TypeError, "Conv.from_module", "Linear"):
        tnderiv.Conv.from_module(nn.Linear(1, 1))
    with raises(TypeError, "str"):
        tnderiv.forward("conv", X, W)


def test_transposed_padding_larger_than_its_output() -> None:
    spec = tnderiv.Conv(1, 1, 1, padding=1, transposed=True, bias=False)
    with raises(ValueError, "transposed", "input size 1", "padding (1, 1)", "-1"):
        tnderiv.forward(spec, t(1, 1, 1, 3), t(1, 1, 1, 1))
