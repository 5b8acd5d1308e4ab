"""Memory-saving dense and convolution layers: autograd functions that keep only what the requested VJPs read.

The forward runs torch's own ``F.linear`` / ``F.conv*``; the backward runs torch's own kernels
(``aten.convolution_backward`` with an output mask, matrix products for dense layers). What is kept
between them is decided by :func:`tnderiv.calculus.operands.required_operands` on the layer's
network for the operands whose gradients are requested at call time (``ctx.needs_input_grad``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from tnderiv.calculus.operands import required_operands
from tnderiv.layers.base import LayerNetwork, spec_of

OPERANDS = ("x", "weight", "bias")


def requested(needs_input_grad: tuple[bool, ...], tensors: tuple[Any, ...]) -> tuple[str, ...]:
    """The names of ``x, weight, bias`` whose gradients autograd asks for (absent tensors never)."""
    return tuple(name for name, need, t in zip(OPERANDS, needs_input_grad, tensors) if need and t is not None)


def save(ctx: Any, network: LayerNetwork, tensors: dict[str, Any], wrt: tuple[str, ...]) -> None:
    """Save exactly ``required_operands(network, wrt)`` on ``ctx``; their names go to ``ctx.saved_names``."""
    names = required_operands(network, wrt) if wrt else ()
    missing = [name for name in names if tensors.get(name) is None]
    if missing:
        raise RuntimeError(f"memsave: the backward of {list(wrt)} reads {missing}, which this call does not provide")
    ctx.saved_names = names
    ctx.save_for_backward(*(tensors[name] for name in names))


def saved(ctx: Any) -> dict[str, Any]:
    """The saved tensors by name."""
    return dict(zip(ctx.saved_names, ctx.saved_tensors))


def placeholder(like: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A zero-stride stand-in of ``shape`` for a kernel argument read only for its shape."""
    return like.new_empty(1).expand(shape)


@dataclass(frozen=True)
class ConvGeometry:
    """What ``aten.convolution`` needs besides the tensors; ``pad`` (torch's reversed pairs) for non-zero modes."""

    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    transposed: bool
    output_padding: tuple[int, ...]
    groups: int
    mode: str = "zeros"
    pad: tuple[int, ...] = ()


class ConvFunction(torch.autograd.Function):
    """A convolution (or its transpose) saving ``required_operands`` of the requested gradients."""

    @staticmethod
    def forward(ctx: Any, network: LayerNetwork, geo: ConvGeometry, x: Any, weight: Any, bias: Any) -> Any:  # type: ignore[override]
        padded = F.pad(x, geo.pad, mode=geo.mode) if geo.mode != "zeros" else x
        y = _convolve(geo, padded, weight, bias)
        ctx.geo, ctx.x_shape, ctx.w_shape = geo, x.shape, weight.shape
        ctx.padded_shape, ctx.has_bias = padded.shape, bias is not None
        save(ctx, network, {"x": x, "weight": weight, "bias": bias}, requested(ctx.needs_input_grad[2:], (x, weight, bias)))
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Any) -> Any:  # type: ignore[override]
        geo, kept = ctx.geo, saved(ctx)
        mask = [bool(n) for n in ctx.needs_input_grad[2:]]
        mask[2] = mask[2] and ctx.has_bias
        x = kept.get("x")
        if x is not None and geo.mode != "zeros":
            x = F.pad(x, geo.pad, mode=geo.mode)
        x = x if x is not None else placeholder(grad_out, ctx.padded_shape)
        weight = kept.get("weight", None)
        weight = weight if weight is not None else placeholder(grad_out, ctx.w_shape)
        padding = _explicit_padding(geo, ctx.padded_shape, ctx.w_shape)
        out_channels = ctx.w_shape[1] * geo.groups if geo.transposed else ctx.w_shape[0]
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad_out, x, weight, [out_channels] if mask[2] else None, list(geo.stride), padding, list(geo.dilation),
            geo.transposed, list(geo.output_padding), geo.groups, mask,
        )
        if grad_x is not None and geo.mode != "zeros":
            grad_x = _unpad(grad_x, ctx.x_shape, geo)
        return None, None, grad_x, grad_w, grad_b


def _convolve(geo: ConvGeometry, x: Any, weight: Any, bias: Any) -> Any:
    padding = _explicit_padding(geo, x.shape, weight.shape)
    return torch.ops.aten.convolution(
        x, weight, bias, list(geo.stride), padding, list(geo.dilation), geo.transposed, list(geo.output_padding), geo.groups
    )


