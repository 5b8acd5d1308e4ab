"""The structure-aware planner: candidate orders ranked by the cost model, plan-time rewrites, optimizers, constants.

Numbers are checked against torch (autograd / functional), never against tnderiv itself.
"""

from __future__ import annotations

import pytest
import torch

import tnderiv
from tnderiv.calculus import derive
from tnderiv.ir import Diagram, PaddingMode, PatternParams, operand, pattern
from tnderiv.plan.compiled import get_plan
from tnderiv.plan.cost import StepCost, grouped_weight_slowdown, total_time

DT = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)


def conv_setup(seed: int = 0, **hyper):
    gen = torch.Generator().manual_seed(seed)
    module = torch.nn.Conv2d(4, 6, 3, **hyper).double()
    x = torch.randn(3, 4, 9, 8, generator=gen, dtype=DT, requires_grad=True)
    y = module(x)
    g = torch.randn(y.shape, generator=gen, dtype=DT)
    gx, gw = torch.autograd.grad(y, (x, module.weight), g)
    return module, x.detach(), g, y.detach(), gx, gw


def test_candidates_are_ranked_by_the_structure_aware_score() -> None:
    module, x, g, _, _, gw = conv_setup(stride=2, padding=1)
    plan = tnderiv.plan(module, {"x": x.shape, "grad_out": g.shape}, quantity="vjp_weight", dtype=DT)
    candidates = plan.candidates
    assert len(candidates) >= 3 and sum(c.chosen for c in candidates) == 1
    chosen = next(c for c in candidates if c.chosen)
    assert chosen.time == min(c.time for c in candidates)
    assert {"convolution", "dp-flops"} <= {c.name.split(": ")[-1] for c in candidates}  # equal paths are listed once
    assert chosen.flops < chosen.flops_dense  # the dense model prices Π as a dense tensor
    torch.testing.assert_close(plan(x=x, grad_out=g), gw, **TOL)


def test_cost_model_prices_gathers_by_data_moved() -> None:
    gather = StepCost("gather", flops_dense=10**9, flops=0, moved=1000, size=500)
    gemm = StepCost("GEMM", flops_dense=10**6, flops=10**6, moved=1000, size=500)
    folded = StepCost("folded", flops_dense=10**12, flops=0, moved=0, size=10**6)
    assert gather.time < gemm.time and folded.time == 0
    assert total_time([gather, gemm]) == gather.time + gemm.time
    assert grouped_weight_slowdown(1, 100, 9) == 1.0  # not grouped
    assert grouped_weight_slowdown(64, 1, 9) == 1.0  # depthwise
    assert grouped_weight_slowdown(8, 64, 4) > grouped_weight_slowdown(8, 64, 16) > grouped_weight_slowdown(8, 64, 64) == 1.0
    assert grouped_weight_slowdown(8, 256 * 256, 64) > 1.0  # wide groups need more positions


@pytest.mark.parametrize("optimize", ["auto", "greedy", "dp", "optimal", "branch-2"])
def test_optimizer_choices_agree_with_torch(optimize: str) -> None:
    module, x, g, y, gx, gw = conv_setup(padding=1, dilation=2)
    w = module.weight.detach()
    assert torch.allclose(tnderiv.forward(module, x, optimize=optimize), y, **TOL)
    torch.testing.assert_close(tnderiv.vjp(module, "x", g, weight=w, x_shape=x.shape, optimize=optimize), gx, **TOL)
    torch.testing.assert_close(tnderiv.vjp(module, "weight", g, x=x, optimize=optimize), gw, **TOL)


def test_explicit_path_is_used_as_given() -> None:
    module, x, g, _, _, gw = conv_setup()
    d = tnderiv.diagram(module, "vjp_weight")
    pairwise = [(0, 1), (0, 1), (0, 1)]
    plan = tnderiv.plan(d, {"x": x.shape, "grad_out": g.shape}, optimize=pairwise, dtype=DT)
    assert plan.path == pairwise and len(plan.steps()) == 3
    torch.testing.assert_close(plan(x=x, grad_out=g), gw, **TOL)
    with pytest.raises(ValueError, match="valid options"):
        tnderiv.plan(d, {"x": x.shape, "grad_out": g.shape}, optimize="fastest")


