"""Open legs on one node (and open hyperedges): short stubs pointing away from the picture.

Each stub tries the sides of its node (eight directions from a dot) and takes the one whose stub and
label hit the fewest shapes, legs and other stubs, preferring the direction away from the picture.
"""

from __future__ import annotations

from dataclasses import dataclass

from tnderiv.render.geometry import Box, Curve, Point
from tnderiv.render.layout_state import (
    DIRECTIONS_4,
    DIRECTIONS_8,
    STUB,
    LayoutState,
    boundary,
    crosses,
    dot_key,
    label_box,
    label_size,
    preferred_direction,
)
from tnderiv.render.routing import Route


@dataclass
class Stub:
    leg: str
    anchor: str
    direction: Point


def choose_stubs(state: LayoutState, ends: dict[str, list[str]], routes: list[Route]) -> list[Stub]:
    curves = [_center_curve(state, r) for r in routes]
    last_column = max(state.columns.values(), default=0)
    chosen: list[tuple[Stub, Curve, Box]] = []
    for leg, keys in ends.items():
        if len(keys) != 1 and dot_key(leg) not in state.shapes:
            continue
        anchor = dot_key(leg) if dot_key(leg) in state.shapes else keys[0]
        if anchor.startswith("dot:") and not state.is_open(leg):
            continue
        shape = state.shapes[anchor]
        size = label_size(leg)
        preferred = preferred_direction(state, shape, last_column)
        best = None
        candidates = DIRECTIONS_8 if shape.is_dot else DIRECTIONS_4
        for order, direction in enumerate(candidates):
            start = boundary(shape, direction)
            end = (start[0] + STUB * direction[0], start[1] + STUB * direction[1])
            segment = Curve.line(start, end)
            box = label_box(end, direction, size)
            score = 0.2 * order + 3.0 * (1 - (direction[0] * preferred[0] + direction[1] * preferred[1]))
            for other in state.shapes.values():
                hit_box = other.box.inflate(0.05)
                if other.key != anchor and (segment.hits(hit_box) or hit_box.overlaps(box)):
                    score += 100
            for curve in curves:
                score += 20 * curve.hits(box.inflate(0.02)) + 8 * crosses(curve, segment)
            for stub, other_segment, other_box in chosen:
                if other_box.overlaps(box) or other_segment.hits(box):
                    score += 60
                if stub.anchor == anchor and stub.direction == direction and shape.is_dot:
                    score += 100
                score += 10 * crosses(other_segment, segment)
            if best is None or score < best[0] - 1e-9:
                best = (score, direction, segment, box)
        assert best is not None
        stub = Stub(leg, anchor, best[1])
        chosen.append((stub, best[2], best[3]))
    return [c[0] for c in chosen]


def _center_curve(state: LayoutState, route: Route) -> Curve:
    a, b = state.shapes[route.a].center, state.shapes[route.b].center
    return Curve.line(a, b) if route.apex is None else Curve.through(a, route.apex, b)
