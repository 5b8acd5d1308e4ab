"""Both ways of computing a layer's GGN diagonal — the glued network and Σ of squared per-sample columns — equal
the dense float64 GGN, whichever the planner's scores pick (the choice is forced here each way)."""

from __future__ import annotations

import pytest
import torch
from curvature_cases import CASES
from curvature_oracles import Oracle

import tnderiv
import tnderiv.model.batch as batch

TOL = {"rtol": 1e-9, "atol": 1e-12}


@pytest.mark.parametrize("materialize", [True, False])
@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_ggn_diagonal_either_way(name: str, materialize: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES[name]
    model, x, y = case.make()
    chosen: list[bool] = []

    def decide(*args: object, **kwargs: object) -> bool:
        chosen.append(materialize)
        return materialize

    monkeypatch.setattr(batch, "_materialize_diag", decide)
    res = tnderiv.Curvature(model, case.loss()).compute(x, y, ("ggn_diag", "per_sample_ggn_diag"), set_grad=False)
    oracle = Oracle(model, case.loss(), x, y)
    assert chosen  # the decision was asked for every derived parameter
    for p in oracle.names:
        module, _, local = p.rpartition(".")
        torch.testing.assert_close(res[module]["ggn_diag"][local], oracle.ggn_diag(p), **TOL)
        torch.testing.assert_close(res[module]["per_sample_ggn_diag"][local], oracle.per_sample_ggn_diag(p), **TOL)


def test_the_choice_follows_scores_and_the_memory_limit() -> None:
    """The planner's scores pick the columns for a 16→32 3×3 convolution (its glued network gathers twice), but
    not past ``MATERIALIZE_LIMIT`` (64→96 needs 89 MB of columns), and not for a dense layer."""
    conv = torch.nn.Conv2d(16, 32, 3)
    owner = batch.Owner("c", conv, {"weight": "c.weight"}, True)
    x, s = torch.randn(32, 16, 15, 15), torch.randn(10, 32, 32, 13, 13)
    assert batch._materialize_diag(owner, x, s, "weight", False)
    conv = torch.nn.Conv2d(64, 96, 3)
    owner = batch.Owner("c", conv, {"weight": "c.weight"}, True)
    x, s = torch.randn(32, 64, 15, 15), torch.randn(10, 32, 96, 13, 13)
    assert not batch._materialize_diag(owner, x, s, "weight", False)
    dense = torch.nn.Linear(512, 10)
    owner = batch.Owner("d", dense, {"weight": "d.weight"}, True)
    assert not batch._materialize_diag(owner, torch.randn(32, 512), torch.randn(10, 32, 10), "weight", False)
