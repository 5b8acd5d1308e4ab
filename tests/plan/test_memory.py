"""memory_limit: the contraction is split over the batch leg so that no intermediate exceeds the budget; same result."""

from __future__ import annotations

import pytest
import torch

import tnderiv
from tnderiv.calculus import derive
from tnderiv.ir import Diagram, operand
from tnderiv.plan.compiled import get_plan

DT = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)


def conv_case(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    module = torch.nn.Conv2d(3, 5, 3, padding=1, padding_mode="reflect").double()
    x = torch.randn(7, 3, 6, 5, generator=gen, dtype=DT)
    g = torch.randn(7, 5, 6, 5, generator=gen, dtype=DT)
    return module, x, g


def step_sizes(plan: tnderiv.Plan) -> list[int]:
    """Bytes of every intermediate of the plan that runs (a chunk's plan when chunked)."""
    runs = [plan._chunked._sub_plan(length) for _, length in plan._chunked.pieces] if plan._chunked is not None else [plan]
    return [s.size * 8 for p in runs for s in p.steps() if s.kind != "folded"]


@pytest.mark.parametrize("quantity", ["forward", "vjp_weight", "per_sample_grad_weight", "vjp_x"])
def test_chunked_plans_give_the_same_result_within_the_budget(quantity: str) -> None:
    module, x, g = conv_case()
    spec = tnderiv.Conv.from_module(module)
    expr = derive(spec.network({}), quantity)
    tensors = {"x": x, "grad_out": g, "weight": module.weight.detach(), "bias": module.bias.detach()}
    shapes = {name: tuple(tensors[name].shape) for name in expr.operand_names}
    if quantity == "vjp_x":
        shapes["output"] = tuple(x.shape)
    operands = {name: tensors[name] for name in expr.operand_names}
    full = get_plan(expr, shapes, x, optimize="greedy")
    limit = full.largest_intermediate_bytes // 3
    chunked = get_plan(expr, shapes, x, optimize="greedy", memory_limit=limit)
    assert chunked.chunks is not None and chunked.chunks[0] == "n" and chunked.chunks[2] >= 3
    assert max(step_sizes(chunked)) <= limit
    xr = x.clone().requires_grad_(True)
    y = module(xr)
    gx, gw = torch.autograd.grad(y, (xr, module.weight), g)
    want = {
        "forward": y.detach(),
        "vjp_x": gx,
        "vjp_weight": gw,
        "per_sample_grad_weight": torch.stack([torch.autograd.grad(module(x[n : n + 1]), module.weight, g[n : n + 1])[0] for n in range(7)]),
    }[quantity]
    torch.testing.assert_close(chunked(operands), want, **TOL)
    torch.testing.assert_close(full(operands), want, **TOL)
    assert "memory_limit=" in str(chunked)


def test_a_budget_the_plan_already_fits_changes_nothing() -> None:
    module, x, g = conv_case()
    expr = derive(tnderiv.Conv.from_module(module).network({}), "vjp_weight")
    plan = get_plan(expr, {"x": tuple(x.shape), "grad_out": tuple(g.shape)}, x, memory_limit=10**9)
    assert plan.chunks is None and plan.to_dict()["chunks"] is None


def test_impossible_budgets_and_bad_values_raise() -> None:
    module, x, g = conv_case()
    expr = derive(tnderiv.Conv.from_module(module).network({}), "vjp_weight")
    shapes = {"x": tuple(x.shape), "grad_out": tuple(g.shape)}
    with pytest.raises(ValueError, match="too small"):
        get_plan(expr, shapes, x, optimize="greedy", memory_limit=8)
    for bad in (0, -5, 1.5, True, "1GB"):
        with pytest.raises(ValueError, match="memory_limit"):
            get_plan(expr, shapes, x, memory_limit=bad)
    no_batch = Diagram((operand("a", "i", "j"), operand("b", "j", "k")), ("i", "k"), {"i": 40, "j": 3, "k": 40})
    a = torch.randn(40, 3, dtype=DT)
    with pytest.raises(ValueError, match="no batch-like leg"):
        get_plan(no_batch, {"a": (40, 3), "b": (3, 40)}, a, memory_limit=1000)
