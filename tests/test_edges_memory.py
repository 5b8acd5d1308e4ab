"""Memory guards: sizes estimated from the plan, a clear MemoryBudgetError before anything is allocated."""

from __future__ import annotations

import re
import time

import pytest
import torch

import tnderiv
from tnderiv.plan.memory import UNCHECKED_BELOW

F32, F64 = torch.float32, torch.float64


def raises(*words: str):
    return pytest.raises(tnderiv.MemoryBudgetError, match="(?s)" + "".join(f"(?=.*{re.escape(w)})" for w in words))


@pytest.fixture
def budget():
    """Set a budget for one test and restore the default (the memory available) afterwards."""
    yield tnderiv.set_memory_budget
    tnderiv.set_memory_budget(None)


def test_huge_ggn_block_raises_in_milliseconds_with_the_default_budget():
    """The issue's case: a 324 TB GGN block of Linear(3000, 3000); no machine has that much memory."""
    lin = torch.nn.Linear(3000, 3000)
    x, s = torch.randn(2, 3000), torch.randn(3, 2, 3000)
    start = time.perf_counter()
    with raises("ggn_block_weight", "324,000,", "bytes", "memory budget", "kind='diag'", "set_memory_budget") as info:
        tnderiv.ggn(lin, x, s, kind="block")
    assert time.perf_counter() - start < 2.0  # planning only (tens of ms), nothing allocated
    error = info.value
    assert isinstance(error, MemoryError) and error.needed >= 3000**4 * 4 and error.budget < error.needed


def test_budget_is_exact_above_and_below(budget):
    lin = torch.nn.Linear(30, 20, bias=False).double()
    x, s = torch.randn(4, 30, dtype=F64), torch.randn(5, 4, 20, dtype=F64)
    result = 20 * 30 * 20 * 30 * 8
    budget(result // 2)
    with raises("ggn_block_weight", f"{result:,}", f"budget of {result // 2 / 1024**2:,.1f} MiB", "set by tnderiv.set_memory_budget"):
        tnderiv.ggn(lin, x, s, kind="block")
    budget(64 * result)
    block = tnderiv.ggn(lin, x, s, kind="block")
    # oracle: Σ_{m,n} (s ⊗ x)(s ⊗ x)ᵀ from the Jacobian of the layer output w.r.t. the weight
    v = torch.einsum("mno,ni->mnoi", s, x).reshape(-1, 600)
    torch.testing.assert_close(block.reshape(600, 600), v.T @ v)
    assert tnderiv.get_memory_budget() == 64 * result


def test_per_sample_grad_names_the_batch_and_memory_limit(budget):
    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    x, g = torch.randn(64, 8, 16, 16), torch.randn(64, 8, 16, 16)
    budget(1 << 16)
    with raises("per_sample_grad_weight", "a smaller batch", "bytes"):
        tnderiv.per_sample_grad(conv, x, g)
    with raises("this plan", "a smaller batch"):
        p = tnderiv.plan(conv, {"x": x.shape, "grad_out": g.shape}, quantity="per_sample_grad_weight")
        p(x=x, grad_out=g)


def test_exact_cross_entropy_sqrt_of_a_segmentation_output(budget):
    """3.8 TB for [8, 21, 128, 128] logits: estimated before allocating, pointing at mc_samples."""
    logits = torch.randn(2, 21, 32, 32)
    target = torch.randint(0, 21, (2, 32, 32))
    needed = 2 * (21 * 32 * 32) * logits.numel() * 4
    budget(needed - 1)
    with raises("loss_hessian_sqrt('cross_entropy')", f"{needed:,} bytes", "mc_samples=M", "21,504 exact"):
        tnderiv.loss_hessian_sqrt("cross_entropy", logits, target)
    s = tnderiv.loss_hessian_sqrt("cross_entropy", logits, target, mc_samples=4)
    assert s.shape == (4, 2, 21, 32, 32)


def test_unreduced_kfac_half(budget):
    conv = torch.nn.Conv2d(4, 8, 3, padding=1)
    x, g = torch.randn(16, 4, 16, 16), torch.randn(16, 8, 16, 16)
    budget(200_000)
    with raises("KFAC input factor A", "approx='reduce'", "a smaller batch"):
        tnderiv.kfac_factors_input(conv, x, unreduced=True)
    with raises("KFAC"):
        tnderiv.kfac(conv, x, g)
    budget(None)
    A = tnderiv.kfac_factors_input(conv, x)
    assert A.shape == (1, 36, 36)


def test_grad_stats_checks_before_running(budget):
    conv = torch.nn.Conv2d(4, 8, 3, padding=1)
    x, g = torch.randn(16, 4, 8, 8), torch.randn(16, 8, 8, 8)
    budget(1000)
    with pytest.raises(tnderiv.MemoryBudgetError, match="of weight|of bias"):
        tnderiv.grad_stats(conv, x, g, ("sum_grad_squared",), strategy="materialize")


def test_small_calls_are_not_checked_without_a_budget():
    assert tnderiv.get_memory_budget() is None
    assert UNCHECKED_BELOW >= 1 << 20
    y = tnderiv.forward(torch.nn.Linear(3, 2), torch.randn(4, 3))
    assert y.shape == (4, 2)


def test_budget_argument_is_validated():
    for bad in (0, -5, 1.5, True, "1GB"):
        with pytest.raises(ValueError, match="memory budget"):
            tnderiv.set_memory_budget(bad)
    assert tnderiv.get_memory_budget() is None


def test_ggn_and_grad_stats_take_memory_limit():
    """The option the error names exists on every entry point it names (results unchanged; oracle: einsum)."""
    lin = torch.nn.Linear(6, 4).double()
    x, s, g = torch.randn(16, 6, dtype=F64), torch.randn(3, 16, 4, dtype=F64), torch.randn(16, 4, dtype=F64)
    diag = tnderiv.ggn(lin, x, s, kind="diag", memory_limit=600)
    torch.testing.assert_close(diag, torch.einsum("mno,ni->oi", s**2, x**2))
    stats = tnderiv.grad_stats(lin, x, g, ("batch_l2",), memory_limit=400)
    psg = torch.einsum("no,ni->noi", g, x)
    torch.testing.assert_close(stats["batch_l2"]["weight"], (psg**2).sum((1, 2)))
