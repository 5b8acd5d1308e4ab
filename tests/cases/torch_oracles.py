"""Independent torch references for convolutions: ``torch.nn.functional`` plus explicit ``F.pad``.

Nothing here calls tnderiv. Hyperparameters come as a plain ``ConvConfig`` so that the oracle never
reads the normalized values of a ``tnderiv.Conv`` spec (which would share its bugs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F

TORCH_PAD_MODE = {"reflect": "reflect", "replicate": "replicate", "circular": "circular"}
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@dataclass(frozen=True)
class ConvConfig:
    """A convolution as the user writes it, plus the sizes of one test (batch, spatial input)."""

    dims: int
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: Any  # int, tuple of ints, tuple of (left, right) pairs, "same" or "valid"
    groups: int = 1
    bias: bool = True
    padding_mode: str = "zeros"
    transposed: bool = False
    output_padding: tuple[int, ...] = field(default=())
    batch: int = 2
    input_size: tuple[int, ...] = ()

    def spec_kwargs(self) -> dict[str, Any]:
        """Arguments for ``tnderiv.Conv`` exactly as a user would pass them."""
        kwargs: dict[str, Any] = dict(
            dims=self.dims,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.bias,
            padding_mode=self.padding_mode,
        )
        if self.transposed:
            kwargs.update(transposed=True, output_padding=self.output_padding or 0)
        return kwargs

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (self.batch, self.in_channels, *self.input_size)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.transposed:
            return (self.in_channels, self.out_channels // self.groups, *self.kernel_size)
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def pairs(self) -> tuple[tuple[int, int], ...]:
        """(left, right) padding per dimension, for explicit (non-string) padding only."""
        p = self.padding
        if isinstance(p, int):
            return ((p, p),) * self.dims
        return tuple((q, q) if isinstance(q, int) else (q[0], q[1]) for q in p)

    def __str__(self) -> str:
        kind = "T" if self.transposed else ""
        return (
            f"conv{self.dims}d{kind}(cin={self.in_channels},cout={self.out_channels},k={self.kernel_size},"
            f"s={self.stride},d={self.dilation},p={self.padding},g={self.groups},bias={self.bias},"
            f"mode={self.padding_mode},op={self.output_padding},x={self.x_shape})"
        )


def conv_oracle(cfg: ConvConfig, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The layer's output computed by torch alone."""
    if cfg.transposed:
        return _transposed(cfg, x, weight, bias)
    conv = CONV[cfg.dims]
    if isinstance(cfg.padding, str):
        if cfg.padding_mode == "zeros":
            return conv(
                x, weight, bias, stride=cfg.stride, padding=cfg.padding, dilation=cfg.dilation, groups=cfg.groups
            )
        # torch's own module pads 'same' for non-zero modes; build one and borrow its forward
        return _module_forward(cfg, x, weight, bias)
    pairs = cfg.pairs()
    flat = [v for pair in reversed(pairs) for v in pair]  # F.pad wants the last dimension first
    if cfg.padding_mode == "zeros":
        x = F.pad(x, flat)
    else:
        x = F.pad(x, flat, mode=TORCH_PAD_MODE[cfg.padding_mode])
    return conv(x, weight, bias, stride=cfg.stride, padding=0, dilation=cfg.dilation, groups=cfg.groups)


def _transposed(cfg: ConvConfig, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Full transposed convolution (no padding), then crop (left, right) per dimension."""
    full = CONV_T[cfg.dims](
        x,
        weight,
        bias,
        stride=cfg.stride,
        padding=0,
        output_padding=cfg.output_padding or 0,
        groups=cfg.groups,
        dilation=cfg.dilation,
    )
    index: list[slice] = [slice(None), slice(None)]
    for (left, right), size in zip(cfg.pairs(), full.shape[2:]):
        index.append(slice(left, size - right))
    return full[tuple(index)]


def _module_forward(cfg: ConvConfig, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Pad as torch's own module pads a string padding (its ``_reversed_padding_repeated_twice``)."""
    x = F.pad(x, list(_module_pads(cfg)), mode=TORCH_PAD_MODE[cfg.padding_mode])
    return CONV[cfg.dims](x, weight, bias, stride=cfg.stride, padding=0, dilation=cfg.dilation, groups=cfg.groups)


@cache
def _module_pads(cfg: ConvConfig) -> tuple[int, ...]:
    module_type = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[cfg.dims]
    # skip_init: no random initialization (this may run under vmap)
    module = torch.nn.utils.skip_init(
        module_type,
        cfg.in_channels,
        cfg.out_channels,
        cfg.kernel_size,
        stride=cfg.stride,
        padding=cfg.padding,
        dilation=cfg.dilation,
        groups=cfg.groups,
        padding_mode=cfg.padding_mode,
        device="meta",
    )
    return tuple(int(p) for p in module._reversed_padding_repeated_twice)


def output_grads(f, primals: tuple[torch.Tensor, ...], grad_out: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``grad_out`` pulled back through ``f`` to every primal, by torch.autograd."""
    leaves = tuple(p.detach().clone().requires_grad_(True) for p in primals)
    out = f(*leaves)
    return torch.autograd.grad(out, leaves, grad_out)


def per_sample_grads(
    cfg: ConvConfig, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, grad_out: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``{"weight": [N, *w], "bias": [N, *b]}`` with torch.func.vmap(grad) over the batch."""

    def loss(w: torch.Tensor, b: torch.Tensor | None, xi: torch.Tensor, gi: torch.Tensor) -> torch.Tensor:
        return (conv_oracle(cfg, xi[None], w, b) * gi[None]).sum()

    if bias is None:
        gw = torch.func.vmap(torch.func.grad(loss, argnums=0), in_dims=(None, None, 0, 0))(weight, None, x, grad_out)
        return {"weight": gw}
    gw, gb = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1)), in_dims=(None, None, 0, 0))(
        weight, bias, x, grad_out
    )
    return {"weight": gw, "bias": gb}
