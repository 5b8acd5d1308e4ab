"""Conv against torch: forward, VJPs, JVPs and per-sample gradients over every hyperparameter."""

from __future__ import annotations

import pytest
import torch
from cases.conv_cases import CONV_CASES, conv_configs
from cases.torch_oracles import ConvConfig, conv_oracle, output_grads, per_sample_grads
from hypothesis import given, settings

import tnderiv

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=2e-4, atol=2e-4)}


def tensors(cfg: ConvConfig, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=dtype)

    out = {"x": rand(*cfg.x_shape), "weight": rand(*cfg.weight_shape)}
    out["bias"] = rand(cfg.out_channels) if cfg.bias else None
    return out


def check_conv(cfg: ConvConfig, dtype: torch.dtype) -> None:
    """Every core quantity of ``cfg`` against torch."""
    tol = TOL[dtype]
    spec = tnderiv.Conv(cfg.in_channels, cfg.out_channels, cfg.kernel_size, **cfg.spec_kwargs())
    t = tensors(cfg, dtype)
    x, w, b = t["x"], t["weight"], t["bias"]
    expected = conv_oracle(cfg, x, w, b)
    y = tnderiv.forward(spec, x, w, b)
    assert y.shape == expected.shape, cfg
    assert y.dtype == dtype
    torch.testing.assert_close(y, expected, **tol, msg=lambda m: f"forward of {cfg}: {m}")

    gen = torch.Generator().manual_seed(1)
    g = torch.randn(expected.shape, generator=gen, dtype=dtype)
    tx = torch.randn(x.shape, generator=gen, dtype=dtype)
    tw = torch.randn(w.shape, generator=gen, dtype=dtype)

    if b is None:
        gx, gw = output_grads(lambda x_, w_: conv_oracle(cfg, x_, w_, None), (x, w), g)
    else:
        gx, gw, gb = output_grads(lambda x_, w_, b_: conv_oracle(cfg, x_, w_, b_), (x, w, b), g)
        torch.testing.assert_close(tnderiv.vjp(spec, "bias", g), gb, **tol, msg=lambda m: f"vjp_bias of {cfg}: {m}")
    torch.testing.assert_close(
        tnderiv.vjp(spec, "x", g, weight=w, x_shape=x.shape), gx, **tol, msg=lambda m: f"vjp_x of {cfg}: {m}"
    )
    torch.testing.assert_close(
        tnderiv.vjp(spec, "weight", g, x=x), gw, **tol, msg=lambda m: f"vjp_weight of {cfg}: {m}"
    )

    _, jx = torch.func.jvp(lambda x_: conv_oracle(cfg, x_, w, b), (x,), (tx,))
    _, jw = torch.func.jvp(lambda w_: conv_oracle(cfg, x, w_, b), (w,), (tw,))
    torch.testing.assert_close(tnderiv.jvp(spec, "x", tx, weight=w), jx, **tol, msg=lambda m: f"jvp_x of {cfg}: {m}")
    torch.testing.assert_close(
        tnderiv.jvp(spec, "weight", tw, x=x), jw, **tol, msg=lambda m: f"jvp_weight of {cfg}: {m}"
    )

    psg = tnderiv.per_sample_grad(spec, x, g)
    want = per_sample_grads(cfg, x, w, b, g)
    assert set(psg) == set(want), (set(psg), cfg)
    for name in want:
        torch.testing.assert_close(psg[name], want[name], **tol, msg=lambda m, n=name: f"per-sample {n} of {cfg}: {m}")


@pytest.mark.parametrize("cfg", list(CONV_CASES.values()), ids=list(CONV_CASES))
def test_conv_case(cfg: ConvConfig) -> None:
    check_conv(cfg, torch.float64)


@settings(max_examples=30)
@given(conv_configs())
def test_conv_sweep_float64(cfg: ConvConfig) -> None:
    check_conv(cfg, torch.float64)


@settings(max_examples=10)
@given(conv_configs(dims=(1, 2)))
def test_conv_sweep_float32(cfg: ConvConfig) -> None:
    check_conv(cfg, torch.float32)


# torch modules take symmetric explicit padding only; those cases check the oracle's F.pad / crop path
SYMMETRIC = {
    key: cfg
    for key, cfg in CONV_CASES.items()
    if not isinstance(cfg.padding, str) and all(left == right for left, right in cfg.pairs())
}


@pytest.mark.parametrize("cfg", list(SYMMETRIC.values()), ids=list(SYMMETRIC))
def test_oracle_agrees_with_torch_modules(cfg: ConvConfig) -> None:
    """The oracle itself (F.pad then conv; full transposed conv then crop) against torch's modules."""
    pairs = cfg.pairs()
    t = tensors(cfg, torch.float64)
    kind = {
        (1, False): torch.nn.Conv1d,
        (2, False): torch.nn.Conv2d,
        (3, False): torch.nn.Conv3d,
        (1, True): torch.nn.ConvTranspose1d,
        (2, True): torch.nn.ConvTranspose2d,
        (3, True): torch.nn.ConvTranspose3d,
    }
    extra = {"output_padding": cfg.output_padding or 0} if cfg.transposed else {"padding_mode": cfg.padding_mode}
    module = kind[(cfg.dims, cfg.transposed)](
        cfg.in_channels,
        cfg.out_channels,
        cfg.kernel_size,
        stride=cfg.stride,
        padding=tuple(p for p, _ in pairs),
        dilation=cfg.dilation,
        groups=cfg.groups,
        bias=cfg.bias,
        dtype=torch.float64,
        **extra,
    )
    with torch.no_grad():
        module.weight.copy_(t["weight"])
        if cfg.bias:
            module.bias.copy_(t["bias"])
        torch.testing.assert_close(
            conv_oracle(cfg, t["x"], t["weight"], t["bias"]), module(t["x"]), rtol=1e-12, atol=1e-12
        )
