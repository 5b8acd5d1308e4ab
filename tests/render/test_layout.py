"""The layout model: every leg drawn once, every node placed, nothing on top of anything, paper conventions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from render_checks import layout_problems

from tnderiv.calculus import QUANTITIES, derive, glue
from tnderiv.ir import Diagram, delta, ones, operand
from tnderiv.layers import Conv, Linear
from tnderiv.render import layout_diagram, picture_of
from tnderiv.render.model import LegKind, ShapeKind
from tnderiv.simplify import simplify

QUANTITY_NAMES = ("forward", "vjp_x", "vjp_weight", "vjp_bias", "jvp_x", "per_sample_grad")
SPECS = {
    "linear": (Linear(3, 4), {"x": (2, 3)}),
    "linear_seq": (Linear(3, 4), {"x": (2, 5, 3)}),
    "conv1d": (Conv(2, 4, 3, dims=1), {}),
    "conv2d": (Conv(2, 4, 3, dims=2), {}),
    "conv3d_grouped": (Conv(4, 4, 2, dims=3, stride=2, groups=2), {}),
    "conv2d_transposed": (Conv(2, 4, 3, dims=2, stride=2, transposed=True), {}),
}


def _terms(expr):
    return getattr(expr, "terms", (expr,))


@pytest.mark.parametrize("quantity", QUANTITY_NAMES)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_core_quantities_are_drawn_cleanly(name: str, quantity: str) -> None:
    spec, shapes = SPECS[name]
    expr = derive(spec.network(shapes), quantity)
    for term in _terms(expr):
        picture = layout_diagram(term)
        assert layout_problems(term, picture) == []


@pytest.mark.parametrize("quantity", sorted(set(QUANTITIES) - {"forward", "vjp", "jvp", "per_sample_grad"}))
def test_registered_curvature_quantities_are_drawn_cleanly(quantity: str) -> None:
    network = Conv(2, 4, 3, dims=2).network({})
    expr = derive(network, quantity)
    for term in _terms(expr):
        assert layout_problems(term, layout_diagram(term)) == []


def _shape_of(picture, node_index):
    return next(s for s in picture.shapes if s.node == node_index)


def test_data_flows_left_to_right_and_patterns_stack_by_dimension() -> None:
    forward = derive(Conv(2, 4, 3, dims=3).network({}), "forward").terms[0]
    picture = layout_diagram(forward)
    kinds = [n.kind.value for n in forward.nodes]
    x = _shape_of(picture, forward.nodes.index(next(n for n in forward.nodes if n.name == "x")))
    w = _shape_of(picture, forward.nodes.index(next(n for n in forward.nodes if n.name == "weight")))
    patterns = [_shape_of(picture, i) for i, k in enumerate(kinds) if k == "pattern"]
    assert len(patterns) == 3
    assert all(x.center[0] < p.center[0] < w.center[0] for p in patterns)
    assert len({p.center[0] for p in patterns}) == 1  # one column
    ys = [p.center[1] for p in patterns]  # Π0 on top, then Π1, Π2
    assert ys == sorted(ys, reverse=True)


def test_batch_leg_of_per_sample_gradient_is_a_shared_dot() -> None:
    expr = derive(Conv(2, 4, 3, dims=2).network({}), "per_sample_grad")
    picture = layout_diagram(expr)
    n = next(leg for leg in picture.legs if leg.name == "n")
    assert n.kind is LegKind.HYPEREDGE and n.open
    assert len(n.paths) == 3  # spokes to x and grad_out, and the open stub
    assert "dot:n" in n.ends and any(s.key == "dot:n" and s.kind is ShapeKind.HYPEREDGE for s in picture.shapes)


def test_glued_copies_are_mirrored() -> None:
    psg = derive(Conv(2, 4, 3, dims=1).network({}), "per_sample_grad")
    glued = simplify(glue(psg, psg, shared=psg.open_legs, open_legs=("n",)))
    picture = layout_diagram(glued)
    assert layout_problems(glued, picture) == []
    by_node = {s.node: s for s in picture.shapes if s.node is not None}
    half = len(glued.nodes) // 2
    vertical_axis = by_node[0].center[1] == pytest.approx(by_node[half].center[1])
    for a in range(half):  # glue puts the copy's nodes after the original's
        copy, image = by_node[a].center, by_node[a + half].center
        if vertical_axis:  # the copy on the left, its mirror image on the right
            assert copy[1] == pytest.approx(image[1]) and copy[0] == pytest.approx(-image[0]) and copy[0] < 0
        else:  # the copy above its mirror image
            assert copy[0] == pytest.approx(image[0]) and copy[1] == pytest.approx(-image[1]) and copy[1] > 0
    with pytest.raises(ValueError, match="mirror=True"):
        layout_diagram(psg, mirror=True)
    flat = layout_diagram(glued, mirror=False)
    assert layout_problems(glued, flat) == []


def test_pos_pins_nodes_and_dots() -> None:
    expr = derive(Conv(2, 4, 3, dims=1).network({}), "per_sample_grad")
    picture = layout_diagram(expr, pos={"x": (-3.0, 2.0), 1: (0.5, -2.0), "leg:n": (1.0, 3.0)})
    assert _shape_of(picture, 0).center == (-3.0, 2.0)
    assert _shape_of(picture, 1).center == (0.5, -2.0)
    assert next(s for s in picture.shapes if s.key == "dot:n").center == (1.0, 3.0)
    assert layout_problems(expr, picture) == []


@pytest.mark.parametrize(
    ("pos", "error", "match"),
    [
        ({"nope": (0, 0)}, ValueError, "pos key 'nope'"),
        ({99: (0, 0)}, ValueError, "pos key 99"),
        ({"x": (0,)}, TypeError, "pair of numbers"),
    ],
)
def test_bad_pos_raises(pos, error, match) -> None:
    expr = derive(Linear(3, 4).network({}), "per_sample_grad")
    with pytest.raises(error, match=match):
        layout_diagram(expr, pos=pos)


def test_unit_legs_are_hidden_only_on_request() -> None:
    forward = derive(Conv(2, 4, 3, dims=1).network({}), "forward").terms[0]
    assert "g" in layout_diagram(forward).hidden_legs
    shown = layout_diagram(forward, hide_unit_legs=False)
    assert "g" in {leg.name for leg in shown.legs} and not shown.hidden_legs
    assert layout_problems(forward, shown) == []


def test_raw_derivation_diagrams_with_deltas_and_ones() -> None:
    network = Conv(2, 4, 3, dims=2).network({})
    derivation = simplify(QUANTITIES["vjp"].build(network, "weight"), trace=True)
    for step in derivation.steps:
        for term in _terms(step.after):
            assert layout_problems(term, layout_diagram(term, hide_unit_legs=False)) == []


def test_sum_places_terms_left_to_right_with_signs_and_coefficients() -> None:
    a = Diagram((operand("x", "n", "c"), operand("w", "c")), ("n",), {"n": 3, "c": 4})
    b = Diagram((operand("x", "n", "c"), ones("c")), ("n",), {"n": 3, "c": 4}, coefficient=-0.5)
    picture = picture_of(a.replace(coefficient=2) + b if hasattr(a, "__add__") else _sum(a.replace(coefficient=2), b))
    texts = sorted(picture.texts, key=lambda t: t.center[0])
    assert [t.plain for t in texts] == ["2", "−", "0.5"]
    xs = sorted(s.center[0] for s in picture.shapes)
    assert texts[0].center[0] < xs[0] and texts[1].center[0] > xs[1]


def _sum(*terms):
    from tnderiv.ir import DiagramSum

    return DiagramSum(terms)


def test_every_leg_of_a_hand_made_network_with_a_summed_stub() -> None:
    d = Diagram(
        (operand("a", "i", "j"), operand("b", "j", "k"), delta("k", "l", "m")),
        ("i", "l"),
        {"i": 2, "j": 3, "k": 4, "l": 4, "m": 4},
    )
    picture = layout_diagram(d)
    assert layout_problems(d, picture) == []
    m = next(leg for leg in picture.legs if leg.name == "m")
    assert m.kind is LegKind.STUB and not m.open


@settings(max_examples=20, deadline=None)
@given(
    dims=st.integers(1, 3),
    stride=st.integers(1, 3),
    groups=st.sampled_from([1, 2]),
    padding=st.integers(0, 2),
    quantity=st.sampled_from(QUANTITY_NAMES),
)
def test_convolution_sweep(dims: int, stride: int, groups: int, padding: int, quantity: str) -> None:
    spec = Conv(2 * groups, 2 * groups, 3, dims=dims, stride=stride, groups=groups, padding=padding)
    expr = derive(spec.network({}), quantity)
    for term in _terms(expr):
        assert layout_problems(term, layout_diagram(term)) == []