def _explicit_padding(geo: ConvGeometry, x_shape: Any, w_shape: Any) -> list[int]:
    """Symmetric per-dimension padding; ``'same'``/``'valid'`` resolved (asymmetric 'same' never reaches here)."""
    if geo.padding == "valid":
        return [0] * len(geo.stride)
    if geo.padding == "same":
        total = [d * (k - 1) for d, k in zip(geo.dilation, w_shape[2:])]
        return [t // 2 for t in total]
    return list(geo.padding)  # type: ignore[arg-type]


def _unpad(grad_padded: Any, x_shape: Any, geo: ConvGeometry) -> Any:
    """The adjoint of ``F.pad(·, geo.pad, geo.mode)`` applied to a gradient (a fold of the padded border)."""
    with torch.enable_grad():
        z = grad_padded.new_zeros(x_shape).requires_grad_()
        (grad_x,) = torch.autograd.grad(F.pad(z, geo.pad, mode=geo.mode), z, grad_padded)
    return grad_x


def conv_geometry(module: Any, x: Any, output_size: Any = None) -> ConvGeometry:
    """The geometry of a ``torch.nn.Conv*d`` / ``ConvTranspose*d`` module for input ``x``."""
    transposed = isinstance(module, torch.nn.modules.conv._ConvTransposeNd)
    dims = len(module.kernel_size)
    output_padding: tuple[int, ...] = (0,) * dims
    if transposed:
        output_padding = tuple(
            module._output_padding(x, output_size, module.stride, module.padding, module.kernel_size, dims, module.dilation)
        )
    if module.padding_mode != "zeros":
        return ConvGeometry(
            module.stride, (0,) * dims, module.dilation, transposed, output_padding, module.groups,
            module.padding_mode, tuple(module._reversed_padding_repeated_twice),
        )
    if module.padding == "same" and any(d * (k - 1) % 2 for d, k in zip(module.dilation, module.kernel_size)):
        # torch pads asymmetric 'same' explicitly; F.pad with zeros keeps the saving decision ours
        return ConvGeometry(
            module.stride, (0,) * dims, module.dilation, transposed, output_padding, module.groups,
            "constant", _same_pad(module.dilation, module.kernel_size),
        )
    return ConvGeometry(module.stride, module.padding, module.dilation, transposed, output_padding, module.groups)


def _same_pad(dilation: tuple[int, ...], kernel: tuple[int, ...]) -> tuple[int, ...]:
    pad: list[int] = []
    for d, k in reversed(list(zip(dilation, kernel))):
        total = d * (k - 1)
        pad += [total // 2, total - total // 2]
    return tuple(pad)


def conv_forward(module: Any, x: Any, output_size: Any = None) -> Any:
    """The memory-saving forward of a ``torch.nn.Conv*d`` / ``ConvTranspose*d`` module."""
    network = spec_of(module).network({})
    unbatched = x.dim() == len(module.kernel_size) + 1
    x = x.unsqueeze(0) if unbatched else x
    geo = conv_geometry(module, x, output_size)
    y = ConvFunction.apply(network, geo, x, module.weight, module.bias)
    return y.squeeze(0) if unbatched else y


class LinearFunction(torch.autograd.Function):
    """``y = x Wᵀ + b`` over any leading legs, saving ``required_operands`` of the requested gradients."""

    @staticmethod
    def forward(ctx: Any, network: LayerNetwork, x: Any, weight: Any, bias: Any) -> Any:  # type: ignore[override]
        ctx.has_bias = bias is not None
        save(ctx, network, {"x": x, "weight": weight, "bias": bias}, requested(ctx.needs_input_grad[1:], (x, weight, bias)))
        return F.linear(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Any) -> Any:  # type: ignore[override]
        kept = saved(ctx)
        need_x, need_w, need_b = ctx.needs_input_grad[1:]
        grad_x = grad_out @ kept["weight"] if need_x else None
        flat = grad_out.reshape(-1, grad_out.shape[-1])
        grad_w = flat.T @ kept["x"].reshape(-1, kept["x"].shape[-1]) if need_w else None
        grad_b = flat.sum(0) if need_b and ctx.has_bias else None
        return None, grad_x, grad_w, grad_b


def linear_forward(module: Any, x: Any) -> Any:
    """The memory-saving forward of a ``torch.nn.Linear`` module."""
    network = spec_of(module).network({"x": tuple(x.shape)} if x.dim() >= 2 else {})
    return LinearFunction.apply(network, x, module.weight, module.bias)
