"""Diagrams validate themselves and their checked edits; open groups shape the result (dense numpy oracle)."""

from __future__ import annotations

import numpy as np
import pytest
import sympy
from dense_ir import evaluate

from tnderiv.ir import Diagram, ones, operand, size_symbol

RNG = np.random.default_rng(1)


@pytest.mark.parametrize(
    ("nodes", "open_legs", "sizes", "groups", "match"),
    [
        ((operand("x", "n", "a"),), ("n",), {"n": 2}, None, r"legs without a size: \['a'\]"),
        ((operand("x", "n", "a"),), ("n", "n"), {"n": 2, "a": 3}, None, r"open legs repeat: \('n', 'n'\)"),
        ((operand("x", "n", "a"),), ("n", "b"), {"n": 2, "a": 3, "b": 4}, None, r"open legs \['b'\] are on no node"),
        ((operand("x", "n", "a"),), ("n", "a"), {"n": 2, "a": 3}, (1,), r"open_groups \(1,\) do not cover open legs"),
    ],
)
def test_invalid_diagrams_raise_naming_what_is_wrong(nodes, open_legs, sizes, groups, match) -> None:
    with pytest.raises(ValueError, match=match):
        Diagram(nodes, open_legs, sizes, open_groups=groups)


def test_facts_of_a_diagram() -> None:
    d = Diagram((operand("x", "n", "a"), operand("w", "a", "b"), operand("x", "n", "c")), ("n", "b"), {"n": 2, "a": 3, "b": 4, "c": "C"})
    assert d.legs == ("n", "a", "b", "c") and d.summed_legs == ("a", "c")
    assert d.leg_count["n"] == 2 and d.nodes_with("a") == (0, 1)
    assert d.operand_names == ("x", "w") and d.free_symbols() == {size_symbol("C")}
    assert list(d.sizes) == sorted(d.sizes)  # stored in one order, whatever order was given
    assert d.to_einsum() == "x[n,a],w[a,b],x[n,c]->[n,b]" and str(d.scaled(3)).startswith("3·")


def test_open_groups_merge_open_legs_into_result_axes() -> None:
    x, w = RNG.standard_normal((2, 3)), RNG.standard_normal((3, 4, 5))
    d = Diagram((operand("x", "n", "a"), operand("w", "a", "b", "c")), ("n", "b", "c"), {"n": 2, "a": 3, "b": 4, "c": 5}, open_groups=(1, 2))
    assert d.open_axis_groups == (("n",), ("b", "c"))
    value = evaluate(d, {"x": x, "w": w}).reshape(2, 20)  # the result's axes: n and (b c) row-major
    np.testing.assert_allclose(value, x @ w.reshape(3, 20))
    assert d != Diagram(d.nodes, d.open_legs, d.sizes)  # the grouping is part of the value's shape
    assert d.replace(open_legs=("n", "b")).open_groups is None  # another number of open legs: groups reset
    assert d.replace(open_legs=("b", "c", "n")).open_groups == (1, 2)  # as many: kept (the caller's layout)
    assert d.replace(coefficient=2).open_groups == (1, 2)


def test_rename_and_replace_are_checked() -> None:
    d = Diagram((operand("x", "n", "a"), operand("w", "a", "b")), ("n", "b"), {"n": 2, "a": 3, "b": 4})
    with pytest.raises(KeyError, match=r"cannot rename legs \['z'\]: the diagram has legs \['a', 'b', 'n'\]"):
        d.rename({"z": "y"})
    with pytest.raises(ValueError, match="merges distinct legs"):
        d.rename({"a": "b"})
    with pytest.raises(ValueError, match=r"legs without a size: \['m'\]"):
        d.replace(nodes=(operand("x", "m", "a"),), open_legs=("m",))
    grown = d.replace(nodes=(*d.nodes, ones("m")), open_legs=("n", "b", "m"), sizes={"m": 5})
    x, w = RNG.standard_normal((2, 3)), RNG.standard_normal((3, 4))
    np.testing.assert_allclose(evaluate(grown, {"x": x, "w": w}), np.broadcast_to((x @ w)[:, :, None], (2, 4, 5)))
    assert d.fresh_leg("q") == "q" and d.fresh_leg("a") == "a_1" and d.fresh_leg("a", taken=("a_1",)) == "a_2"


def test_symbolic_sizes_and_coefficients_are_sympy() -> None:
    d = Diagram((operand("x", "n", "a"),), ("n",), {"n": "N", "a": 3}, coefficient=sympy.Rational(1, 2))
    assert d.sizes["n"] == size_symbol("N") and d.coefficient == sympy.Rational(1, 2)
    x = RNG.standard_normal((2, 3))
    concrete = Diagram(d.nodes, d.open_legs, {"n": 2, "a": 3}, coefficient=d.coefficient)
    np.testing.assert_allclose(evaluate(concrete, {"x": x}), x.sum(axis=1) / 2)
