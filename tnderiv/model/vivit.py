"""The GGN's low-rank structure (ViViT): eigenpairs from the Gram matrix, directional derivatives, Newton steps.

With ``V`` the backpropagated square-root columns (``[M·N]`` of them), the GGN is ``G = V Vᵀ`` and its non-zero
spectrum is that of the Gram matrix ``Vᵀ V`` (``ggn_gram``). An eigenvector is ``e = V u / √λ``: for a layer
on the derived path this is the layer's weight VJP with ``grad_out[n] = Σ_m u[m, n] S[m, n]`` (no per-sample
tensor is formed); for a materialized parameter it is a contraction of its columns. Directional derivatives
are JVPs: ``γ[n, k] = g_nᵀ e_k = ⟨grad_out[n], (J e_k)[n]⟩`` and ``λ[n, k] = e_kᵀ G_n e_k = Σ_m ⟨S[m, n], (J e_k)[n]⟩²``.

Scaling: everything is of the loss as reduced (a mean loss carries ``1/N``), so ``Σ_n γ[n, k] = gᵀ e_k`` and
``Σ_n λ[n, k] = e_kᵀ G e_k``. ViViT's (vivit-for-pytorch) per-sample values are ``N`` times ours.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

import tnderiv.api as api
from tnderiv.model.batch import (
    Options,
    _column_chunks,
    _layer_inputs,
    _tiled_psg,
    compute_batch,
    partition,
)
from tnderiv.model.columns import Pass
from tnderiv.model.units import Owner
from tnderiv.plan.gram import MATERIALIZE_LIMIT


@dataclass(frozen=True)
class GGNEigen:
    """Eigenvalues ``[K]`` (descending) and eigenvectors ``{canonical param: [K, *p]}`` of the GGN (or its block)."""

    eigenvalues: torch.Tensor
    eigenvectors: dict[str, torch.Tensor]

    def __repr__(self) -> str:
        shapes = {k: list(v.shape) for k, v in list(self.eigenvectors.items())[:6]}
        return f"GGNEigen(K={self.eigenvalues.numel()}, eigenvectors={shapes})"


@dataclass(frozen=True)
class DirectionalDerivatives:
    """Per-sample first ``gammas [N, K]`` and second ``lambdas [N, K]`` directional derivatives along ``K`` directions."""

    gammas: torch.Tensor
    lambdas: torch.Tensor

    def __repr__(self) -> str:
        return f"DirectionalDerivatives(gammas {list(self.gammas.shape)}, lambdas {list(self.lambdas.shape)})"


def restrict(owners: Sequence[Owner], params: Sequence[str] | None) -> list[Owner]:
    """The owners reduced to the canonical parameters ``params`` (None: all)."""
    if params is None:
        return list(owners)
    wanted = set(params)
    known = {c for o in owners for c in o.local.values()}
    unknown = sorted(wanted - known)
    if unknown:
        raise ValueError(f"params: {unknown} are not among the selected, used parameters {sorted(known)[:8]}")
    out = []
    for o in owners:
        local = {k: c for k, c in o.local.items() if c in wanted}
        if local:
            out.append(Owner(o.name, o.module, local, o.engine))
    return out


def ggn_eigen(run: Pass, owners: Sequence[Owner], sqrt: torch.Tensor, opts: Options, k: int | None, scale: float) -> GGNEigen:
    """The ``k`` largest eigenpairs (None: all non-zero ones) of ``scale · V Vᵀ`` over the owners' parameters."""
    gram = compute_batch(run, owners, ("ggn_gram",), sqrt, opts).gram
    m, n = gram.shape[0], gram.shape[1]
    # the Gram matrix is small ([M·N, M·N]) and often ill-conditioned: decompose it in float64
    evals, evecs = torch.linalg.eigh(gram.reshape(m * n, m * n).double())
    evals, evecs = evals.flip(0).to(gram.dtype), evecs.flip(1).to(gram.dtype)
    tol = evals[0].abs() * m * n * torch.finfo(evals.dtype).eps if evals.numel() else 0.0
    keep = int((evals > tol).sum())
    if k is not None:
        keep = min(keep, k)
    evals, evecs = evals[:keep], evecs[:, :keep]
    u = (evecs / evals.sqrt()).T.reshape(keep, m, n)  # e_k = V u_k / √λ_k
    part = partition(run, owners)
    cols = next(_column_chunks(run, owners, sqrt, opts))
    vectors: dict[str, torch.Tensor] = {}
    for owner in part.derived:
        x, _ = _layer_inputs(run, owner, 0)
        s = cols[(owner.name, 0)][0]
        for local, canonical in owner.local.items():
            if _columns_are_cheaper(owner, local, x, s, keep):
                vectors[canonical] = torch.tensordot(u, _tiled_psg(owner, x, s, local), dims=([1, 2], [0, 1]))
            else:
                vectors[canonical] = torch.stack([_weighted_vjp(owner, local, x, s, u[j]) for j in range(keep)])
    for canonical in part.materialized:
        v = part.columns(canonical, cols)
        vectors[canonical] = torch.tensordot(u, v, dims=([1, 2], [0, 1]))
    return GGNEigen(evals * scale, vectors)


