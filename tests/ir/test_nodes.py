"""Nodes validate themselves; labels carry everything but leg names; patterns and padding modes parse strictly."""

from __future__ import annotations

import numpy as np
import pytest
from dense_ir import evaluate

from tnderiv.ir import (
    AxisView,
    Diagram,
    Node,
    NodeKind,
    PaddingMode,
    PatternParams,
    delta,
    ones,
    operand,
    pattern,
    split_groups,
)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Node(NodeKind.OPERAND, ("a", "a"), name="x"), r"node 'x' repeats a leg: \('a', 'a'\)"),
        (lambda: Node(NodeKind.PATTERN, ("k", "o")), r"a pattern node needs PatternParams and legs \(k, o, i\)"),
        (lambda: Node(NodeKind.PATTERN, ("k", "o", "i")), "a pattern node needs PatternParams"),
        (lambda: Node(NodeKind.OPERAND, ("a",)), "an operand node needs a name"),
        (lambda: Node(NodeKind.SCALAR, ("a",)), "a scalar node has no legs"),
        (lambda: Node(NodeKind.OPERAND, ("a", "b"), name="x", groups=(1,)), r"groups \(1,\) do not cover the legs"),
        (lambda: Node(NodeKind.OPERAND, ("a", "b"), name="x", view=(None,)), "does not match the axes"),
        (lambda: Node(NodeKind.OPERAND, ("a",), name="x", view=(AxisView(4, (1, 2)),)), "does not match the axes"),
        (lambda: Node(NodeKind.FOLDED, ("a",)), r"a folded node needs a constant diagram with open legs matching \('a',\)"),
    ],
)
def test_invalid_nodes_raise_naming_what_is_wrong(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_operand_axes_group_legs() -> None:
    x = operand("x", "n", ("g", "c"), "i")
    assert x.legs == ("n", "g", "c", "i") and x.groups == (1, 2, 1) and x.axis_groups == (("n",), ("g", "c"), ("i",))
    assert x.axis_sizes({"n": 2, "g": 3, "c": 4, "i": 5}) == (2, 12, 5)
    assert operand("w", "a", "b").groups is None  # one axis per leg: no grouping recorded
    assert split_groups(("a", "b", "c"), (2, 0, 1)) == (("a", "b"), (), ("c",))
    viewed = Node(NodeKind.OPERAND, ("o", "k"), name="x", groups=(2,), view=(AxisView(7, (2, 1)),))
    assert viewed.axis_sizes({"o": 3, "k": 3}) == (7,)


def test_labels_ignore_leg_names_but_not_anything_else() -> None:
    a, b = operand("x", "n", "a"), operand("x", "m", "b")
    assert a.label() == b.label() and a.with_legs(("m", "b")) == b
    assert operand("y", "n", "a").label() != a.label()
    assert operand("x", ("n", "a")).label() != a.label()  # merged axes
    p1, p2 = PatternParams(stride=2), PatternParams(stride=2, mode=PaddingMode.REFLECT)
    assert pattern("k", "o", "i", p1).label() != pattern("k", "o", "i", p2).label()
    assert p1.label() == "S=2,D=1,P=0,zeros" and p2.label().endswith("reflect")
    assert Node(NodeKind.SCALAR, (), value=0.5).display_name == "0.5" and delta("a", "b").display_name == "δ"
    assert ones("a").is_constant and not a.is_constant


def test_padding_mode_parse_names_the_valid_modes() -> None:
    assert PaddingMode.parse("circular") is PaddingMode.CIRCULAR and PaddingMode.parse(PaddingMode.ZEROS) is PaddingMode.ZEROS
    with pytest.raises(ValueError, match=r"padding_mode='mirror' is not supported; expected one of 'zeros', 'reflect', 'replicate', 'circular'"):
        PaddingMode.parse("mirror")


def test_constant_nodes_have_their_dense_values() -> None:
    # δ[a, b] · ones[c] · 0.5 summed over b: an identity broadcast along c, halved
    d = Diagram((delta("a", "b"), ones("c"), Node(NodeKind.SCALAR, (), value=0.5)), ("a", "c"), {"a": 3, "b": 3, "c": 2})
    np.testing.assert_allclose(evaluate(d, {}), np.full((3, 2), 0.5))
