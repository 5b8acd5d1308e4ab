"""The driver: recorded steps, stages, simplify=False, and the debug switch that re-checks every rewrite numerically."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import tnderiv
from tnderiv.calculus import derive
from tnderiv.ir import Diagram, NodeKind, operand
from tnderiv.simplify import RULES, RewriteCheckError, check_rewrites, checking, rule, simplify
from tnderiv.simplify.rule import ordered_rules


def test_trace_records_each_rule_and_ends_at_the_result() -> None:
    raw = tnderiv.diagram(tnderiv.Conv(2, 3, 1), "vjp_weight", simplify=False)
    derivation = tnderiv.simplify(raw, trace=True, stage="plan")
    names = [step.rule for step in derivation.steps]
    assert "delta elimination" in names and "dense pattern" in names
    assert derivation.steps[0].before == raw and derivation.steps[-1].after.canonical_hash
    assert derivation.result == tnderiv.simplify(raw, stage="plan")
    text = str(derivation)
    assert text.startswith("start:") and "dense pattern:" in text and "result:" in text


def test_stages_keep_open_legs_at_derive_time() -> None:
    derive_rules = {r.name for r in ordered_rules("derive")}
    plan_rules = {r.name for r in ordered_rules("plan")}
    assert derive_rules < plan_rules
    assert {"squeeze open legs", "merge open legs", "dense pattern", "down-sampling"} == plan_rules - derive_rules
    for quantity in ("forward", "vjp_x", "vjp_weight", "per_sample_grad_weight"):
        raw = tnderiv.diagram(tnderiv.Conv(2, 2, 1, stride=1), quantity, simplify=False)
        simplified = tnderiv.simplify(raw)
        for before, after in zip(raw.terms if hasattr(raw, "terms") else (raw,), simplified.terms if hasattr(simplified, "terms") else (simplified,)):
            assert before.open_legs == after.open_legs and before.open_groups == after.open_groups
    with pytest.raises(ValueError, match="one at a time"):
        simplify(tnderiv.diagram(tnderiv.Conv(2, 2, 1), "forward"), stage="plan")
    with pytest.raises(ValueError, match="stage="):
        ordered_rules("later")


def test_simplify_false_keeps_the_derivation_and_gives_the_same_numbers() -> None:
    spec = tnderiv.Conv(2, 3, 2, stride=2)
    net = spec.network({})
    raw, simple = derive(net, "vjp_weight", False), derive(net, "vjp_weight", True)
    assert any(n.kind is NodeKind.DELTA for n in raw.nodes) and not any(n.kind is NodeKind.DELTA for n in simple.nodes)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 6, 6, generator=gen, dtype=torch.float64)
    g = torch.randn(2, 3, 3, 3, generator=gen, dtype=torch.float64)
    off = tnderiv.plan(raw, {"x": x.shape, "grad_out": g.shape}, dtype=torch.float64)
    from tnderiv.plan.compiled import get_plan

    plain = get_plan(raw, {"x": tuple(x.shape), "grad_out": tuple(g.shape)}, x, simplify=False)
    assert plain.term_plans[0].rewrites == () and off.term_plans[0].rewrites
    want = torch.nn.grad.conv2d_weight(x, (3, 2, 2, 2), g, stride=2)
    for p in (off, plain):
        torch.testing.assert_close(p(x=x, grad_out=g), want, rtol=1e-10, atol=1e-10)


@pytest.fixture
def broken_rule():
    """A rule that drops an operand (changes the value): registered for one test only."""

    @rule("test: drop a node", priority=99)
    def drop(diagram: Diagram) -> Diagram | None:
        if len(diagram.nodes) > 1 and diagram.nodes[-1].kind is NodeKind.OPERAND and not set(diagram.nodes[-1].legs) & set(diagram.open_legs):
            return diagram.replace(nodes=diagram.nodes[:-1])
        return None

    yield "test: drop a node"
    del RULES["test: drop a node"]


def test_debug_switch_catches_a_wrong_rule(broken_rule: str) -> None:
    d = Diagram((operand("x", "n", "a"), operand("y", "a")), ("n",), {"n": 2, "a": 3})
    assert simplify(d, rules=[broken_rule]) != d  # unchecked, the wrong rewrite goes through
    assert not checking()
    with check_rewrites(True):
        assert checking()
        with pytest.raises(RewriteCheckError, match="drop a node"):
            simplify(d, rules=[broken_rule])
    assert not checking()


def test_debug_switch_passes_every_real_rewrite_of_conv_quantities() -> None:
    with check_rewrites(True):
        for spec in (tnderiv.Conv(2, 4, 3, stride=2, padding=1, groups=2), tnderiv.Conv(2, 2, 2, stride=2, dims=1), tnderiv.Conv(2, 3, 1, transposed=True, stride=1)):
            for quantity in ("forward", "vjp_x", "vjp_weight", "per_sample_grad_weight"):
                simplify(tnderiv.diagram(spec, quantity, simplify=False))
    with pytest.raises(TypeError, match="enabled="):
        check_rewrites("yes")  # type: ignore[arg-type]


def test_debug_switch_from_the_environment() -> None:
    code = "from tnderiv.simplify.check import checking; print(checking())"
    env = dict(os.environ, TNDERIV_CHECK_REWRITES="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
