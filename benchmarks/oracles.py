"""Independent float64 oracles: torch's own convolution and autograd (never ``benchmarks.unfold``, never tnderiv).

The KFAC oracle obtains the input-side vectors ``a`` by running torch's convolution with an identity
kernel (one output channel per row of the weight), so padding modes, ``'same'``, groups and
transposition come from torch itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.problem import Problem

Tensor = torch.Tensor


def _loss(module: torch.nn.Module, x: Tensor, grad_out: Tensor) -> Tensor:
    return (module(x) * grad_out).sum()


def forward(p: Problem) -> Tensor:
    with torch.no_grad():
        return p.module(p.x)


def vjp_x(p: Problem) -> Tensor:
    x = p.x.detach().requires_grad_(True)
    return torch.autograd.grad(_loss(p.module, x, p.grad_out), x)[0]


def vjp_weight(p: Problem) -> Tensor:
    return torch.autograd.grad(_loss(p.module, p.x, p.grad_out), p.module.weight)[0]


def _per_sample(p: Problem, grad_out: Tensor) -> Tensor:
    """One autograd call per sample."""
    rows = [
        torch.autograd.grad(_loss(p.module, p.x[n : n + 1], grad_out[n : n + 1]), p.module.weight)[0]
        for n in range(p.x.shape[0])
    ]
    return torch.stack(rows)


def per_sample_grad(p: Problem) -> Tensor:
    return _per_sample(p, p.grad_out)


def sum_grad_squared(p: Problem) -> Tensor:
    return _per_sample(p, p.grad_out).square().sum(0)


def batch_l2(p: Problem) -> Tensor:
    return _per_sample(p, p.grad_out).square().flatten(1).sum(1)


def diag_ggn(p: Problem) -> Tensor:
    return sum(_per_sample(p, column).square().sum(0) for column in p.sqrt_out)  # type: ignore[return-value]


def input_vectors(module: torch.nn.Module, x: Tensor) -> Tensor:
    """``a[n, g, d_in, L]`` from torch's convolution with an identity kernel."""
    if isinstance(module, torch.nn.Linear):
        return x.reshape(x.shape[0], -1, x.shape[-1]).transpose(1, 2).unsqueeze(1)
    groups, kernel = module.groups, tuple(module.kernel_size)
    c_in = x.shape[1]
    d_in = (c_in // groups) * math.prod(kernel)
    eye = torch.eye(d_in, dtype=x.dtype, device=x.device).reshape(d_in, c_in // groups, *kernel)
    if module.transposed:
        weight = eye.transpose(0, 1).repeat(groups, *([1] * (1 + len(kernel))))  # [C_in, d_in, *K]
        conv_t = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[len(kernel)]
        out = conv_t(x, weight, None, module.stride, module.padding, module.output_padding, groups, module.dilation)
    else:
        weight = eye.repeat(groups, *([1] * (1 + len(kernel))))  # [G·d_in, C_in/G, *K]
        out = module._conv_forward(x, weight, None)
    return out.reshape(x.shape[0], groups, d_in, -1)


def output_vectors(module: torch.nn.Module, grad_out: Tensor) -> Tensor:
    """``g[n, g, d_out, L]`` (by definition: the output gradient, channels grouped)."""
    n = grad_out.shape[0]
    if isinstance(module, torch.nn.Linear):
        return grad_out.reshape(n, -1, grad_out.shape[-1]).transpose(1, 2).unsqueeze(1)
    return grad_out.reshape(n, module.groups, grad_out.shape[1] // module.groups, -1)


def _factor(v: Tensor, approx: str) -> Tensor:
    if approx == "reduce":
        s = v.sum(-1)
        return torch.einsum("ngd,nge->gde", s, s)
    return torch.einsum("ngdl,ngel->gde", v, v)


def kfac_A(approx: str) -> Callable[[Problem], Tensor]:
    return lambda p: _factor(input_vectors(p.module, p.x), approx)


def kfac_both(approx: str) -> Callable[[Problem], dict[str, Tensor]]:
    def oracle(p: Problem) -> dict[str, Tensor]:
        return {
            "A": _factor(input_vectors(p.module, p.x), approx),
            "G": _factor(output_vectors(p.module, p.grad_out), approx),
        }

    return oracle


ORACLES: dict[str, Callable[[Problem], Any]] = {
    "forward": forward,
    "vjp_x": vjp_x,
    "vjp_weight": vjp_weight,
    "per_sample_grad": per_sample_grad,
    "kfac_A_expand": kfac_A("expand"),
    "kfac_A_reduce": kfac_A("reduce"),
    "kfac_expand": kfac_both("expand"),
    "kfac_reduce": kfac_both("reduce"),
    "sum_grad_squared": sum_grad_squared,
    "batch_l2": batch_l2,
    "diag_ggn": diag_ggn,
}
