"""Loss-Hessian square roots against torch.func.hessian of torch's own losses (float64), and MC unbiasedness."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tnderiv

DT = torch.float64
FN = {"mse": F.mse_loss, "cross_entropy": F.cross_entropy, "bce_with_logits": F.binary_cross_entropy_with_logits}


def make_target(loss: str, shape: tuple[int, ...], gen: torch.Generator, probabilities: bool = False) -> torch.Tensor:
    if loss == "cross_entropy" and not probabilities:
        return torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=gen)
    if loss == "cross_entropy":
        # unnormalized on purpose: the Hessian scales with the target's total mass
        return torch.rand(shape, generator=gen, dtype=DT) * 1.5
    if loss == "bce_with_logits":
        return torch.rand(shape, generator=gen, dtype=DT)
    return torch.randn(shape, generator=gen, dtype=DT)


def dense_from_sqrt(s: torch.Tensor) -> torch.Tensor:
    """``H[n, f, n', f'] = δ(n, n') Σ_m S[m, n, f] S[m, n, f']`` (the Hessian is block-diagonal over samples)."""
    m, n = s.shape[:2]
    flat = s.reshape(m, n, -1)
    blocks = torch.einsum("mnf,mng->nfg", flat, flat)
    return torch.block_diag(*blocks)


def torch_hessian(loss: str, output: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
    h = torch.func.hessian(lambda z: FN[loss](z, target, reduction=reduction))(output)
    return h.reshape(output.numel(), output.numel())


CASES = [
    ("mse", (3, 4)),
    ("mse", (2, 3, 2)),
    ("mse", (4,)),
    ("bce_with_logits", (3, 2)),
    ("bce_with_logits", (2, 2, 3)),
    ("cross_entropy", (3, 4)),
    ("cross_entropy", (2, 3, 2)),
    ("cross_entropy", (2, 3, 2, 2)),
]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(("loss", "shape"), CASES, ids=[f"{loss}-{'x'.join(map(str, s))}" for loss, s in CASES])
def test_exact_sqrt_matches_torch_hessian(loss: str, shape: tuple[int, ...], reduction: str) -> None:
    gen = torch.Generator().manual_seed(0)
    output = torch.randn(shape, generator=gen, dtype=DT)
    target = make_target(loss, shape, gen)
    s = tnderiv.loss_hessian_sqrt(loss, output, target, reduction=reduction)
    features = output[0].numel()
    assert s.shape == (features, *shape)  # M = one column per output entry of a sample
    torch.testing.assert_close(dense_from_sqrt(s), torch_hessian(loss, output, target, reduction), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 2)])
def test_cross_entropy_with_probability_targets(shape: tuple[int, ...], reduction: str) -> None:
    gen = torch.Generator().manual_seed(1)
    output = torch.randn(shape, generator=gen, dtype=DT)
    target = make_target("cross_entropy", shape, gen, probabilities=True)
    s = tnderiv.loss_hessian_sqrt("cross_entropy", output, target, reduction=reduction)
    torch.testing.assert_close(dense_from_sqrt(s), torch_hessian("cross_entropy", output, target, reduction), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("loss", "shape"), [("mse", (2, 3)), ("bce_with_logits", (2, 3)), ("cross_entropy", (2, 3)), ("cross_entropy", (2, 3, 2))])
def test_monte_carlo_is_unbiased(loss: str, shape: tuple[int, ...]) -> None:
    """``E[Σ_m S Sᵀ] = H``: with 40 000 samples the average is within 4% of the largest entry.

    The per-entry standard error is about ``max|H| · 2/√M`` = 1% here, so 4% is a 4σ band (seeded,
    so the test is deterministic; it would catch any bias beyond a few percent, e.g. a wrong scale).
    """
    gen = torch.Generator().manual_seed(2)
    output = torch.randn(shape, generator=gen, dtype=DT)
    target = make_target(loss, shape, gen)
    exact = torch_hessian(loss, output, target, "mean")
    s = tnderiv.loss_hessian_sqrt(loss, output, target, mc_samples=40_000, generator=torch.Generator().manual_seed(3))
    assert s.shape == (40_000, *shape)
    estimate = dense_from_sqrt(s)
    assert (estimate - exact).abs().max() <= 0.04 * exact.abs().max()


def test_monte_carlo_is_seeded_and_differs_from_exact() -> None:
    output = torch.randn(3, 4, dtype=DT)
    target = torch.tensor([0, 1, 3])
    a = tnderiv.loss_hessian_sqrt("cross_entropy", output, target, mc_samples=5, generator=torch.Generator().manual_seed(7))
    b = tnderiv.loss_hessian_sqrt("cross_entropy", output, target, mc_samples=5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert a.shape == (5, 3, 4)
    # each MC column is (p − onehot)/√M·scale: it sums to zero over classes, like the Hessian's rows
    torch.testing.assert_close(a.sum(2), torch.zeros(5, 3, dtype=DT), rtol=0, atol=1e-12)


def test_float32_and_no_grad_tracking() -> None:
    output = torch.randn(2, 3, requires_grad=True)
    s = tnderiv.loss_hessian_sqrt("cross_entropy", output, torch.tensor([0, 2]))
    assert s.dtype == torch.float32 and not s.requires_grad


def test_bad_input() -> None:
    out = torch.randn(3, 4, dtype=DT)
    cls = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=r"unknown loss 'nll'; valid losses are \['bce_with_logits', 'cross_entropy', 'mse'\]"):
        tnderiv.loss_hessian_sqrt("nll", out, cls)
    with pytest.raises(ValueError, match="reduction='none'"):
        tnderiv.loss_hessian_sqrt("cross_entropy", out, cls, reduction="none")
    with pytest.raises(ValueError, match="mc_samples=-1"):
        tnderiv.loss_hessian_sqrt("cross_entropy", out, cls, mc_samples=-1)
    with pytest.raises(ValueError, match="mc_samples=True"):
        tnderiv.loss_hessian_sqrt("cross_entropy", out, cls, mc_samples=True)
    with pytest.raises(ValueError, match=r"indices in \[0, 4\)"):
        tnderiv.loss_hessian_sqrt("cross_entropy", out, torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match="ignore_index"):
        tnderiv.loss_hessian_sqrt("cross_entropy", out, torch.tensor([0, -100, 1]))
    with pytest.raises(ValueError, match="target has shape"):
        tnderiv.loss_hessian_sqrt("cross_entropy", out, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="target has shape"):
        tnderiv.loss_hessian_sqrt("mse", out, torch.randn(3, dtype=DT))
    with pytest.raises(TypeError, match="floating-point target"):
        tnderiv.loss_hessian_sqrt("bce_with_logits", out, torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="output must be a torch.Tensor"):
        tnderiv.loss_hessian_sqrt("mse", out.numpy(), out)
    with pytest.raises(TypeError, match="output has dtype"):
        tnderiv.loss_hessian_sqrt("mse", cls, cls)
    with pytest.raises(ValueError, match="at least 2 axes"):
        tnderiv.loss_hessian_sqrt("cross_entropy", torch.randn(4, dtype=DT), torch.tensor(1))
    with pytest.raises(TypeError, match="generator must be"):
        tnderiv.loss_hessian_sqrt("mse", out, out, mc_samples=2, generator=3)
