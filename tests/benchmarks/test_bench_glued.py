"""The glued-vs-materialized benchmark's correctness check on two real layers (float64, batch 2, autograd oracles)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from benchmarks import bench_glued
from benchmarks.cases import suite_cases
from benchmarks.problem import Problem

LAYERS = ("2c2d/conv1", "3c3d/conv3")


@pytest.mark.parametrize("layer", LAYERS)
def test_every_way_matches_the_oracle(layer: str) -> None:
    case = next(c for c in suite_cases("cpu") if c.id == layer)
    errors = bench_glued.check(case)
    assert set(errors) == {f"{q}/{w}" for q in ("ggn", "stats") for w in bench_glued.WAYS} | {"ggn/public", "ggn/half+square"}
    assert max(errors.values()) < 1e-10


def test_forced_ways_really_differ() -> None:
    case = replace(next(c for c in suite_cases("cpu") if c.id == LAYERS[0]), batch=2)
    plans, _ = bench_glued.ggn_plans(Problem(case, dtype=torch.float64))
    assert plans["glued"].strategy == "glued" and plans["materialize"].strategy == "materialize"
    assert plans["auto"].strategy in ("glued", "materialize")


def test_check_catches_a_wrong_result(monkeypatch: pytest.MonkeyPatch) -> None:
    case = next(c for c in suite_cases("cpu") if c.id == LAYERS[0])  # planned by the first test: cached
    real = bench_glued.stats_oracle
    monkeypatch.setattr(bench_glued, "stats_oracle", lambda p: {k: 2 * v for k, v in real(p).items()})
    with pytest.raises(AssertionError, match="relative errors"):
        bench_glued.check(case)
