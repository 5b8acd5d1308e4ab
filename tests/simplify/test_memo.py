"""The memo of simplifications: exact keys (never an isomorphic look-alike), cleared by clear_caches, and
results that stay correct for every shape of one spec (against torch.autograd in float64)."""

from __future__ import annotations

import pytest
import sympy
import torch

import tnderiv
from tnderiv.ir import Diagram, delta, operand
from tnderiv.simplify import check_rewrites, simplify
from tnderiv.simplify.driver import _simplify
from tnderiv.simplify.memo import SIMPLIFIED, exact_key
from tnderiv.simplify.rule import ordered_rules


def _renamed(leg: str) -> Diagram:
    """``Σ_leg A[i, leg] δ(leg, j)``: the same value for every name of the summed leg."""
    return Diagram((operand("A", "i", leg), delta(leg, "j")), ("i", "j"), {"i": 3, leg: 4, "j": 4})


def test_repeated_input_returns_the_stored_result_which_equals_a_fresh_one() -> None:
    SIMPLIFIED.clear()
    d = tnderiv.diagram(tnderiv.Conv(2, 3, 3, padding=1), "per_sample_grad_weight", simplify=False)
    first = simplify(d)
    assert SIMPLIFIED.info().misses == 1 and SIMPLIFIED.info().hits == 0
    again = simplify(d)
    assert again is first and SIMPLIFIED.info().hits == 1
    fresh = _simplify(d, ordered_rules("derive"), False)
    assert str(fresh) == str(first) and fresh == first


def test_isomorphic_inputs_with_other_names_do_not_share_an_entry() -> None:
    """Diagrams equal up to renaming summed legs are ``==``, but the memo keys them apart (results keep their own names)."""
    SIMPLIFIED.clear()
    a, b = _renamed("s"), _renamed("t")
    assert a == b and exact_key(a) != exact_key(b)
    simplify(a, trace=True), simplify(b, trace=True)
    assert SIMPLIFIED.info().misses == 2 and SIMPLIFIED.info().hits == 0


def test_types_of_equal_numbers_stay_apart() -> None:
    a = Diagram((operand("A", "i"),), ("i",), {"i": 3}, coefficient=sympy.Integer(2))
    b = Diagram((operand("A", "i"),), ("i",), {"i": 3}, coefficient=sympy.Float(2.0))
    assert exact_key(a) != exact_key(b)


def test_trace_hit_starts_at_the_given_expression() -> None:
    SIMPLIFIED.clear()
    d = tnderiv.diagram(tnderiv.Conv(2, 3, 1), "vjp_weight", simplify=False)
    first = simplify(d, trace=True, stage="plan")
    copy = tnderiv.diagram(tnderiv.Conv(2, 3, 1), "vjp_weight", simplify=False)
    second = simplify(copy, trace=True, stage="plan")
    assert SIMPLIFIED.info().hits == 1
    assert second.start is copy and second.steps == first.steps and second.result is first.result
    assert simplify(d, stage="plan") == first.result  # trace and no trace are separate entries, same result


def test_rules_are_part_of_the_key() -> None:
    SIMPLIFIED.clear()
    d = tnderiv.diagram(tnderiv.Conv(2, 3, 1), "vjp_weight", simplify=False)
    only_deltas = simplify(d, rules=["delta elimination"])
    everything = simplify(d)
    assert SIMPLIFIED.info().misses == 2 and only_deltas != everything


def test_checking_bypasses_the_memo() -> None:
    SIMPLIFIED.clear()
    d = tnderiv.diagram(tnderiv.Conv(1, 2, 3), "vjp_weight", simplify=False)
    with check_rewrites(True):
        simplify(d), simplify(d)
    assert SIMPLIFIED.info().misses == 0 and len(SIMPLIFIED) == 0


def test_clear_caches_clears_the_memo() -> None:
    simplify(tnderiv.diagram(tnderiv.Conv(2, 3, 3), "forward", simplify=False))
    assert len(SIMPLIFIED) > 0
    info = tnderiv.cache_info()
    assert "rewrites" in info.caches and info["rewrites"].size == len(SIMPLIFIED)
    tnderiv.clear_caches()
    assert len(SIMPLIFIED) == 0 and tnderiv.cache_info()["rewrites"].size == 0


@pytest.mark.parametrize("x_shape", [(2, 3, 8, 8), (3, 3, 7, 10), (1, 3, 5, 6)])
def test_one_spec_many_shapes_against_autograd(x_shape: tuple[int, ...]) -> None:
    """Derivations are cached per spec (shape-free) and memoized rewrites per exact bound term: every shape
    after the first reuses them, and each result matches torch.autograd in float64."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1).double()
    spec = tnderiv.Conv(3, 4, 3, stride=2, padding=1)
    x = torch.randn(x_shape, dtype=torch.float64, requires_grad=True)
    out = conv(x)
    g = torch.randn_like(out)
    gx, gw, gb = torch.autograd.grad(out, (x, conv.weight, conv.bias), g)
    w, b = conv.weight.detach(), conv.bias.detach()
    torch.testing.assert_close(tnderiv.forward(spec, x.detach(), w, b), out.detach())
    torch.testing.assert_close(tnderiv.vjp(spec, "x", g, weight=w, x_shape=x_shape), gx)
    torch.testing.assert_close(tnderiv.vjp(spec, "weight", g, x=x.detach()), gw)
    torch.testing.assert_close(tnderiv.vjp(spec, "bias", g), gb)
    per_sample = tnderiv.per_sample_grad(spec, x.detach(), g)
    oracle_w = []
    for n in range(x_shape[0]):
        xn = x[n : n + 1].detach()
        gwn, gbn = torch.autograd.grad(conv(xn), (conv.weight, conv.bias), g[n : n + 1])
        oracle_w.append(gwn)
        torch.testing.assert_close(per_sample["weight"][n], gwn)
        torch.testing.assert_close(per_sample["bias"][n], gbn)
    loop = torch.stack(oracle_w)
    stats = tnderiv.grad_stats(spec, x.detach(), g, stats=("sum_grad_squared", "batch_l2"), params=["weight"])
    torch.testing.assert_close(stats["sum_grad_squared"]["weight"], (loop**2).sum(0))
    torch.testing.assert_close(stats["batch_l2"]["weight"], (loop**2).flatten(1).sum(1))
