"""The plan cache and inspectable plans: no planning on a repeated call, bounded size, optimize= choices."""

from __future__ import annotations

import gc
import weakref

import opt_einsum as oe
import pytest
import torch
import torch.nn.functional as F

import tnderiv
from tnderiv import api
from tnderiv.plan import compiled
from tnderiv.plan.cache import LRUCache

SPEC = tnderiv.Conv(2, 3, 3, stride=2, padding=1, bias=False)


def conv_inputs(size: int = 6, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(size)
    x = torch.randn(2, 2, size, size, generator=gen, dtype=dtype)
    w = torch.randn(3, 2, 3, 3, generator=gen, dtype=dtype)
    g = torch.randn(F.conv2d(x, w, stride=2, padding=1).shape, generator=gen, dtype=dtype)
    return x, w, g


def torch_weight_grad(x: torch.Tensor, w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    w = w.clone().requires_grad_(True)
    (gw,) = torch.autograd.grad(F.conv2d(x, w, stride=2, padding=1), w, g)
    return gw


@pytest.fixture
def count_planning(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts opt_einsum path searches and Plan constructions (the work a cached call must skip)."""
    calls = [0]
    real_path = oe.contract_path
    real_plan = compiled.Plan

    def counting_path(*args, **kwargs):
        calls[0] += 1
        return real_path(*args, **kwargs)

    class CountingPlan(real_plan):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            calls[0] += 1
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(oe, "contract_path", counting_path)
    monkeypatch.setattr(compiled, "Plan", CountingPlan)
    return calls


def test_repeated_call_does_not_plan_again(count_planning: list[int]) -> None:
    x, w, g = conv_inputs(size=9)  # a shape no other test uses
    first = tnderiv.vjp(SPEC, "weight", g, x=x)
    planned = count_planning[0]
    assert planned >= 1
    before, calls_before = tnderiv.PLAN_CACHE.info(), api.CALL_CACHE.info()
    second = tnderiv.vjp(SPEC, "weight", g, x=x)
    after, calls_after = tnderiv.PLAN_CACHE.info(), api.CALL_CACHE.info()
    assert count_planning[0] == planned, "the second call searched a path again"
    assert after.misses == before.misses
    # a warm call is one look-up in the call cache (spec, quantity, shapes, dtypes, devices)
    assert calls_after.hits == calls_before.hits + 1
    assert calls_after.misses == calls_before.misses
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(second, torch_weight_grad(x, w, g), rtol=1e-10, atol=1e-10)
    # new values of the same shapes reuse the plan as well
    x2, w2, g2 = (t + 1.0 for t in (x, w, g))
    result = tnderiv.vjp(SPEC, "weight", g2, x=x2)
    assert count_planning[0] == planned
    torch.testing.assert_close(result, torch_weight_grad(x2, w2, g2), rtol=1e-10, atol=1e-10)


def test_dtype_and_optimizer_get_their_own_plans() -> None:
    x, w, g = conv_inputs(size=10)
    tnderiv.vjp(SPEC, "weight", g, x=x)
    misses = tnderiv.PLAN_CACHE.info().misses
    gw32 = tnderiv.vjp(SPEC, "weight", g.float(), x=x.float())
    assert tnderiv.PLAN_CACHE.info().misses == misses + 1
    assert gw32.dtype == torch.float32
    tnderiv.vjp(SPEC, "weight", g, x=x, optimize="greedy")
    assert tnderiv.PLAN_CACHE.info().misses == misses + 2


def test_cache_stays_bounded_and_evicts_least_recently_used(monkeypatch: pytest.MonkeyPatch) -> None:
    cache: LRUCache = LRUCache(maxsize=3)
    monkeypatch.setattr(compiled, "PLAN_CACHE", cache)
    monkeypatch.setattr(api, "CALL_CACHE", LRUCache(maxsize=3))
    for size in range(11, 18):
        x, w, _ = conv_inputs(size)
        tnderiv.forward(SPEC, x, w)
        assert len(cache) <= 3
    assert cache.info().misses == 7
    # the last shape is cached, the first was dropped
    x, w, _ = conv_inputs(17)
    tnderiv.forward(SPEC, x, w)
    assert cache.info().misses == 7
    x, w, _ = conv_inputs(11)
    torch.testing.assert_close(tnderiv.forward(SPEC, x, w), F.conv2d(x, w, stride=2, padding=1), rtol=1e-10, atol=1e-10)
    assert cache.info().misses == 8


def test_lru_cache_order() -> None:
    cache: LRUCache[str] = LRUCache(maxsize=2)
    cache.get_or_build("a", lambda: "A")
    cache.get_or_build("b", lambda: "B")
    assert cache.get_or_build("a", lambda: "rebuilt") == "A"  # a is now the most recent
    cache.get_or_build("c", lambda: "C")  # evicts b
    assert cache.get_or_build("b", lambda: "B2") == "B2"
    assert cache.get_or_build("c", lambda: "rebuilt") == "C"
    assert len(cache) == 2
    assert cache.info().maxsize == 2
    with pytest.raises(ValueError, match="maxsize"):
        LRUCache(maxsize=0)


def test_cache_holds_no_user_tensors() -> None:
    x, w, _ = conv_inputs(size=8)
    tnderiv.forward(SPEC, x, w)
    refs = [weakref.ref(x), weakref.ref(w)]
    del x, w
    gc.collect()
    assert all(ref() is None for ref in refs), "a cached plan keeps a user tensor alive"


def test_plan_is_inspectable() -> None:
    x, w, g = conv_inputs(size=6)
    shapes = {"x": tuple(x.shape), "grad_out": tuple(g.shape)}
    p = tnderiv.plan(SPEC, shapes, quantity="vjp_weight", dtype=torch.float64)
    assert isinstance(p, tnderiv.Plan)
    assert p.path and all(isinstance(step, tuple) for step in p.path)
    steps = p.steps()
    assert len(steps) == len(p.path)
    assert p.flops == sum(step.flops for step in steps) > 0
    assert p.info.opt_cost > 0  # opt_einsum's PathInfo of the chosen order
    assert p.peak_size == max(step.size for step in steps) > 0
    text = str(p)
    for word in ("flops", "c_in", "k0", "grad_out", "x["):
        assert word in text
    assert "flops" in p.to_dict() and p.to_dict()["terms"][0]["path"]
    torch.testing.assert_close(p(x=x, grad_out=g), torch_weight_grad(x, w, g), rtol=1e-10, atol=1e-10)
    # a diagram plans the same way
    d = tnderiv.diagram(SPEC, "vjp_weight")
    p2 = tnderiv.plan(d, shapes, dtype=torch.float64)
    torch.testing.assert_close(p2(x=x, grad_out=g), torch_weight_grad(x, w, g), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="missing operands"):
        p(x=x)


@pytest.mark.parametrize("optimize", ["greedy", "optimal", "dp", "branch-2", "random-greedy", "auto-hq"])
def test_opt_einsum_optimizer_names(optimize: str) -> None:
    x, w, g = conv_inputs(size=7)
    got = tnderiv.vjp(SPEC, "weight", g, x=x, optimize=optimize)
    torch.testing.assert_close(got, torch_weight_grad(x, w, g), rtol=1e-10, atol=1e-10)


def test_optimizer_object_and_explicit_path() -> None:
    x, w, g = conv_inputs(size=7)
    expected = torch_weight_grad(x, w, g)
    got = tnderiv.vjp(SPEC, "weight", g, x=x, optimize=oe.DynamicProgramming(minimize="size"))
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    shapes = {"x": tuple(x.shape), "grad_out": tuple(g.shape)}
    operands = len(tnderiv.diagram(SPEC, "vjp_weight").nodes)
    path = [(0, 1)] * (operands - 1)  # left to right
    p = tnderiv.plan(SPEC, shapes, quantity="vjp_weight", optimize=path, dtype=torch.float64)
    assert p.path == path
    torch.testing.assert_close(p(x=x, grad_out=g), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(tnderiv.vjp(SPEC, "weight", g, x=x, optimize=path), expected, rtol=1e-10, atol=1e-10)


def test_unknown_optimizer_lists_valid_names() -> None:
    x, w, _ = conv_inputs(size=6)
    with pytest.raises(ValueError, match="not-an-optimizer") as info:
        tnderiv.forward(SPEC, x, w, optimize="not-an-optimizer")
    for name in ("greedy", "optimal", "dp", "auto"):
        assert repr(name) in str(info.value)
    with pytest.raises(TypeError, match="optimize"):
        tnderiv.forward(SPEC, x, w, optimize=3.5)


def test_clear_caches_forgets_every_plan(count_planning: list[int]) -> None:
    x, w, g = conv_inputs(size=19)
    tnderiv.vjp(SPEC, "weight", g, x=x)
    planned = count_planning[0]
    tnderiv.clear_caches()
    assert len(tnderiv.PLAN_CACHE) == 0 and len(api.CALL_CACHE) == 0
    result = tnderiv.vjp(SPEC, "weight", g, x=x)
    assert count_planning[0] > planned, "a call after clear_caches() must plan again"
    torch.testing.assert_close(result, torch_weight_grad(x, w, g), rtol=1e-10, atol=1e-10)
