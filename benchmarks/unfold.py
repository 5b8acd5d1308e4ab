"""Torch-only unfold ("im2col") formulations: the opacus-style per-sample gradients and the classic KFAC.

Every function works on the canonical per-group layout: the unfolded input ``a[n, g, d_in, L]``
(``d_in = C_in/G·∏K`` — the row of the weight that meets the input — and ``L`` the weight-sharing
positions), and the output gradient ``g[n, g, d_out, L]`` (``d_out = C_out/G``). Padding modes,
``'same'``, asymmetric padding, dilation, groups and transposed convolutions are handled explicitly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def pad_pairs(module: torch.nn.Module) -> list[tuple[int, int]]:
    """(left, right) padding per spatial dimension of a (non-transposed) torch convolution."""
    kernel, dilation, padding = module.kernel_size, module.dilation, module.padding
    if isinstance(padding, str):
        if padding == "valid":
            return [(0, 0)] * len(kernel)
        total = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return [(t // 2, t - t // 2) for t in total]  # torch puts the odd element on the right
    return [(p, p) for p in padding]


def _torch_pad(x: Tensor, pairs: list[tuple[int, int]], mode: str) -> Tensor:
    flat = [v for pair in reversed(pairs) for v in pair]
    if not any(flat):
        return x
    return F.pad(x, flat, mode="constant" if mode == "zeros" else mode)


def _windows(xp: Tensor, kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...]) -> Tensor:
    """``[N, C, *O, *K]`` strided view of the padded input (no copy)."""
    dims = len(kernel)
    view = xp
    for d in range(dims):
        view = view.unfold(2 + d, dilation[d] * (kernel[d] - 1) + 1, stride[d])
    return view[(..., *(slice(None, None, dil) for dil in dilation))]


def unfold_input(module: torch.nn.Module, x: Tensor) -> Tensor:
    """The unfolded input ``a[n, g, d_in, L]`` of a torch ``Linear``, ``Conv{d}d`` or ``ConvTranspose{d}d``."""
    if isinstance(module, torch.nn.Linear):
        n, features = x.shape[0], x.shape[-1]
        return x.reshape(n, -1, features).transpose(1, 2).unsqueeze(1)
    groups, kernel = module.groups, tuple(module.kernel_size)
    n, c_in = x.shape[:2]
    dims = len(kernel)
    if module.transposed:
        xp = _upsample_and_pad(module, x)
        view = _windows(xp, kernel, (1,) * dims, tuple(module.dilation))
        view = view.flip(tuple(range(2 + dims, 2 + 2 * dims)))  # the transpose meets the kernel reversed
    else:
        xp = _torch_pad(x, pad_pairs(module), module.padding_mode)
        if dims == 2:
            cols = F.unfold(xp, kernel, dilation=module.dilation, stride=module.stride)
            return cols.reshape(n, groups, (c_in // groups) * math.prod(kernel), -1)
        view = _windows(xp, kernel, tuple(module.stride), tuple(module.dilation))
    out = view.shape[2 : 2 + dims]
    order = (0, 1, *range(2 + dims, 2 + 2 * dims), *range(2, 2 + dims))
    return view.permute(order).reshape(n, groups, (c_in // groups) * math.prod(kernel), math.prod(out))


def _upsample_and_pad(module: torch.nn.Module, x: Tensor) -> Tensor:
    """Zeros inserted between input elements (stride) and padded so that a stride-1 unfold gives the transpose."""
    stride, dilation, kernel = module.stride, module.dilation, module.kernel_size
    n, c, *sizes = x.shape
    up = x.new_zeros(n, c, *((i - 1) * s + 1 for i, s in zip(sizes, stride)))
    up[(slice(None), slice(None), *(slice(None, None, s) for s in stride))] = x
    pairs = []
    for k, d, p, op in zip(kernel, dilation, module.padding, module.output_padding):
        left = d * (k - 1) - p
        pairs.append((left, left + op))
    flat = [v for pair in reversed(pairs) for v in pair]
    return F.pad(up, flat)  # negative entries crop, as needed when padding > dilation·(kernel − 1)


def grouped_grad_out(module: torch.nn.Module, grad_out: Tensor) -> Tensor:
    """The output gradient ``[N, C_out, *O]`` (dense: ``[N, *S, out]``) as ``[n, g, d_out, L]``."""
    n = grad_out.shape[0]
    if isinstance(module, torch.nn.Linear):
        return grad_out.reshape(n, -1, grad_out.shape[-1]).transpose(1, 2).unsqueeze(1)
    return grad_out.reshape(n, module.groups, grad_out.shape[1] // module.groups, -1)


def to_weight_layout(module: torch.nn.Module, per_group: Tensor) -> Tensor:
    """``[..., g, d_out, d_in]`` → ``[..., *weight.shape]``."""
    lead = per_group.shape[:-3]
    weight = module.weight
    if getattr(module, "transposed", False):
        groups, d_out, d_in = per_group.shape[-3:]
        c_in_g = weight.shape[0] // groups
        k = math.prod(module.kernel_size)
        t = per_group.reshape(*lead, groups, d_out, c_in_g, k).transpose(-3, -2)
        return t.reshape(*lead, *weight.shape)
    return per_group.reshape(*lead, *weight.shape)


def weight_vjp(module: torch.nn.Module, x: Tensor, grad_out: Tensor) -> Tensor:
    """``∂(Σ y·grad_out)/∂weight`` by unfold + einsum."""
    a, g = unfold_input(module, x), grouped_grad_out(module, grad_out)
    return to_weight_layout(module, torch.einsum("ngdl,ngcl->gcd", a, g))


def per_sample_grad(module: torch.nn.Module, x: Tensor, grad_out: Tensor) -> Tensor:
    """Per-sample weight gradients ``[N, *weight.shape]`` by unfold + einsum (the opacus approach)."""
    a, g = unfold_input(module, x), grouped_grad_out(module, grad_out)
    return to_weight_layout(module, torch.einsum("ngdl,ngcl->ngcd", a, g))


def kfac_input(module: torch.nn.Module, x: Tensor, approx: str) -> Tensor:
    """``A[g, d_in, d_in]``: expand ``Σ_{n,l} a aᵀ``; reduce ``Σ_n (Σ_l a)(Σ_l a)ᵀ`` (sums, no scaling)."""
    return _kfac_gram(unfold_input(module, x), approx)


def kfac_output(module: torch.nn.Module, grad_out: Tensor, approx: str) -> Tensor:
    """``G[g, d_out, d_out]``: expand ``Σ_{n,l} g gᵀ``; reduce ``Σ_n (Σ_l g)(Σ_l g)ᵀ`` (sums, no scaling)."""
    return _kfac_gram(grouped_grad_out(module, grad_out), approx)


def _kfac_gram(t: Tensor, approx: str) -> Tensor:
    """``[G, d, d]`` from ``t[n, g, d, l]``: expand ``Σ_{n,l} t tᵀ``; reduce ``Σ_n (Σ_l t)(Σ_l t)ᵀ``."""
    if approx == "reduce":
        s = t.sum(-1)
        return torch.einsum("ngd,nge->gde", s, s)
    flat = t.permute(1, 2, 0, 3).reshape(t.shape[1], t.shape[2], -1)
    return flat @ flat.transpose(1, 2)


def diag_ggn(module: torch.nn.Module, x: Tensor, sqrt_out: Tensor) -> Tensor:
    """``Σ_{m,n} (per-sample gradient with grad_out = sqrt_out[m])²``, one column ``m`` at a time."""
    a = unfold_input(module, x)
    total = None
    for column in sqrt_out:
        per_sample = torch.einsum("ngdl,ngcl->ngcd", a, grouped_grad_out(module, column))
        square = per_sample.square().sum(0)
        total = square if total is None else total.add_(square)
    assert total is not None
    return to_weight_layout(module, total)
