"""Hyperedge dots: where the legs on three or more ends (or on two ends and open) meet.

A dot sits near the middle of what it joins, clear of shapes, other legs and the room kept for open
legs' stubs; the dot of a leg shared by a network and its mirror image stays on the mirror axis.
"""

from __future__ import annotations

import math

from tnderiv.render.geometry import Box, Point, distance, segment_distance, unit
from tnderiv.render.layout_state import (
    DIRECTIONS_8,
    DOT,
    STUB,
    LayoutState,
    dot_key,
    label_box,
    label_size,
    node_key,
    preferred_direction,
    segments_cross,
)
from tnderiv.render.model import Shape, ShapeKind


def place_dots(state: LayoutState, ends: dict[str, list[str]], pins: dict[str, Point]) -> None:
    # dots of open legs come last: their stubs then see every other leg
    for leg, keys in sorted(ends.items(), key=lambda item: state.is_open(item[0])):
        if len(keys) + state.is_open(leg) < 3:
            continue
        key = dot_key(leg)
        if key in pins:
            center = pins[key]
        else:
            centers = [state.shapes[k].center for k in keys]
            bary = (sum(c[0] for c in centers) / len(centers), sum(c[1] for c in centers) / len(centers))
            center = _free_spot(state, bary, keys, leg)
        state.shapes[key] = Shape(key, ShapeKind.HYPEREDGE, center, DOT, DOT)
        state.dot_ends[key] = list(keys)
        halves = {state.half[k] for k in keys}
        state.half[key] = halves.pop() if len(halves) == 1 else 0


def _free_spot(state: LayoutState, bary: Point, keys: list[str], leg: str) -> Point:
    """The spot near ``bary`` for a hyperedge dot: clear of shapes, edges and room kept for stubs."""
    best, best_score = bary, math.inf
    # a leg shared by a network and its mirror image keeps its dot on the axis
    across = (1.0, 0.0) if state.axis == "x" else (0.0, 1.0)
    on_axis = bool(state.axis) and abs(bary[1] if state.axis == "x" else bary[0]) < 1e-6
    edges = _straight_edges(state, exclude=leg)
    zones = _stub_zones(state)
    spokes = [(s.center, state.shapes[k].center) for s in state.shapes.values() if s.kind is ShapeKind.HYPEREDGE
              for k in state.dot_ends[s.key]]  # fmt: skip
    keep_clear = [s.box.inflate(0.3) for s in state.shapes.values()]
    dots = [s.center for s in state.shapes.values() if s.kind is ShapeKind.HYPEREDGE]
    # two open dots on the mirror axis keep room between them for a stub and its label
    spacing = 0.8 if on_axis and state.is_open(leg) else 0.45
    open_dots = [s.center for s in state.shapes.values() if s.kind is ShapeKind.HYPEREDGE and state.is_open(s.key[4:])]
    ends = [state.shapes[k].center for k in keys]
    walls = [(s.key, s.box.inflate(0.05)) for s in state.shapes.values() if not s.is_dot]
    for step in range(16 if on_axis else 8):  # on the axis only two directions: search it finer
        r = (0.2 if on_axis else 0.4) * step
        directions = ((across, (-across[0], -across[1])) if on_axis else DIRECTIONS_8) if step else ((0.0, 0.0),)
        for direction in directions:
            p = (bary[0] + r * direction[0], bary[1] + r * direction[1])
            score = r
            score += 100 * sum(box.contains(p) for box in keep_clear)
            score += 100 * sum(distance(c, p) < 0.45 for c in dots)
            score += 30 * sum(distance(c, p) < spacing for c in open_dots)
            if score >= best_score:
                continue
            score += 20 * sum(1 for a, b in edges if segment_distance(p, a, b) < 0.15)
            for a, b in spokes + (edges if state.dots_avoid_edges else []):
                score += 6 * sum(segments_cross(a, b, e, p) for e in ends)
            for zone in zones:
                score += 50 * zone.contains(p) + 3 * sum(zone.hits_segment(e, p) for e in ends)
            for k, e in zip(keys, ends):
                score += 12 * sum(1 for key, wall in walls if key != k and wall.hits_segment(e, p))
                score += 15 * sum(_alongside(e, p, a, b) for a, b in edges + spokes)
            if state.is_open(leg) and score < best_score:
                own = [(e, p) for e in ends]
                score += _open_stub_cost(state, p, edges + own + spokes, leg)
            if score < best_score - 1e-9:
                best, best_score = p, score
    return best


def _alongside(e: Point, p: Point, a: Point, b: Point) -> bool:
    """True when a spoke from ``e`` to ``p`` leaves ``e`` in nearly the direction of the edge ``ab`` at ``e``."""
    if distance(e, a) < 1e-6:
        other = b
    elif distance(e, b) < 1e-6:
        other = a
    else:
        return False
    u, v = unit((p[0] - e[0], p[1] - e[1])), unit((other[0] - e[0], other[1] - e[1]))
    return u[0] * v[0] + u[1] * v[1] > math.cos(0.25)


def _stub_zones(state: LayoutState) -> list[Box]:
    """Room kept free for the open legs of nodes, on the side where they prefer to hang."""
    counts: dict[str, int] = {}
    for legs in state.legs_of:
        for leg in legs:
            counts[leg] = counts.get(leg, 0) + 1
    last = max(state.columns.values(), default=0)
    zones = []
    for index, legs in enumerate(state.legs_of):
        if not any(counts[leg] == 1 and state.is_open(leg) for leg in legs):
            continue
        shape = state.shapes[node_key(index)]
        d = preferred_direction(state, shape, last)
        reach = STUB + 0.45
        x0, y0, x1, y1 = shape.box.x0, shape.box.y0, shape.box.x1, shape.box.y1
        if d[0] > 0:
            zones.append(Box(x1, y0, x1 + reach, y1))
        elif d[0] < 0:
            zones.append(Box(x0 - reach, y0, x0, y1))
        elif d[1] > 0:
            zones.append(Box(x0, y1, x1, y1 + reach))
        else:
            zones.append(Box(x0, y0 - reach, x1, y0))
    return zones


def _straight_edges(state: LayoutState, exclude: str) -> list[tuple[Point, Point]]:
    """Centre-to-centre segments of the two-ended legs (an estimate made before routing)."""
    ends: dict[str, list[Point]] = {}
    for index, legs in enumerate(state.legs_of):
        for leg in legs:
            ends.setdefault(leg, []).append(state.shapes[node_key(index)].center)
    return [(e[0], e[1]) for leg, e in ends.items() if len(e) == 2 and leg != exclude]


def _open_stub_cost(state: LayoutState, p: Point, segments: list[tuple[Point, Point]], leg: str) -> float:
    """How hard it is to hang the open leg's stub and label from a dot at ``p``."""
    size = label_size(leg)
    best = math.inf
    for direction in DIRECTIONS_8:
        end = (p[0] + STUB * direction[0], p[1] + STUB * direction[1])
        box = label_box(end, direction, size).inflate(0.05)
        cost = 0.5 * (abs(direction[0]) > 1e-9 and abs(direction[1]) > 1e-9)
        for shape in state.shapes.values():
            if shape.box.inflate(0.05).hits_segment(p, end) or shape.box.overlaps(box):
                cost += 100
        for a, b in segments:
            if box.hits_segment(a, b) or segments_cross(a, b, p, end):
                cost += 8
        best = min(best, cost)
    return best
