"""Routing the legs between shapes: straight where nothing is in the way, otherwise an arc around it."""

from __future__ import annotations

from dataclasses import dataclass

from tnderiv.render.crossings import curve_intersections
from tnderiv.render.geometry import Box, Curve, Point, distance, segment_distance, unit
from tnderiv.render.layout_state import LayoutState, dot_key


@dataclass
class Route:
    """A connection between two shapes: straight, or an arc through ``apex``."""

    leg: str
    a: str
    b: str
    apex: Point | None = None


def _connections(state: LayoutState, ends: dict[str, list[str]]) -> list[Route]:
    routes = []
    for leg, keys in ends.items():
        if dot_key(leg) in state.shapes:
            routes.extend(Route(leg, k, dot_key(leg)) for k in keys)
        elif len(keys) == 2:
            routes.append(Route(leg, keys[0], keys[1]))
    return routes


def route_legs(state: LayoutState, ends: dict[str, list[str]]) -> list[Route]:
    """Straight where nothing is in the way; otherwise an arc that avoids shapes and runs along no other leg."""
    routes = _connections(state, ends)
    blocked = []
    drawn: list[Curve] = []
    for route in routes:
        a, b = state.shapes[route.a].center, state.shapes[route.b].center
        obstacles = [s.box.inflate(0.06) for s in state.shapes.values() if s.key not in (route.a, route.b)]
        if any(box.hits_segment(a, b) for box in obstacles):
            blocked.append((route, obstacles))
        else:
            drawn.append(Curve.line(a, b))
    lanes: dict[tuple[str, str], int] = {}
    for route, obstacles in blocked:
        a, b = state.shapes[route.a].center, state.shapes[route.b].center
        pair = (min(route.a, route.b), max(route.a, route.b))
        lane = lanes.get(pair, 0)
        lanes[pair] = lane + 1
        route.apex = _arc_apex(a, b, obstacles, state, lane, drawn)
        drawn.append(Curve.through(a, route.apex, b))
    return routes


def _arc_apex(a: Point, b: Point, obstacles: list[Box], state: LayoutState, lane: int, drawn: list[Curve]) -> Point:
    mid = ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2)
    d = unit((b[0] - a[0], b[1] - a[1]))
    normal = (-d[1], d[0])
    # arcs bow away from the mirror axis, and upwards otherwise
    sign = 1.0 if normal[1] >= 0 else -1.0
    if state.axis == "x" and mid[1] < 0:
        sign = -sign
    elif state.axis == "y" and abs(normal[0]) > abs(normal[1]) and abs(mid[0]) > 1e-6:
        sign = 1.0 if normal[0] * mid[0] > 0 else -1.0
    best: tuple[float, Point] | None = None
    for order, h in enumerate((0.45, 0.65, 0.85, 1.1, 1.4, 1.8, 2.3, 2.9)):
        for side, s in enumerate((sign, -sign)):
            apex = (mid[0] + s * (h + 0.22 * lane) * normal[0], mid[1] + s * (h + 0.22 * lane) * normal[1])
            curve = Curve.through(a, apex, b)
            if any(curve.hits(box) for box in obstacles):
                continue
            crossed = sum(_crossings_away_from(curve, other, a, b) for other in drawn)
            along = any(_runs_along(curve, other, a, b) for other in drawn)
            if not crossed and not along:
                return apex
            score = 0.3 * order + 0.2 * side + 4 * along + 3 * crossed
            if best is None or score < best[0] - 1e-9:
                best = (score, apex)
    return best[1] if best else (mid[0] + sign * 3.2 * normal[0], mid[1] + sign * 3.2 * normal[1])


def _crossings_away_from(curve: Curve, other: Curve, a: Point, b: Point) -> int:
    """How often ``curve`` crosses ``other`` away from its own ends ``a`` and ``b``."""
    return sum(1 for p in curve_intersections(curve, other) if distance(p, a) > 0.15 and distance(p, b) > 0.15)


def _runs_along(curve: Curve, other: Curve, a: Point, b: Point) -> bool:
    """True when ``curve`` stays close to ``other`` for a stretch away from its own ends."""
    if not curve.box().inflate(0.25).overlaps(other.box().inflate(0.25)):
        return False
    poly = other._polyline
    streak = 0
    for p in curve.points(30)[3:-3]:
        close = min(segment_distance(p, q, r) for q, r in zip(poly, poly[1:])) < 0.2
        streak = streak + 1 if close else 0
        if streak >= 3:
            return True
    return False
