"""Independent KFAC references: unfolding by explicit padding and loops, factor formulas, peers' definitions.

Nothing here calls tnderiv. Convolutions come as ``ConvConfig`` (the user's hyperparameters), so the
oracles never read a normalized ``tnderiv.Conv``.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from cases.torch_oracles import ConvConfig

# ----- unfolding --------------------------------------------------------------------------------------


def padding_pairs(cfg: ConvConfig) -> tuple[tuple[int, int], ...]:
    """(left, right) padding per dimension, strings included (torch puts the odd extra on the right)."""
    if cfg.padding == "valid":
        return ((0, 0),) * cfg.dims
    if cfg.padding == "same":
        return tuple((d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(cfg.kernel_size, cfg.dilation))
    return cfg.pairs()


def unfold(cfg: ConvConfig, x: torch.Tensor) -> torch.Tensor:
    """``a[n, *O, g, c_in/g · ∏K]``: the input entries each output position reads, one kernel offset at a time."""
    if cfg.transposed:
        return _unfold_transposed(cfg, x)
    pairs = padding_pairs(cfg)
    flat = [v for pair in reversed(pairs) for v in pair]
    padded = F.pad(x, flat) if cfg.padding_mode == "zeros" else F.pad(x, flat, mode=cfg.padding_mode)
    sizes = padded.shape[2:]
    out = [(i - d * (k - 1) - 1) // s + 1 for i, k, s, d in zip(sizes, cfg.kernel_size, cfg.stride, cfg.dilation)]
    patches = []
    for offsets in itertools.product(*(range(k) for k in cfg.kernel_size)):
        index = [slice(None), slice(None)]
        for off, o, s, d in zip(offsets, out, cfg.stride, cfg.dilation):
            index.append(slice(off * d, off * d + s * (o - 1) + 1, s))
        patches.append(padded[tuple(index)])
    stacked = torch.stack(patches, dim=2)  # [N, C_in, ∏K, *O]
    return _arrange(cfg, stacked.reshape(x.shape[0], x.shape[1], *cfg.kernel_size, *out), out)


def _unfold_transposed(cfg: ConvConfig, x: torch.Tensor) -> torch.Tensor:
    """``a[n, o, c, k] = x[n, c, i]`` for ``o = i·S + k·D − P_left`` inside the cropped output."""
    pairs = padding_pairs(cfg)
    op = cfg.output_padding or (0,) * cfg.dims
    out = [
        (i - 1) * s + d * (k - 1) + p + 1 - left - right
        for i, k, s, d, p, (left, right) in zip(cfg.input_size, cfg.kernel_size, cfg.stride, cfg.dilation, op, pairs)
    ]
    a = x.new_zeros(x.shape[0], x.shape[1], *cfg.kernel_size, *out)
    for ii in itertools.product(*(range(i) for i in cfg.input_size)):
        for kk in itertools.product(*(range(k) for k in cfg.kernel_size)):
            oo = [i * s + k * d - left for i, k, s, d, (left, _) in zip(ii, kk, cfg.stride, cfg.dilation, pairs)]
            if all(0 <= o < size for o, size in zip(oo, out)):
                a[(slice(None), slice(None), *kk, *oo)] = x[(slice(None), slice(None), *ii)]
    return _arrange(cfg, a, out)


def _arrange(cfg: ConvConfig, a: torch.Tensor, out: list[int]) -> torch.Tensor:
    """``[N, C_in, *K, *O]`` → ``[N, *O, G, c_in·∏K]``."""
    d = cfg.dims
    n = a.shape[0]
    a = a.reshape(n, cfg.groups, cfg.in_channels // cfg.groups, *cfg.kernel_size, *out)
    perm = [0, *range(3 + d, 3 + 2 * d), 1, 2, *range(3, 3 + d)]
    return a.permute(perm).reshape(n, *out, cfg.groups, -1)


def weight_matrix(cfg: ConvConfig, weight: torch.Tensor) -> torch.Tensor:
    """The weight as ``[G, c_out, c_in · ∏K]`` (rows of the per-group weight matrix)."""
    g = cfg.groups
    if cfg.transposed:
        w = weight.reshape(g, cfg.in_channels // g, cfg.out_channels // g, -1).transpose(1, 2)
        return w.reshape(g, cfg.out_channels // g, -1)
    return weight.reshape(g, cfg.out_channels // g, -1)


# ----- factors ----------------------------------------------------------------------------------------


def input_factor(a: torch.Tensor, approx: str, append: bool = False) -> torch.Tensor:
    """``A`` from the unfolded input ``[N, *S, G, d]``: expand averages over samples and positions,
    reduce averages the positions first."""
    n, g = a.shape[0], a.shape[-2]
    rows = a.reshape(n, -1, g, a.shape[-1])
    if approx == "reduce":
        rows = rows.mean(1, keepdim=True)
    if append:
        rows = torch.cat([rows, rows.new_ones(*rows.shape[:-1], 1)], dim=-1)
    return torch.einsum("nsgi,nsgj->gij", rows, rows) / (rows.shape[0] * rows.shape[1])


def conv_output_rows(grad_out: torch.Tensor, groups: int, sqrt: bool) -> torch.Tensor:
    """``[(M,) N, C_out, *O]`` → ``[M, N, S, G, c_out]`` (``M = 1`` for a gradient)."""
    g = grad_out if sqrt else grad_out[None]
    m, n, c = g.shape[:3]
    return g.reshape(m, n, c, -1).transpose(2, 3).reshape(m, n, -1, groups, c // groups)


def dense_output_rows(grad_out: torch.Tensor, sqrt: bool) -> torch.Tensor:
    """``[(M,) N, *S, C_out]`` → ``[M, N, S, 1, C_out]``."""
    g = grad_out if sqrt else grad_out[None]
    m, n, c = g.shape[0], g.shape[1], g.shape[-1]
    return g.reshape(m, n, -1, 1, c)


def output_factor(rows: torch.Tensor, approx: str, correction: float) -> torch.Tensor:
    """``G = correction · Σ`` over ``m, n`` (and positions for expand; of position sums for reduce)."""
    if approx == "reduce":
        rows = rows.sum(2, keepdim=True)
    return correction * torch.einsum("mnsgi,mnsgj->gij", rows, rows)


def correction(loss_average: str | None, n: int, positions: int, sqrt: bool) -> float:
    if sqrt or loss_average is None:
        return 1.0
    return float(n if loss_average == "batch" else n * positions)


def positions_of(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


# ----- exact curvature --------------------------------------------------------------------------------


def ggn(model, params: torch.Tensor, loss_hessian: torch.Tensor) -> torch.Tensor:
    """``Jᵀ H J`` of ``model(params)`` (flat output) with the loss Hessian ``H`` w.r.t. that output."""
    jac = torch.func.jacrev(model)(params).reshape(-1, params.numel())
    return jac.T @ loss_hessian @ jac


def hessian_sqrt(hessian: torch.Tensor) -> torch.Tensor:
    """A matrix ``S`` with ``S Sᵀ = H`` (symmetric PSD), columns as rows: ``[M, dim]``."""
    values, vectors = torch.linalg.eigh(hessian)
    return (vectors * values.clamp_min(0).sqrt()).T


# ----- peers' definitions, written from their source code ---------------------------------------------


def backpack_kflr_conv(a: torch.Tensor, sqrt_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BackPACK KFLR/KFAC for ConvNd (``hbp/convnd.py``): ``A = 1/N Σ_{n,s} a aᵀ`` (no 1/S),
    ``G = Σ_{m,n} (Σ_s s)(Σ_s s)ᵀ`` (the bias's exact GGN); ``[G, A]`` acts on ``weight.flatten()``."""
    n = a.shape[0]
    rows = a.reshape(n, -1, a.shape[-1])
    A = torch.einsum("nsi,nsj->ij", rows, rows) / n
    summed = sqrt_rows.sum(2)[..., 0, :]
    return torch.einsum("mni,mnj->ij", summed, summed), A


