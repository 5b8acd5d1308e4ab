"""Both ways of computing a layer's GGN diagonal — the glued network and Σ of squared columns — equal the dense
float64 GGN, whichever the planner's scores pick (the choice is forced here each way); and the choice follows
the scores and the materialize limit."""

from __future__ import annotations

import pytest
import torch
from curvature_cases import CASES
from curvature_oracles import Oracle

import tnderiv
from tnderiv.api import _network
from tnderiv.calculus.gram import glued_ggn_diag
from tnderiv.plan import gram
from tnderiv.plan.gram import get_gram_plan

TOL = {"rtol": 1e-9, "atol": 1e-12}


@pytest.mark.parametrize("strategy", ["materialize", "glued"])
@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_ggn_diagonal_either_way(name: str, strategy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES[name]
    model, x, y = case.make()
    chosen: list[str] = []
    choose = gram.GramPlan._choose

    def forced(self: gram.GramPlan, requested: str) -> str:
        picked = strategy if strategy in self.scores else choose(self, requested)
        chosen.append(picked)
        return picked

    tnderiv.clear_caches()
    monkeypatch.setattr(gram.GramPlan, "_choose", forced)
    res = tnderiv.Curvature(model, case.loss()).compute(x, y, ("ggn_diag", "per_sample_ggn_diag"), set_grad=False)
    tnderiv.clear_caches()
    oracle = Oracle(model, case.loss(), x, y)
    assert strategy in chosen  # the forced way ran for at least one derived parameter
    for p in oracle.names:
        module, _, local = p.rpartition(".")
        torch.testing.assert_close(res[module]["ggn_diag"][local], oracle.ggn_diag(p), **TOL)
        torch.testing.assert_close(res[module]["per_sample_ggn_diag"][local], oracle.per_sample_ggn_diag(p), **TOL)


def _plan(layer: torch.nn.Module, x: torch.Tensor, s: torch.Tensor) -> gram.GramPlan:
    network = _network(layer, {"x": tuple(x.shape)})
    shapes = {"x": tuple(x.shape), "sqrt_out": tuple(s.shape)}
    return get_gram_plan(glued_ggn_diag(network, "weight"), shapes, x)


def test_the_choice_follows_scores_and_the_memory_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The planner's scores pick the columns for a 16→32 3×3 convolution (its glued network gathers twice); past
    ``MATERIALIZE_LIMIT`` (64→96 needs 89 MB of columns) they are materialized in chunks of columns within it;
    a dense layer runs glued."""
    monkeypatch.setattr(gram, "MATERIALIZE_LIMIT", 64 << 20)
    tnderiv.clear_caches()
    plan = _plan(torch.nn.Conv2d(16, 32, 3), torch.randn(32, 16, 15, 15), torch.randn(10, 32, 32, 13, 13))
    assert plan.strategy == "materialize" and plan.chunks is None
    plan = _plan(torch.nn.Conv2d(64, 96, 3), torch.randn(32, 64, 15, 15), torch.randn(10, 32, 96, 13, 13))
    assert plan.strategy == "materialize" and plan.chunks is not None
    leg, step, count = plan.chunks
    assert leg == "m" and step * count == 10 and 32 * step * 96 * 64 * 9 * 4 <= gram.MATERIALIZE_LIMIT
    assert _plan(torch.nn.Linear(512, 10), torch.randn(32, 512), torch.randn(10, 32, 10)).strategy == "glued"
    tnderiv.clear_caches()


def test_public_ggn_diag_equals_autograd_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """``tnderiv.ggn(kind="diag")`` on a strided, reflect-padded convolution against Σ_m (Jᵀ s_m)² by autograd."""
    conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode="reflect").double()
    x = torch.randn(5, 3, 7, 7, dtype=torch.float64)
    s = torch.randn(6, 5, 4, 4, 4, dtype=torch.float64)
    per_sample_expected = torch.zeros(5, *conv.weight.shape, dtype=torch.float64)
    for m in range(6):
        for n in range(5):
            (g,) = torch.autograd.grad((conv(x[n : n + 1]) * s[m, n : n + 1]).sum(), conv.weight)
            per_sample_expected[n] += g**2
    expected = per_sample_expected.sum(0)
    for strategy in ("glued", "materialize"):
        tnderiv.clear_caches()
        monkeypatch.setattr(gram.GramPlan, "_choose", lambda self, requested, strategy=strategy: strategy)
        torch.testing.assert_close(tnderiv.ggn(conv, x, s, kind="diag"), expected, **TOL)
        torch.testing.assert_close(tnderiv.ggn(conv, x, s, kind="diag", per_sample=True), per_sample_expected, **TOL)
    tnderiv.clear_caches()
