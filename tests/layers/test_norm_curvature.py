"""Curvature and gradient statistics of the affine parameters of normalization layers vs torch.func.

Oracles: per-sample gradients from ``vmap(grad)`` of ``torch.nn.functional`` and the dense parameter
Jacobian from ``jacrev`` (GGN ``Jᵀ S Sᵀ J``). Nothing expected here comes from tnderiv.
"""

from __future__ import annotations

import pytest
import torch
from cases.norm_cases import CASES, TOL, NormConfig, case_id, split_tensors
from torch.func import grad, jacrev, vmap

import tnderiv

# affine configurations whose per-sample quantities are defined (no batch norm with batch statistics)
CURVATURE_CASES = [c for c in CASES if c.param_names and not c.couples_batch]


def _oracle_per_sample(config: NormConfig, x, params, stats, grad_out) -> dict[str, torch.Tensor]:
    def sample_loss(p, xn, gn):
        return (config.oracle(xn[None], **p, **stats)[0] * gn).sum()

    return vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, grad_out)


def _oracle_sqrt_vjp(config: NormConfig, x, params, stats, sqrt_out, name) -> torch.Tensor:
    """``V[m, n, p] = Σ_out S[m, n, out] ∂y[n, out]/∂θ[p]`` from the dense Jacobian (p flattened)."""
    jac = jacrev(lambda p: config.oracle(x, **{**params, name: p}, **stats))(params[name])
    n = x.shape[0]
    jac = jac.reshape(n, -1, params[name].numel())
    return torch.einsum("mno,nop->mnp", sqrt_out.reshape(sqrt_out.shape[0], n, -1), jac)


@pytest.mark.parametrize("config", CURVATURE_CASES, ids=case_id)
def test_grad_stats_match_vmap_grad(config: NormConfig) -> None:
    x, params, stats = split_tensors(config.tensors(5))
    grad_out = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(6))
    per_sample = _oracle_per_sample(config, x, params, stats, grad_out)
    for strategy in ("glued", "materialize"):
        result = tnderiv.grad_stats(config.spec(), x, grad_out, strategy=strategy, **params, **stats)
        for name, g in per_sample.items():
            flat = g.reshape(g.shape[0], -1)
            torch.testing.assert_close(result["sum_grad_squared"][name], (g**2).sum(0), **TOL)
            torch.testing.assert_close(result["batch_l2"][name], (flat**2).sum(1), **TOL)
            torch.testing.assert_close(result["batch_dot"][name], flat @ flat.T, **TOL)
            torch.testing.assert_close(result["variance"][name], (g**2).mean(0) - g.mean(0) ** 2, **TOL)


@pytest.mark.parametrize("config", CURVATURE_CASES, ids=case_id)
def test_ggn_matches_dense_jacobian(config: NormConfig) -> None:
    x, params, stats = split_tensors(config.tensors(8))
    gen = torch.Generator().manual_seed(9)
    sqrt_out = torch.randn((3, *x.shape), dtype=x.dtype, generator=gen)
    spec = config.spec()
    for name, value in params.items():
        v = _oracle_sqrt_vjp(config, x, params, stats, sqrt_out, name)
        shape = tuple(value.shape)

        def ggn(kind: str, per_sample: bool = False, name: str = name) -> torch.Tensor:
            return tnderiv.ggn(spec, x, sqrt_out, params=name, kind=kind, per_sample=per_sample, **params, **stats)

        torch.testing.assert_close(ggn("block"), torch.einsum("mnp,mnq->pq", v, v).reshape(shape + shape), **TOL)
        torch.testing.assert_close(ggn("diag"), torch.einsum("mnp,mnp->p", v, v).reshape(shape), **TOL)
        torch.testing.assert_close(ggn("gram"), torch.einsum("mnp,kjp->mnkj", v, v), **TOL)
        n = x.shape[0]
        torch.testing.assert_close(
            ggn("block", True), torch.einsum("mnp,mnq->npq", v, v).reshape((n, *shape, *shape)), **TOL
        )
        torch.testing.assert_close(ggn("diag", True), torch.einsum("mnp,mnp->np", v, v).reshape((n, *shape)), **TOL)


def test_ggn_of_a_module_from_its_loss_hessian_sqrt() -> None:
    """The full pipeline on a module: ``loss_hessian_sqrt`` at the output, GGN of γ vs the dense GGN of the loss."""
    module = torch.nn.GroupNorm(2, 4).double()
    with torch.no_grad():
        module.weight.normal_()
        module.bias.normal_()
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    target = torch.randn(3, 4, 5, dtype=torch.float64)
    sqrt_out = tnderiv.loss_hessian_sqrt("mse", module(x).detach(), target)

    def loss(w: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.group_norm(x, 2, w, module.bias.detach())
        return torch.nn.functional.mse_loss(y, target)

    jac = jacrev(lambda w: torch.nn.functional.group_norm(x, 2, w, module.bias.detach()))(module.weight.detach())
    jac = jac.reshape(-1, 4)
    hess = torch.func.hessian(lambda y: torch.nn.functional.mse_loss(y.reshape(x.shape), target))(
        module(x).detach().reshape(-1)
    )
    expected = jac.T @ hess @ jac
    torch.testing.assert_close(tnderiv.ggn(module, x, sqrt_out, params="weight"), expected, **TOL)
    assert loss(module.weight.detach()).ndim == 0


def test_training_batchnorm_refuses_per_sample_statistics() -> None:
    spec = tnderiv.BatchNorm(3)
    x = torch.randn(4, 3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="couples the samples"):
        tnderiv.grad_stats(spec, x, torch.randn_like(x))
    with pytest.raises(ValueError, match="couples the samples"):
        tnderiv.ggn(spec, x, torch.randn(2, *x.shape, dtype=x.dtype), params="weight", per_sample=True)


def test_training_batchnorm_batch_ggn() -> None:
    config = NormConfig("batch", (4, 3, 2), channels=3)
    x, params, stats = split_tensors(config.tensors(2))
    sqrt_out = torch.randn((2, *x.shape), dtype=x.dtype, generator=torch.Generator().manual_seed(3))
    v = _oracle_sqrt_vjp(config, x, params, stats, sqrt_out, "weight")
    got = tnderiv.ggn(config.spec(), x, sqrt_out, params="weight", **params)
    torch.testing.assert_close(got, torch.einsum("mnp,mnq->pq", v, v), **TOL)
