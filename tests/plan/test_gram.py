"""GramPlan: one plan for a glued quantity, either way equal to an independent oracle; its choices, checks and cache."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

import tnderiv
from tnderiv.api import _network
from tnderiv.calculus.gram import glued_ggn_diag, glued_statistic
from tnderiv.calculus.kfac import Approx, input_factor
from tnderiv.plan.gram import GramPlan, get_gram_plan
from tnderiv.plan.memory import MemoryBudgetError

TOL = {"rtol": 1e-10, "atol": 1e-12}


def _conv() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode="circular").double()
    return conv, torch.randn(5, 3, 7, 7, dtype=torch.float64), torch.randn(5, 4, 4, 4, dtype=torch.float64)


def _per_sample_grads(conv: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Oracle: autograd, one sample at a time: ``[N, *weight.shape]``."""
    rows = []
    for n in range(x.shape[0]):
        (w,) = torch.autograd.grad((conv(x[n : n + 1]) * g[n : n + 1]).sum(), conv.weight)
        rows.append(w)
    return torch.stack(rows)


@pytest.mark.parametrize("strategy", ["glued", "materialize", "auto"])
def test_statistics_either_way_equal_autograd(strategy: str) -> None:
    conv, x, g = _conv()
    psg = _per_sample_grads(conv, x, g)
    network = _network(conv, {"x": tuple(x.shape)})
    expected = {
        "sum_grad_squared": (psg**2).sum(0),
        "batch_l2": (psg**2).flatten(1).sum(1),
        "batch_dot": psg.flatten(1) @ psg.flatten(1).T,
    }
    for stat, value in expected.items():
        plan = get_gram_plan(glued_statistic(network, stat, "weight"), {"x": x.shape, "grad_out": g.shape}, x, strategy=strategy)
        assert plan.strategy in ("glued", "materialize") and (strategy == "auto" or plan.strategy == strategy)
        torch.testing.assert_close(plan(x=x, grad_out=g), value, **TOL)


@pytest.mark.parametrize("strategy", ["glued", "materialize"])
def test_ggn_diagonal_either_way_equals_autograd(strategy: str) -> None:
    conv, x, _ = _conv()
    s = torch.randn(3, 5, 4, 4, 4, dtype=torch.float64)
    expected = sum((_per_sample_grads(conv, x, s[m]) ** 2).sum(0) for m in range(3))
    form = glued_ggn_diag(_network(conv, {"x": tuple(x.shape)}), "weight")
    plan = get_gram_plan(form, {"x": x.shape, "sqrt_out": s.shape}, x, strategy=strategy)
    torch.testing.assert_close(plan(x=x, sqrt_out=s), expected, **TOL)
    per_sample = get_gram_plan(glued_ggn_diag(_network(conv, {"x": tuple(x.shape)}), "weight", True), {"x": x.shape, "sqrt_out": s.shape}, x, strategy=strategy)
    expected_n = sum(_per_sample_grads(conv, x, s[m]) ** 2 for m in range(3))
    torch.testing.assert_close(per_sample(x=x, sqrt_out=s), expected_n, **TOL)


def test_kfac_factor_materializes_and_returns_the_half() -> None:
    """A KFAC factor never prices its glued form (staged_first); ``run`` returns the factor and the evaluated half."""
    conv, x, _ = _conv()
    _, factor = input_factor(_network(conv, {"x": tuple(x.shape)}), Approx.REDUCE)
    plan = get_gram_plan(factor, {"x": x.shape}, x)
    assert plan.strategy == "materialize" and "glued" not in plan.scores
    value, half = plan.run({"x": x})
    assert half is not None and plan.plans == (plan.half, plan.gram)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="circular")
    a = torch.nn.functional.unfold(padded, 3, stride=2).reshape(5, 27, -1).mean(-1)  # positions averaged per sample
    torch.testing.assert_close(value.reshape(27, 27), a.T @ a / 5, **TOL)


