"""Leg crossings and label collisions: the counter on hand-made pictures, and the gallery against its baseline."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tnderiv.calculus import derive
from tnderiv.layers import Conv
from tnderiv.render import layout_diagram
from tnderiv.render.crossings import crossing_count, crossings, label_collisions
from tnderiv.render.gallery import Entry
from tnderiv.render.geometry import Curve
from tnderiv.render.labels import leg_label
from tnderiv.render.model import Leg, LegKind, Picture, Shape, ShapeKind

BASELINE = Path(__file__).with_name("crossings.json")
UPDATE = "if the new count is right, lower or add it in tests/render/crossings.json (never raise one silently)"


def _leg(name: str, *paths: Curve, ends: tuple[str, ...] = ()) -> Leg:
    return Leg(name, LegKind.EDGE, paths, ends, leg_label(name), (50.0, 50.0), (0.2, 0.2), False)


def _box(key: str, x: float, y: float) -> Shape:
    return Shape(key, ShapeKind.OPERAND, (x, y), 0.4, 0.4)


def test_counter_counts_proper_crossings_of_distinct_legs_only() -> None:
    a = _leg("a", Curve.line((0, 0), (2, 2)))
    b = _leg("b", Curve.line((0, 2), (2, 0)))
    assert crossing_count(Picture(legs=(a, b))) == 1
    assert crossings(Picture(legs=(a, b)))[0].at == pytest.approx((1.0, 1.0))
    # two paths of one leg (the spokes of a hyperedge) never count
    assert crossing_count(Picture(legs=(_leg("h", a.paths[0], b.paths[0]),))) == 0
    # legs that meet on a shape both end on do not cross there; parallel and disjoint legs do not cross
    shapes = (_box("s", 1.0, 1.0),)
    meet = (
        _leg("c", Curve.line((0, 0), (1.1, 1.1)), ends=("s",)),
        _leg("d", Curve.line((0, 2), (0.9, 1.1)), ends=("s",)),
    )
    assert crossing_count(Picture(shapes=shapes, legs=meet)) == 0
    parallel = _leg("e", Curve.line((0, 0), (2, 0))), _leg("f", Curve.line((0, 0.5), (2, 0.5)))
    assert crossing_count(Picture(legs=parallel)) == 0
    # an arc over a straight leg crosses it twice
    arc = _leg("g", Curve.through((0, 0), (1, 1), (2, 0)))
    assert crossing_count(Picture(legs=(arc, _leg("k", Curve.line((0, 0.5), (2, 0.5)))))) == 2


def test_label_collisions_finds_overlaps_and_labels_on_crossings() -> None:
    a = _leg("a", Curve.line((0, 0), (2, 2)))
    b = _leg("b", Curve.line((0, 2), (2, 0)))
    on_crossing = Picture(legs=(a, replace(b, label_center=(1.0, 1.0))))
    assert label_collisions(on_crossing) == ["label of leg b sits on a crossing"]
    overlapping = Picture(legs=(a, _leg("c", Curve.line((5, 5), (6, 5)))))
    assert label_collisions(overlapping) == ["labels of legs a and c overlap"]


def test_no_gallery_drawing_has_more_crossings_than_its_baseline(entries: list[Entry]) -> None:
    baseline = json.loads(BASELINE.read_text(encoding="utf-8"))
    worse, missing = [], []
    for entry in entries:
        if entry.picture is None:
            continue
        name = f"{entry.layer}/{entry.quantity}"
        count = crossing_count(entry.picture)
        if name not in baseline:
            missing.append(f"{name} ({count})")
        elif count > baseline[name]:
            worse.append(f"{name}: {count} crossings, baseline {baseline[name]}")
    assert not worse and not missing, f"more crossings: {worse}; not in the baseline: {missing}; {UPDATE}"


def test_gallery_readme_lists_the_crossings(entries: list[Entry]) -> None:
    readme = (Path(__file__).resolve().parents[2] / "diagrams" / "README.md").read_text(encoding="utf-8")
    for entry in entries:
        if entry.picture is not None:
            assert f"| `{entry.layer}/{entry.quantity}` | {crossing_count(entry.picture)} |" in readme


def test_no_gallery_label_overlaps_another_or_sits_on_a_crossing(entries: list[Entry]) -> None:
    problems = [
        f"{entry.layer}/{entry.quantity}: {problem}"
        for entry in entries
        if entry.picture is not None
        for problem in label_collisions(entry.picture)
    ]
    assert problems == []


def test_two_copy_networks_are_mirrored_about_a_vertical_axis_with_shared_legs_straight_across() -> None:
    expr = derive(Conv(2, 4, 3, dims=2).network({}), "kfac_input_expand")
    picture = layout_diagram(expr.replace(coefficient=1))
    assert crossing_count(picture) == 0
    for name in ("n", "o0", "o1"):  # shared by the copy and its mirror image
        (path,) = next(leg for leg in picture.legs if leg.name == name).paths
        assert len(path.segments) == 1 and len(path.segments[0]) == 1, f"leg {name} is not a straight line"
        assert path.start[1] == pytest.approx(path.end[1]) and path.start[0] < 0 < path.end[0]
    x_nodes = sorted(s.center for s in picture.shapes if s.label is not None and s.label.plain == "x")
    assert len(x_nodes) == 2 and x_nodes[0][0] == pytest.approx(-x_nodes[1][0])


@pytest.mark.parametrize("quantity", ["ggn_diag", "sum_grad_squared", "batch_l2", "variance", "batch_dot"])
def test_glued_convolution_statistics_cross_less_than_the_old_layout(quantity: str) -> None:
    """The old layout (copy above its mirror image) crossed 4–10 times on these; bounds from the new one."""
    expr = derive(Conv(2, 4, 3, dims=2).network({}), quantity)
    for term in getattr(expr, "terms", (expr,)):
        assert crossing_count(layout_diagram(term.replace(coefficient=1))) <= 5
