"""Memory-saving layers whose derivative is a 0/1 pattern: ReLU, LeakyReLU (a boolean mask), max pooling (the indices).

torch's ReLU keeps its output and max pooling its input *and* its indices; the backward reads only
which elements pass (ReLU) or where each maximum came from (pooling), so these functions keep that.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


class MaskFunction(torch.autograd.Function):
    """ReLU / LeakyReLU keeping only the boolean pattern of where ``grad_out`` passes (1 byte per element)."""

    @staticmethod
    def forward(ctx: Any, x: Any, slope: float, inplace: bool) -> Any:  # type: ignore[override]
        ctx.slope = slope
        if slope:  # torch's LeakyReLU passes grad_out where x > 0 (NaN: scaled)
            mask = x > 0 if ctx.needs_input_grad[0] else None
            y = F.leaky_relu_(x, slope) if inplace else F.leaky_relu(x, slope)
        else:  # torch's ReLU passes grad_out where its output is not 0 (NaN included)
            y = x.relu_() if inplace else torch.relu(x)
            mask = y != 0 if ctx.needs_input_grad[0] else None
        if mask is not None:
            ctx.save_for_backward(mask)
        if inplace:
            ctx.mark_dirty(x)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Any) -> Any:  # type: ignore[override]
        # as uint8: torch's CPU kernels for bool operands (where, mul by bool) are 1.3-8x slower (measured)
        (mask,) = ctx.saved_tensors
        mask = mask.view(torch.uint8)
        if ctx.slope:
            return grad_out * mask.to(grad_out.dtype).mul_(1 - ctx.slope).add_(ctx.slope), None, None
        return torch.ops.aten.threshold_backward(grad_out, mask, 0), None, None


def relu_forward(module: Any, x: Any) -> Any:
    """The memory-saving forward of ``torch.nn.ReLU``."""
    return MaskFunction.apply(x, 0.0, module.inplace)


def leaky_relu_forward(module: Any, x: Any) -> Any:
    """The memory-saving forward of ``torch.nn.LeakyReLU``."""
    return MaskFunction.apply(x, float(module.negative_slope), module.inplace)


_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_POOL_TYPES = {torch.nn.MaxPool1d: 1, torch.nn.MaxPool2d: 2, torch.nn.MaxPool3d: 3}


class MaxPoolFunction(torch.autograd.Function):
    """Max pooling ``[N, C, *I] → [N, C, *O]`` keeping only the indices of the maxima (not the input)."""

    @staticmethod
    def forward(ctx: Any, x: Any, dims: int, args: tuple[Any, ...]) -> Any:  # type: ignore[override]
        y, indices = _MAX_POOL[dims](x, *args, return_indices=True)
        ctx.x_shape = x.shape
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(indices)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Any) -> Any:  # type: ignore[override]
        (indices,) = ctx.saved_tensors
        n, c = ctx.x_shape[:2]
        grad_x = grad_out.new_zeros(n, c, ctx.x_shape[2:].numel())
        grad_x.scatter_add_(2, indices.flatten(2), grad_out.flatten(2))
        return grad_x.view(ctx.x_shape), None, None


def max_pool_forward(module: Any, x: Any) -> Any:
    """The memory-saving forward of ``torch.nn.MaxPool{1,2,3}d`` (with ``return_indices``: torch's own)."""
    dims = next(d for t, d in _POOL_TYPES.items() if isinstance(module, t))
    if module.return_indices:
        return super(type(module), module).forward(x)
    unbatched = x.dim() == dims + 1
    x = x.unsqueeze(0) if unbatched else x
    args = (module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode)
    y = MaxPoolFunction.apply(x, dims, args)
    return y.squeeze(0) if unbatched else y
