"""Caches: one report (``tnderiv.cache_info``), one reset (``clear_caches``), and a bound on live plans that holds."""

from __future__ import annotations

import gc

import pytest
import torch

import tnderiv
from tnderiv import api
from tnderiv.calculus.stats import STATISTICS
from tnderiv.plan import compiled
from tnderiv.plan.cache import LRUCache


def live_plans() -> int:
    gc.collect()
    return sum(type(o) is tnderiv.Plan for o in gc.get_objects())


def test_cache_info_names_every_cache():
    info = tnderiv.cache_info()
    for name in ("calls", "plans", "constants", "patterns", "derivations", "layouts", "module specs"):
        assert name in info.caches, name
    assert "kfac" not in info.caches  # KFAC runs through the call and plan caches, like every quantity
    per_call = max(4, 2 * len(STATISTICS))  # a KFAC side, or half and Gram of every statistic of one parameter
    assert info.plans_bound == per_call * info["calls"].maxsize + 2 * info["plans"].maxsize
    assert "compiled plans" in str(info)


def test_cache_info_reports_hits_of_warm_calls():
    lin = torch.nn.Linear(3, 2)
    x = torch.randn(7, 3)
    tnderiv.forward(lin, x)
    before = tnderiv.cache_info()["calls"]
    tnderiv.forward(lin, x)
    assert tnderiv.cache_info()["calls"].hits == before.hits + 1


def test_clear_caches_empties_every_cache():
    conv = torch.nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect")
    x, g = torch.randn(2, 2, 5, 5), torch.randn(2, 3, 5, 5)
    tnderiv.forward(conv, x)
    tnderiv.kfac(conv, x, g)
    tnderiv.grad_stats(conv, x, g, ("sum_grad_squared",), strategy="materialize")
    assert tnderiv.cache_info()["calls"].size > 0
    tnderiv.clear_caches()
    sizes = {name: i.size for name, i in tnderiv.cache_info().caches.items() if name != "module specs"}
    assert set(sizes.values()) == {0}, sizes
    assert tnderiv.cache_info()["module specs"].size == 0
    torch.testing.assert_close(tnderiv.forward(conv, x), conv(x))  # and everything still works afterwards


def test_live_plans_level_off_at_the_documented_bound(monkeypatch: pytest.MonkeyPatch):
    """Many distinct shapes (forward, chunked forward, KFAC): the caches never keep more plans than cache_info says.

    The caches are shrunk so that a few hundred shapes (10 ms of planning each) go far past every bound.
    """
    monkeypatch.setattr(api, "CALL_CACHE", LRUCache(maxsize=6))
    monkeypatch.setattr(compiled, "PLAN_CACHE", LRUCache(maxsize=6))
    gc.collect()
    baseline = live_plans()
    bound = tnderiv.cache_info().plans_bound
    assert bound == max(4, 2 * len(STATISTICS)) * 6 + 2 * 6
    lin = torch.nn.Linear(2, 2)
    counts = []
    for n in range(1, 61):
        x = torch.randn(n, 2)
        tnderiv.forward(lin, x)
        if n % 3 == 0:
            tnderiv.forward(lin, torch.randn(n, 3, 2), memory_limit=64)  # chunked: its chunk plans come from the plan cache
        if n % 4 == 0:
            tnderiv.kfac(lin, x, torch.randn(n, 2))
        if n % 5 == 0:  # glued quantities: a GramPlan per statistic, one for the GGN diagonal
            tnderiv.grad_stats(lin, x, torch.randn(n, 2))
            tnderiv.ggn(lin, x, torch.randn(3, n, 2), kind="diag")
        if n % 10 == 0:
            counts.append(live_plans() - baseline)
    assert max(counts) <= bound, counts
    assert max(counts[-3:]) <= max(counts[:3]), f"live plans keep growing: {counts}"