def test_plan_time_rewrites_compete_with_the_derived_network() -> None:
    """A K = S convolution: the rewritten network (a GEMM on a reshaped input) and torch's convolution both enter the ranking."""
    module = torch.nn.Conv2d(3, 5, 2, stride=2, bias=False).double()
    x = torch.randn(2, 3, 6, 8, dtype=DT)
    plan = tnderiv.plan(module, {"x": x.shape, "grad_out": (2, 5, 3, 4)}, quantity="per_sample_grad_weight", dtype=DT)
    names = {c.name.split(": ")[0] for c in plan.candidates}
    assert names == {"rewritten", "as derived"}
    term = plan.term_plans[0]
    chosen = next(c for c in term.candidates if c.chosen)
    assert ("dense pattern" in term.rewrites) == chosen.name.startswith("rewritten")
    g = torch.randn(2, 5, 3, 4, dtype=DT)
    want = torch.func.vmap(torch.func.grad(lambda w, xi, gi: (torch.nn.functional.conv2d(xi[None], w, stride=2) * gi[None]).sum()), in_dims=(None, 0, 0))(module.weight.detach(), x, g)
    torch.testing.assert_close(plan(x=x, grad_out=g), want, **TOL)


def test_indivisible_input_is_narrowed_by_down_sampling() -> None:
    """Stride 2, kernel 1, input 9: the plan reads x through a strided view (no pattern left in the chosen network)."""
    module = torch.nn.Conv1d(2, 3, 1, stride=2, bias=False).double()
    x = torch.randn(2, 2, 9, dtype=DT)
    y = module(x).detach()
    g = torch.randn_like(y)
    plan = get_plan(derive(tnderiv.Conv.from_module(module).network({}), "vjp_weight"), {"x": tuple(x.shape), "grad_out": tuple(g.shape)}, x, optimize="greedy")
    assert any(c.name.startswith("rewritten") for c in plan.candidates)
    assert "down-sampling" in plan.term_plans[0].plan_rewrites
    gw = torch.autograd.grad(module(x), module.weight, g)[0]
    torch.testing.assert_close(plan(x=x, grad_out=g), gw, **TOL)


def test_constant_only_steps_are_folded_once_and_kept_on_the_device() -> None:
    """KFAC-reduce-like input factor: Σ_o of a reflect-padded pattern folds into Π̄ and runs as a GEMM."""
    params = PatternParams(1, 1, 1, PaddingMode.REFLECT)
    sizes = {"n": 3, "c": 2, "k": 3, "o": 5, "i": 5}
    d = Diagram((operand("x", "n", "c", "i"), pattern("k", "o", "i", params)), ("n", "c", "k"), sizes)
    simplified = tnderiv.simplify(d)
    assert any(n.display_name == "Π̄" for n in simplified.nodes)
    x = torch.randn(3, 2, 5, dtype=DT)
    plan = get_plan(simplified, {"x": (3, 2, 5)}, x)
    padded = torch.nn.functional.pad(x, (1, 1), mode="reflect")
    want = torch.stack([padded[..., k : k + 5].sum(-1) for k in range(3)], dim=-1)
    torch.testing.assert_close(plan(x=x), want, **TOL)
    again = get_plan(tnderiv.simplify(d), {"x": (3, 2, 5)}, x)
    assert again is plan  # cached
    two_constants = Diagram((operand("x", "n", "c", "k"), pattern("k", "o", "i", params), pattern("l", "o", "i", params), operand("y", "l")), ("n", "c"), dict(sizes, l=3))
    raw_plan = get_plan(two_constants, {"x": (3, 2, 3), "y": (3,)}, x, simplify=False)
    assert "folded" in [s.kind for s in raw_plan.steps()]
    yv = torch.randn(3, dtype=DT)
    pi = torch.zeros(3, 5, 5, dtype=DT)
    for k in range(3):
        for o in range(5):
            i = o + k - 1
            i = -i if i < 0 else (8 - i if i > 4 else i)
            pi[k, o, i] = 1
    want = torch.einsum("nck,koi,loi,l->nc", x[..., :3], pi, pi, yv)
    torch.testing.assert_close(raw_plan(x=x[..., :3].contiguous(), y=yv), want, **TOL)
    # another network with the same constant sub-network reuses the folded constant already on the device
    wider = Diagram(two_constants.nodes, ("n", "c"), dict(sizes, l=3, c=4))
    other = get_plan(wider, {"x": (3, 4, 3), "y": (3,)}, x, simplify=False)
    folded = [v for v in raw_plan.term_plans[0].program.initial if v is not None]
    assert folded and any(v is w for v in folded for w in other.term_plans[0].program.initial)


def test_linear_layers_plan_as_matrix_products() -> None:
    layer = torch.nn.Linear(5, 3).double()
    x = torch.randn(4, 2, 5, dtype=DT)
    y = layer(x)
    g = torch.randn_like(y)
    gw = torch.autograd.grad(y, layer.weight, g)[0]
    plan = tnderiv.plan(layer, {"x": x.shape, "grad_out": g.shape}, quantity="vjp_weight", dtype=DT)
    assert all(step.kind in ("GEMM", "batched GEMM", "reduction", "transpose") for step in plan.steps())
    torch.testing.assert_close(plan(x=x, grad_out=g.detach()), gw, **TOL)
    torch.testing.assert_close(tnderiv.forward(layer, x), y.detach(), **TOL)
