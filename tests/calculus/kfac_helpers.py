"""Shared by the ``test_kfac_*`` files: the spec and data of a convolution case, and a strict closeness check."""

from __future__ import annotations

import torch
from cases.torch_oracles import ConvConfig, conv_oracle

import tnderiv

DT = torch.float64
APPROX = ("expand", "reduce")
LOSS_AVERAGES = (None, "batch", "batch+positions")


def _spec(cfg: ConvConfig) -> tnderiv.Conv:
    return tnderiv.Conv(cfg.in_channels, cfg.out_channels, cfg.kernel_size, **cfg.spec_kwargs())


def _data(cfg: ConvConfig, seed: int, dtype: torch.dtype = DT) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(cfg.x_shape, generator=gen, dtype=dtype)
    w = torch.randn(cfg.weight_shape, generator=gen, dtype=dtype)
    return x, w, conv_oracle(cfg, x, w, None)


def _close(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-9, atol: float = 1e-10) -> None:
    assert got.shape == want.shape, f"shape {tuple(got.shape)} vs {tuple(want.shape)}"
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