def einconv_kfc(a: torch.Tensor) -> torch.Tensor:
    """einconv's ``convNd_kfc`` (KFAC-expand input factor): scale ``1/N``, summed over positions: ``[G, d, d]``."""
    n, g = a.shape[0], a.shape[-2]
    rows = a.reshape(n, -1, g, a.shape[-1])
    return torch.einsum("nsgi,nsgj->gij", rows, rows) / n


def einconv_kfac_reduce(a: torch.Tensor) -> torch.Tensor:
    """einconv's ``convNd_kfac_reduce``: scale ``1/(N S²)`` of position sums: ``[G, d, d]``."""
    n, g = a.shape[0], a.shape[-2]
    rows = a.reshape(n, -1, g, a.shape[-1])
    s = rows.shape[1]
    summed = rows.sum(1)
    return torch.einsum("ngi,ngj->gij", summed, summed) / (n * s**2)


def singd_conv2d(
    x: torch.Tensor, grad_out: torch.Tensor, module: torch.nn.Conv2d, approx: str, loss_average: str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """SINGD (``optim/utils.py``): the input ``F.unfold``-ed after averaging channel groups, a ones column for
    a bias, divided by ``√rows``; the gradient times ``√(loss terms)`` (``"batch"``: N, ``"batch+sequence"``:
    N·O). Returns the Gram matrices ``(K, C)`` = ``(XᵀX, GᵀG)`` SINGD's update is built on."""
    g = module.groups
    xg = x.reshape(x.shape[0], g, -1, *x.shape[2:]).mean(1)
    unf = F.unfold(xg, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
    if approx == "expand":
        rows = unf.transpose(1, 2).reshape(-1, unf.shape[1])
    else:
        rows = unf.mean(2)
    if module.bias is not None:
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
    rows = rows / math.sqrt(rows.shape[0])
    scaling = 1.0
    if loss_average is not None:
        terms = grad_out.shape[0] * (grad_out.shape[2:].numel() if loss_average == "batch+sequence" else 1)
        scaling = math.sqrt(terms)
    if approx == "expand":
        grads = grad_out.permute(0, 2, 3, 1).reshape(-1, grad_out.shape[1])
    else:
        grads = grad_out.sum((2, 3))
    grads = grads * scaling
    return rows.T @ rows, grads.T @ grads
