"""Memory-saving normalization layers: keep only the tensors the requested VJPs are computed from.

The VJP diagrams of a normalization layer read derived operands (``x_hat``, ``inv_std``). What is
kept is :func:`tnderiv.calculus.operands.saved_operands`: each required derived operand replaced by
the tensors ``prepare`` computes it from (``x`` for ``x_hat``; ``x`` or ``running_var`` for
``inv_std``). Where ``x`` is kept, the statistics the forward kernel produced alongside the output
(mean and inverse standard deviation, one number per statistic, far smaller than ``x``) are kept
with it so that the backward need not recompute them. Eval-mode batch norm asked only for its input
gradient thus keeps ``weight`` and ``running_var`` and no activation at all.

Forward and backward run torch's own kernels (``native_batch_norm``, ``native_layer_norm``,
``native_group_norm`` and their backwards); RMS norm, which has no CPU backward kernel, runs
tnderiv's own derived VJP plans.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from tnderiv.api import run_quantity
from tnderiv.calculus.operands import saved_operands
from tnderiv.layers.base import LayerNetwork, spec_of
from tnderiv.model.memsave_conv import placeholder, requested

A = torch.ops.aten


@dataclass(frozen=True)
class NormKernel:
    """One normalization family: ``kind`` names the kernels; ``shape`` is normalized_shape or ``(N, C, HxW, G)``."""

    kind: str  # "batch" (batch statistics), "running", "group", "layer", "rms"
    eps: float | None
    momentum: float = 0.0
    shape: tuple[int, ...] = ()
    spec: Any = None

    def forward(self, x: Any, w: Any, b: Any, rm: Any, rv: Any) -> tuple[Any, tuple[Any, ...]]:
        """The output and the statistics the backward kernel reads."""
        if self.kind == "batch":
            y, mean, rstd = A.native_batch_norm(x, w, b, rm, rv, True, self.momentum, self.eps)
            return y, (mean, rstd)
        if self.kind == "running":
            return A.native_batch_norm(x, w, b, rm, rv, False, 0.0, self.eps)[0], ()
        if self.kind == "group":
            n, c, hxw, g = self.shape
            y, mean, rstd = A.native_group_norm(x, w, b, n, c, hxw, g, self.eps)
            return y, (mean, rstd)
        if self.kind == "layer":
            y, mean, rstd = A.native_layer_norm(x, list(self.shape), w, b, self.eps)
            return y, (mean, rstd)
        return A._fused_rms_norm(x, list(self.shape), w, self.eps)[0], ()

    def backward(
        self, g: Any, x: Any, w: Any, rm: Any, rv: Any, stats: tuple[Any, ...], mask: list[bool]
    ) -> tuple[Any, Any, Any]:
        """``(grad_x, grad_weight, grad_bias)`` as requested by ``mask`` from the kept ``x`` (grad_bias may be None)."""
        if self.kind in ("batch", "running"):
            train = self.kind == "batch"
            mean, rstd = stats if train else (None, None)
            # the bias gradient comes free with this kernel's reduction (measured)
            return A.native_batch_norm_backward(
                g, x, w, None if train else rm, None if train else rv, mean, rstd, train, self.eps, mask
            )
        full = mask[:2] + [False]
        if self.kind == "group":
            n, c, hxw, groups = self.shape
            return (*A.native_group_norm_backward(g, x, *stats, w, n, c, hxw, groups, full)[:2], None)
        if self.kind == "layer":
            return (*A.native_layer_norm_backward(g, x, list(self.shape), *stats, w, None, full)[:2], None)
        tensors = {"grad_out": g, "x": x, "weight": w}
        gx = run_quantity(self.spec, "vjp_x", tensors) if mask[0] else None
        gw = run_quantity(self.spec, "vjp_weight", {"grad_out": g, "x": x}) if mask[1] else None
        return gx, gw, None

    def param_dims(self, x: Any) -> tuple[int, ...]:
        """The axes of ``x`` the parameters do not live on (summed for the bias gradient)."""
        if self.kind in ("layer", "rms"):
            return tuple(range(x.dim() - len(self.shape)))
        return tuple(d for d in range(x.dim()) if d != 1)

    def channel_view(self, x: Any) -> tuple[int, ...]:
        """The shape that broadcasts a per-channel vector against ``x``."""
        return tuple(x.shape[1] if d == 1 else 1 for d in range(x.dim()))


class NormFunction(torch.autograd.Function):
    """A normalization layer keeping ``saved_operands`` of the requested gradients (and small statistics)."""

    @staticmethod
    def forward(ctx: Any, network: LayerNetwork, kernel: NormKernel, x: Any, weight: Any, bias: Any, rm: Any, rv: Any) -> Any:  # type: ignore[override]
        y, stats = kernel.forward(x, weight, bias, rm, rv)
        wrt = requested(ctx.needs_input_grad[2:5], (x, weight, bias))
        given = {"x": x, "weight": weight, "running_mean": rm, "running_var": rv}
        names = saved_operands(network, wrt, {k: v for k, v in given.items() if v is not None and k != "weight"})
        names = tuple(name for name in names if given.get(name) is not None)
        kept = [given[name] for name in names] + (list(stats) if "x" in names else [])
        ctx.kernel, ctx.saved_names, ctx.has_weight, ctx.has_bias = kernel, names, weight is not None, bias is not None
        ctx.w_shape = None if weight is None else weight.shape
        ctx.save_for_backward(*kept)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Any) -> Any:  # type: ignore[override]
        kernel, names = ctx.kernel, ctx.saved_names
        tensors = ctx.saved_tensors
        kept, stats = dict(zip(names, tensors)), tuple(tensors[len(names) :])
        need_x, need_w, need_b = ctx.needs_input_grad[2:5]
        need_w, need_b = need_w and ctx.has_weight, need_b and ctx.has_bias
        grad_x = grad_w = grad_b = None
        if need_x or need_w:
            weight = kept.get("weight")
            if weight is None and ctx.has_weight:
                weight = placeholder(grad_out, ctx.w_shape)  # read for its shape only: grad_x is not asked for
            if "x" in kept:
                grad_x, grad_w, grad_b = kernel.backward(
                    grad_out, kept["x"], weight, kept.get("running_mean"), kept.get("running_var"), stats,
                    [need_x, need_w, need_b],
                )
            else:  # running statistics, input gradient only: the diagram weight[c]·inv_std[c]·grad_out
                scale = (kept["running_var"] + kernel.eps) ** -0.5
                scale = scale * weight if weight is not None else scale
                grad_x = grad_out * scale.reshape(kernel.channel_view(grad_out))
        if need_b and grad_b is None:
            grad_b = grad_out.sum(kernel.param_dims(grad_out)).reshape(ctx.w_shape if ctx.has_weight else -1)
        return None, None, grad_x if need_x else None, grad_w, grad_b, None, None


def _apply(module: Any, x: Any, kernel: NormKernel, rm: Any = None, rv: Any = None) -> Any:
    network = spec_of(module).network({"x": tuple(x.shape)})
    return NormFunction.apply(network, kernel, x, module.weight, getattr(module, "bias", None), rm, rv)


def batch_norm_forward(module: Any, x: Any) -> Any:
    """The memory-saving forward of ``torch.nn.BatchNorm{1,2,3}d`` (running statistics updated like torch)."""
    module._check_input_dim(x)
    factor = 0.0 if module.momentum is None else module.momentum
    if module.training and module.track_running_stats and module.num_batches_tracked is not None:
        module.num_batches_tracked.add_(1)
        factor = 1.0 / float(module.num_batches_tracked) if module.momentum is None else module.momentum
    use_batch = module.training or (module.running_mean is None and module.running_var is None)
    if use_batch:
        track = not module.training or module.track_running_stats
        rm, rv = (module.running_mean, module.running_var) if track else (None, None)
        return _apply(module, x, NormKernel("batch", module.eps, factor), rm, rv)
    return _apply(module, x, NormKernel("running", module.eps), module.running_mean, module.running_var)


def instance_norm_forward(module: Any, x: Any) -> Any:
    """Instance norm as group norm with one group per channel, or eval-mode batch norm with running statistics.

    Training with tracked running statistics (they must be updated) and unbatched inputs run torch's forward.
    """
    use_input_stats = module.training or not module.track_running_stats
    if x.dim() == module._get_no_batch_dim() or (use_input_stats and module.track_running_stats):
        return super(type(module), module).forward(x)
    if use_input_stats:
        n, c = x.shape[:2]
        return _apply(module, x, NormKernel("group", module.eps, shape=(n, c, math.prod(x.shape[2:]), c)))
    return _apply(module, x, NormKernel("running", module.eps), module.running_mean, module.running_var)


def group_norm_forward(module: Any, x: Any) -> Any:
    """The memory-saving forward of ``torch.nn.GroupNorm`` (batched inputs ``[N, C, *I]``)."""
    n, c = x.shape[:2]
    return _apply(module, x, NormKernel("group", module.eps, shape=(n, c, math.prod(x.shape[2:]), module.num_groups)))


def layer_norm_forward(module: Any, x: Any) -> Any:
    """The memory-saving forward of ``torch.nn.LayerNorm``."""
    return _apply(module, x, NormKernel("layer", module.eps, shape=tuple(module.normalized_shape)))


def rms_norm_forward(module: Any, x: Any) -> Any:
    """The memory-saving forward of ``torch.nn.RMSNorm``."""
    spec = spec_of(module)
    return _apply(module, x, NormKernel("rms", module.eps, shape=tuple(module.normalized_shape), spec=spec))