def _columns_are_cheaper(owner: Owner, local: str, x: torch.Tensor, s: torch.Tensor, k: int) -> bool:
    """``k`` weighted VJPs cost about ``k`` VJPs; the columns (per-sample gradients of the input tiled ``M`` times)
    about ``M``, then one contraction: materialize them, as ViViT does, when ``k ≥ M`` and they fit
    ``MATERIALIZE_LIMIT``."""
    m, n = s.shape[0], s.shape[1]
    numel = owner.module.get_parameter(local).numel()
    return k >= m and m * n * (numel + x[0].numel()) * x.element_size() <= MATERIALIZE_LIMIT


def _weighted_vjp(owner: Owner, local: str, x: torch.Tensor, s: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``Σ_{m,n} u[m, n] · (per-sample VJP of S[m, n])`` = the VJP of ``grad_out[n] = Σ_m u[m, n] S[m, n]``."""
    grad_out = (u.reshape(*u.shape, *([1] * (s.ndim - 2))) * s).sum(0)
    return api.vjp(owner.module, local, grad_out, x=x)


def directional_derivatives(
    run: Pass, owners: Sequence[Owner], sqrt: torch.Tensor, opts: Options, directions: Mapping[str, torch.Tensor]
) -> DirectionalDerivatives:
    """``γ[n, k] = g_nᵀ e_k`` and ``λ[n, k] = e_kᵀ G_n e_k`` for directions ``{canonical: [K, *p]}``."""
    part = partition(run, owners)
    cols = next(_column_chunks(run, owners, sqrt, opts))
    k = next(iter(directions.values())).shape[0]
    gammas = None
    inner = None  # [M, N, K]: ⟨S[m, n], (J e_k)[n]⟩ summed over all parameters
    for owner in part.derived:
        x, g = _layer_inputs(run, owner, 0)
        s = cols[(owner.name, 0)][0]
        for j in range(k):
            jv = None
            for local, canonical in owner.local.items():
                if canonical in directions:
                    t = api.jvp(owner.module, local, directions[canonical][j].to(x.dtype), x=x)
                    jv = t if jv is None else jv + t
            if jv is None:
                continue
            gam = (g * jv).reshape(g.shape[0], -1).sum(1)
            lam_in = (s * jv).reshape(s.shape[0], s.shape[1], -1).sum(2)
            gammas = _add_column(gammas, gam, j, k)
            inner = _add_column(inner, lam_in, j, k)
    for canonical in part.materialized:
        if canonical not in directions:
            continue
        e = directions[canonical].reshape(k, -1)
        psg = part.per_sample_grads(canonical)
        v = part.columns(canonical, cols)
        gam = psg.reshape(psg.shape[0], -1) @ e.T  # [N, K]
        lam_in = v.reshape(v.shape[0], v.shape[1], -1) @ e.T  # [M, N, K]
        gammas = gam if gammas is None else gammas + gam
        inner = lam_in if inner is None else inner + lam_in
    if gammas is None:
        raise ValueError("none of the directions' parameters is among the selected, used parameters")
    return DirectionalDerivatives(gammas, (inner * inner).sum(0))


def _add_column(total: torch.Tensor | None, column: torch.Tensor, j: int, k: int) -> torch.Tensor:
    """``total[..., j] += column`` (``total`` created with ``k`` columns on first use)."""
    if total is None:
        total = column.new_zeros(*column.shape, k)
    total[..., j] += column
    return total


def newton_step(
    eigen: GGNEigen, derivatives: DirectionalDerivatives, damping: float
) -> dict[str, torch.Tensor]:
    """The directionally damped Newton step ``−Σ_k (gᵀ e_k) / (λ_k + δ) · e_k`` per parameter."""
    if not isinstance(damping, (int, float)) or isinstance(damping, bool) or damping < 0:
        raise ValueError(f"damping={damping!r}: expected a non-negative number")
    slope = derivatives.gammas.sum(0)  # gᵀ e_k
    curvature = derivatives.lambdas.sum(0)  # e_kᵀ G e_k = λ_k
    coeff = -slope / (curvature + damping)
    return {name: torch.tensordot(coeff, e, dims=1) for name, e in eigen.eigenvectors.items()}


__all__ = ["DirectionalDerivatives", "GGNEigen", "directional_derivatives", "ggn_eigen", "newton_step", "restrict"]
