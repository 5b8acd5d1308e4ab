"""KFAC-like blocks of the affine parameters of normalization layers vs factors computed with torch.

The oracle takes ``x̂`` from torch's functional layer without affine parameters and forms the factors
by their definition (docs/normalization.md): every entry of ``γ`` is its own group with ``1×1`` factors.
"""

from __future__ import annotations

import pytest
import torch
from cases.norm_cases import CASES, TOL, NormConfig, case_id, split_tensors

import tnderiv

CURVATURE_CASES = [c for c in CASES if c.param_names and not c.couples_batch]

def _x_hat_oracle(config: NormConfig, x: torch.Tensor, stats: dict) -> torch.Tensor:
    """x̂ from torch's functional layer without affine parameters."""
    bare = NormConfig(**{**config.__dict__, "affine": False})
    return bare.oracle(x, **stats)


def _kfac_oracle(
    config: NormConfig, x, stats, grad_out, approx: str, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``A[p] = mean_{n,s} x̂²`` and ``G[p] = scale · Σ_{n,s} δ²`` (expand), or of position sums/means (reduce)."""
    x_hat = _x_hat_oracle(config, x, stats)
    params = len(config.param_shape) if config.family in ("layer", "rms") else 1
    if config.family in ("layer", "rms"):
        shared = tuple(range(1, x.ndim - params))
    else:
        shared = tuple(range(2, x.ndim))
    flat = lambda t: t.reshape(t.shape[0], -1)  # noqa: E731  (n, p) after the shared legs are gone
    if approx == "expand":
        a = x_hat.movedim(shared, tuple(range(1, 1 + len(shared)))).reshape(-1, *config.param_shape)
        g = grad_out.movedim(shared, tuple(range(1, 1 + len(shared)))).reshape(-1, *config.param_shape)
        return (flat(a) ** 2).mean(0), scale * (flat(g) ** 2).sum(0)
    a = x_hat.mean(shared) if shared else x_hat
    g = grad_out.sum(shared) if shared else grad_out
    return (flat(a) ** 2).mean(0), scale * (flat(g) ** 2).sum(0)


KFAC_CASES = [c for c in CURVATURE_CASES if c.family != "rms"] + [c for c in CURVATURE_CASES if c.family == "rms"][:1]


@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("config", KFAC_CASES, ids=case_id)
def test_kfac_blocks_of_gamma_and_beta(config: NormConfig, approx: str) -> None:
    """Each entry of γ is its own group (legs on both halves): 1×1 factors, a diagonal block ``A ⊙ G``; β: ``A = 1``."""
    x, params, stats = split_tensors(config.tensors(4))
    grad_out = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(5))
    spec = config.spec()
    kfac = tnderiv.kfac(spec, x, grad_out, approx=approx, loss_average=None, **stats)
    A, G = _kfac_oracle(config, x, stats, grad_out, approx, 1.0)
    torch.testing.assert_close(kfac.A.reshape(-1), A, **TOL)
    torch.testing.assert_close(kfac.G.reshape(-1), G, **TOL)
    diagonal = [A * G]
    if "bias" in params:
        torch.testing.assert_close(kfac.A_bias.reshape(-1), torch.ones_like(A), **TOL)
        torch.testing.assert_close(kfac.G_bias.reshape(-1), G, **TOL)
        diagonal.append(G)
    torch.testing.assert_close(kfac.to_dense(), torch.diag(torch.cat(diagonal)), **TOL)


def test_kfac_loss_average_scales_the_output_factor() -> None:
    config = NormConfig("layer", (3, 4, 5), normalized_shape=(5,))
    x, params, stats = split_tensors(config.tensors(1))
    grad_out = torch.randn_like(x)
    for loss_average, scale in ((None, 1.0), ("batch", 3.0), ("batch+positions", 12.0)):
        kfac = tnderiv.kfac(config.spec(), x, grad_out, loss_average=loss_average)
        _, G = _kfac_oracle(config, x, stats, grad_out, "expand", scale)
        torch.testing.assert_close(kfac.G.reshape(-1), G, **TOL)


def test_kfac_refuses_training_batchnorm() -> None:
    x = torch.randn(4, 3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="couples the samples"):
        tnderiv.kfac(tnderiv.BatchNorm(3), x, torch.randn_like(x))


def test_kfac_of_modules_uses_their_statistics() -> None:
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    grad_out = torch.randn_like(x)
    module = torch.nn.BatchNorm1d(3).double()
    module(x * 2 + 1)  # a training step sets the running statistics
    module.eval()
    stats = {"running_mean": module.running_mean, "running_var": module.running_var}
    config = NormConfig("batch", tuple(x.shape), channels=3, running_stats=True, dims=1)
    kfac = tnderiv.kfac(module, x, grad_out, loss_average=None)
    A, G = _kfac_oracle(config, x, stats, grad_out, "expand", 1.0)
    torch.testing.assert_close(kfac.A.reshape(-1), A, **TOL)
    torch.testing.assert_close(kfac.G.reshape(-1), G, **TOL)