def test_bad_strategy_and_missing_form() -> None:
    conv, x, g = _conv()
    network = _network(conv, {"x": tuple(x.shape)})
    form = glued_statistic(network, "batch_l2", "weight")
    with pytest.raises(ValueError, match=r"strategy='both': expected one of \['auto', 'glued', 'materialize'\]"):
        GramPlan(form, {"x": x.shape, "grad_out": g.shape}, x, strategy="both")  # type: ignore[arg-type]
    glued_only = type(form)(form.glued, form.source)
    with pytest.raises(ValueError, match="strategy='materialize' needs the two-stage form"):
        GramPlan(glued_only, {"x": x.shape, "grad_out": g.shape}, x, strategy="materialize")


def test_cached_per_shape_and_holds_no_tensor() -> None:
    conv, x, g = _conv()
    form = glued_statistic(_network(conv, {"x": tuple(x.shape)}), "sum_grad_squared", "weight")
    first = get_gram_plan(form, {"x": x.shape, "grad_out": g.shape}, x)
    assert get_gram_plan(form, {"x": tuple(x.shape), "grad_out": tuple(g.shape)}, x.clone()) is first
    assert get_gram_plan(form, {"x": x.shape, "grad_out": g.shape}, x.float()) is not first  # another dtype
    probe = torch.randn(5, 3, 7, 7, dtype=torch.float64)
    ref = weakref.ref(probe)
    get_gram_plan(form, {"x": probe.shape, "grad_out": g.shape}, probe, strategy="glued")
    del probe
    gc.collect()
    assert ref() is None, "a cached GramPlan keeps the user's tensor alive"


def test_operands_and_memory_are_checked_before_running() -> None:
    conv, x, g = _conv()
    form = glued_statistic(_network(conv, {"x": tuple(x.shape)}), "batch_dot", "weight")
    plan = get_gram_plan(form, {"x": x.shape, "grad_out": g.shape}, x, strategy="materialize")
    with pytest.raises(ValueError, match="this plan was made for x of shape"):
        plan(x=x[:2], grad_out=g[:2])
    tnderiv.set_memory_budget(plan.needed_bytes - 1)
    try:
        with pytest.raises(MemoryBudgetError, match="nothing was allocated"):
            plan(x=x, grad_out=g)
    finally:
        tnderiv.set_memory_budget(None)


def test_report_names_the_strategy_and_scores() -> None:
    conv, x, g = _conv()
    form = glued_statistic(_network(conv, {"x": tuple(x.shape)}), "batch_l2", "weight")
    plan = get_gram_plan(form, {"x": x.shape, "grad_out": g.shape}, x)
    text = str(plan)
    assert f"runs {plan.strategy}" in text and "glued" in text and "materialize" in text
    assert repr(plan).startswith(f"<GramPlan {plan.strategy}")
    assert plan.score == plan.scores[plan.strategy] and plan.flops > 0


@pytest.mark.parametrize("per_sample", [False, True])
def test_ggn_diagonal_materialized_in_chunks_equals_autograd(per_sample: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Columns over the materialize limit run in chunks along m (the Gram sums them additively)."""
    from tnderiv.plan import gram

    conv, x, _ = _conv()
    s = torch.randn(6, 5, 4, 4, 4, dtype=torch.float64)
    columns_bytes = 6 * 5 * conv.weight.numel() * 8
    monkeypatch.setattr(gram, "MATERIALIZE_LIMIT", columns_bytes // 2)  # two chunks of three columns
    form = glued_ggn_diag(_network(conv, {"x": tuple(x.shape)}), "weight", per_sample)
    plan = GramPlan(form, {"x": x.shape, "sqrt_out": s.shape}, x)
    assert plan.strategy == "materialize" and plan.chunks == ("m", 3, 2)
    per_n = sum(_per_sample_grads(conv, x, s[m]) ** 2 for m in range(6))
    expected = per_n if per_sample else per_n.sum(0)
    torch.testing.assert_close(plan.run({"x": x, "sqrt_out": s})[0], expected, **TOL)
