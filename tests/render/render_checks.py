"""Structural checks of a laid-out picture, shared by the render tests (each returns a list of problems)."""

from __future__ import annotations

from dataclasses import replace

from tnderiv.ir import Diagram
from tnderiv.render.crossings import overlapping_legs
from tnderiv.render.model import Picture, ShapeKind


def layout_problems(diagram: Diagram, picture: Picture) -> list[str]:
    """Everything wrong with ``picture`` as a drawing of the single ``diagram`` (prefix-free keys)."""
    problems = []
    hidden = set(picture.hidden_legs) & set(diagram.sizes)
    hidden = {leg for leg in hidden if diagram.sizes[leg] == 1}
    visible = [leg for leg in diagram.sizes if leg not in hidden]
    drawn = [leg.name for leg in picture.legs]
    for leg in visible:
        if drawn.count(leg) != 1:
            problems.append(f"leg {leg} drawn {drawn.count(leg)} times")
    for leg in hidden:
        if diagram.sizes[leg] != 1:
            problems.append(f"leg {leg} of size {diagram.sizes[leg]} hidden")
    placed = {s.node for s in picture.shapes if s.node is not None}
    for index, node in enumerate(diagram.nodes):
        key = f"n{index}"
        if index in placed:
            continue
        if key in picture.hidden_nodes and all(leg in hidden for leg in node.legs):
            continue
        problems.append(f"node {index} ({node.display_name}) not placed")
    shapes = list(picture.shapes)
    for i, a in enumerate(shapes):
        for b in shapes[i + 1 :]:
            if a.box.overlaps(b.box):
                problems.append(f"shapes {a.key} and {b.key} overlap")
    for leg in picture.legs:
        if leg.open and not leg.label.plain:
            problems.append(f"open leg {leg.name} has no label")
        if leg.label.plain.replace("′", "'").replace("_", "") != leg.name.replace("_", "") and "·" not in leg.name:
            problems.append(f"leg {leg.name} labelled {leg.label.plain!r}")
        for shape in shapes:
            if shape.box.overlaps(leg.label_box):
                problems.append(f"label of leg {leg.name} covers {shape.key}")
    problems += overlapping_legs(picture)
    problems += dangling_ends(picture)
    return problems


def dangling_ends(picture: Picture) -> list[str]:
    """Legs whose paths do not start on one of the shapes they belong to."""
    by_key = {s.key: s for s in picture.shapes}
    problems = []
    for leg in picture.legs:
        for shape_key in leg.ends:
            if shape_key not in by_key:
                problems.append(f"leg {leg.name} ends on unknown shape {shape_key}")
        for path in leg.paths:
            ends = [path.start, path.end]
            touching = [
                by_key[k]
                for k in leg.ends
                if k in by_key and any(by_key[k].box.inflate(0.01).contains(p) for p in ends)
            ]
            if not touching:
                problems.append(f"a path of leg {leg.name} touches none of its shapes {leg.ends}")
    return problems


def count_kind(picture: Picture, kind: ShapeKind) -> int:
    return sum(1 for s in picture.shapes if s.kind is kind)


def term_picture(picture: Picture, index: int) -> Picture:
    """The part of a sum's picture that draws term ``index`` (keys without the ``t{index}.`` prefix)."""
    prefix = f"t{index}."
    shapes = tuple(replace(s, key=s.key[len(prefix) :]) for s in picture.shapes if s.key.startswith(prefix))
    legs = tuple(
        replace(leg, ends=tuple(e[len(prefix) :] for e in leg.ends))
        for leg in picture.legs
        if leg.ends and all(e.startswith(prefix) for e in leg.ends)
    )
    hidden_nodes = tuple(k[len(prefix) :] for k in picture.hidden_nodes if k.startswith(prefix))
    return Picture(shapes, legs, (), (), picture.hidden_legs, hidden_nodes)
