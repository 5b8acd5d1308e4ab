"""Plan reports: per-step einsum with leg names, kernel kinds, FLOPs under both models, sizes, totals, peak memory."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import tnderiv

DT = torch.float64


@pytest.fixture
def plan() -> tnderiv.Plan:
    spec = tnderiv.Conv(4, 6, 3, stride=2, padding=1, groups=2)
    return tnderiv.plan(spec, {"x": (2, 4, 9, 9), "grad_out": (2, 6, 5, 5)}, quantity="per_sample_grad_weight", dtype=DT)


def test_text_report_lists_steps_kernels_and_both_flop_counts(plan: tnderiv.Plan) -> None:
    text = str(plan)
    steps = plan.steps()
    assert steps
    for step in steps:
        assert step.equation in text and f"[{step.kind}]" in text
        assert f"flops={step.flops:,}" in text and f"dense {step.flops_dense:,}" in text and f"size={step.size:,}" in text
        assert "c_in" in step.equation or "k0" in step.equation
    assert f"total flops={plan.flops:,}" in text and f"dense model {plan.dense_flops:,}" in text
    assert "peak memory=" in text and "order:" in text and "rejected:" in text
    assert plan.flops < plan.dense_flops and plan.peak_memory > 0
    assert plan.peak_size == max(s.size for s in steps if s.kind != "folded")


def test_dict_is_json_and_html_is_a_table(plan: tnderiv.Plan) -> None:
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["flops"] == plan.flops and data["flops_dense"] == plan.dense_flops
    term = data["terms"][0]
    assert term["path"] == [list(p) for p in plan.path]
    assert sum(c["chosen"] for c in term["candidates"]) == 1
    assert {"equation", "kernel", "flops", "flops_dense", "size"} <= set(term["steps"][0])
    html = plan._repr_html_()
    assert html.count("<tr>") == len(plan.steps()) + 2 and "FLOPs (dense)" in html


def test_path_info_and_cotengra_tree(plan: tnderiv.Plan) -> None:
    info = plan.info
    assert info.opt_cost > 0 and len(info.contraction_list) == len(plan.path)
    try:
        import cotengra  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="cotengra"):
            plan.to_cotengra()
        return
    tree = plan.to_cotengra()
    assert tree.N == len(plan.term_plans[0].network.nodes)


def test_to_cotengra_without_cotengra_names_the_package(plan: tnderiv.Plan, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cotengra", None)
    with pytest.raises(ImportError, match="pip install cotengra"):
        plan.to_cotengra()


def test_sum_plans_report_each_term_and_plan_time_rewrites() -> None:
    p = tnderiv.plan(tnderiv.Conv(3, 4, 1), {"x": (2, 3, 5, 5), "weight": (4, 3, 1, 1), "bias": (4,)}, quantity="forward", dtype=DT)
    text = str(p)
    assert "term 1:" in text and "term 2:" in text and "broadcast over" in text
    assert p.term_plans[0].plan_rewrites and "dense pattern" in p.term_plans[0].plan_rewrites
    assert repr(p).startswith("<Plan ")


@pytest.mark.parametrize("quantity", ["forward", "vjp_weight", "per_sample_grad_weight", "sum_grad_squared_weight", "kfac_input_expand", "kfac_input_reduce"])
def test_every_step_kind_is_a_listed_kernel_kind(quantity: str) -> None:
    from typing import get_args

    from tnderiv.plan.cost import KINDS, KernelKind

    assert KINDS == get_args(KernelKind)
    spec = tnderiv.Conv(4, 6, 3, stride=2, padding=1, groups=2)
    shapes = {"x": (2, 4, 9, 9), "grad_out": (2, 6, 5, 5), "weight": (6, 2, 3, 3), "tangent": (2, 4, 9, 9)}
    used = tnderiv.diagram(spec, quantity).operand_names
    p = tnderiv.plan(spec, {k: v for k, v in shapes.items() if k in used}, quantity=quantity, dtype=DT)
    assert {s.kind for s in p.steps()} <= set(KINDS)
