"""Measures of a laid-out picture: where distinct legs cross, and where labels collide.

A crossing is a point where paths of two different legs intersect away from a shape they both end on
(legs that leave one node from neighbouring ports do not count). The gallery lists the number of
crossings of each figure, and a test keeps it from growing.
"""

from __future__ import annotations

from dataclasses import dataclass

from tnderiv.render.geometry import Box, Curve, Point, segment_distance
from tnderiv.render.model import Picture

MERGE = 0.02  # crossings closer than this (cm) are one (a polyline corner on the other leg)


@dataclass(frozen=True)
class Crossing:
    """Legs ``a`` and ``b`` cross at ``at``."""

    a: str
    b: str
    at: Point


def segment_intersection(p: Point, q: Point, r: Point, s: Point) -> Point | None:
    """The point where the segments ``pq`` and ``rs`` cross properly (not only touch), else ``None``."""
    d = (q[0] - p[0]) * (s[1] - r[1]) - (q[1] - p[1]) * (s[0] - r[0])
    if abs(d) < 1e-12:
        return None
    t = ((r[0] - p[0]) * (s[1] - r[1]) - (r[1] - p[1]) * (s[0] - r[0])) / d
    u = ((r[0] - p[0]) * (q[1] - p[1]) - (r[1] - p[1]) * (q[0] - p[0])) / d
    eps = 1e-9
    if eps < t < 1 - eps and eps < u < 1 - eps:
        return (p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1]))
    # a crossing exactly at a corner of a polyline: count it on the segment that starts there
    if (abs(t) <= eps or abs(u) <= eps) and -eps <= t < 1 - eps and -eps <= u < 1 - eps:
        return (p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1]))
    return None


def curve_intersections(a: Curve, b: Curve) -> list[Point]:
    """Points where the two paths cross (their polylines, for curved paths sampled along them)."""
    if not a.box().inflate(1e-6).overlaps(b.box().inflate(1e-6)):
        return []
    pa, pb = a.polyline, b.polyline
    found: list[Point] = []
    for p, q in zip(pa, pa[1:]):
        for r, s in zip(pb, pb[1:]):
            hit = segment_intersection(p, q, r, s)
            if hit is not None and all(abs(hit[0] - f[0]) + abs(hit[1] - f[1]) > MERGE for f in found):
                found.append(hit)
    return found


def crossings(picture: Picture) -> list[Crossing]:
    """Every crossing of two distinct legs of ``picture`` (in leg order, deterministic)."""
    boxes = {s.key: s.box.inflate(0.02) for s in picture.shapes}
    out: list[Crossing] = []
    legs = list(picture.legs)
    for i, first in enumerate(legs):
        for second in legs[i + 1 :]:
            shared = [boxes[k] for k in set(first.ends) & set(second.ends) if k in boxes]
            for path_a in first.paths:
                for path_b in second.paths:
                    for at in curve_intersections(path_a, path_b):
                        if not any(box.contains(at) for box in shared):
                            out.append(Crossing(first.name, second.name, at))
    return out


def crossing_count(picture: Picture) -> int:
    """The number of crossings of distinct legs in ``picture``."""
    return len(crossings(picture))


def label_collisions(picture: Picture, margin: float = 0.04) -> list[str]:
    """Labels that overlap another label or a text, or sit on a crossing (where it is unclear whose they are)."""
    problems = []
    legs = list(picture.legs)
    points = [c.at for c in crossings(picture)]
    for i, leg in enumerate(legs):
        box = leg.label_box
        problems += [
            f"labels of legs {leg.name} and {o.name} overlap" for o in legs[i + 1 :] if box.overlaps(o.label_box)
        ]
        if any(box.inflate(margin).contains(p) for p in points):
            problems.append(f"label of leg {leg.name} sits on a crossing")
        problems += [
            f"text {t.plain!r} overlaps the label of leg {leg.name}" for t in picture.texts if t.box.overlaps(box)
        ]
    return problems


def labels_crossed(picture: Picture) -> list[str]:
    """Labels that another leg runs through."""
    problems = []
    for leg in picture.legs:
        inner = _shrunk(leg.label_box)
        other = next((o for o in picture.legs if o.name != leg.name and any(p.hits(inner) for p in o.paths)), None)
        if other is not None:
            problems.append(f"leg {other.name} runs through the label of leg {leg.name}")
    return problems


def label_problems(picture: Picture) -> list[str]:
    """``label_collisions`` and ``labels_crossed`` together."""
    return label_collisions(picture) + labels_crossed(picture)


def overlapping_legs(picture: Picture, tolerance: float = 0.03, run: int = 4) -> list[str]:
    """Pairs of legs drawn on top of each other: ``run`` consecutive samples of one within ``tolerance`` of another.

    Samples near shapes (where legs meet at a dot or leave neighbouring ports) do not count.
    """
    shapes = [s.box.inflate(0.2) if s.is_dot else s.box.inflate(0.06) for s in picture.shapes]
    samples = [(leg.name, path, path.points(40)) for leg in picture.legs for path in leg.paths]
    problems = []
    for i, (name_a, path_a, pts_a) in enumerate(samples):
        for name_b, path_b, _pts_b in samples[i + 1 :]:
            reach = path_b.box().inflate(tolerance)
            if name_a == name_b or not path_a.box().inflate(tolerance).overlaps(reach):
                continue
            poly = path_b.polyline
            streak = 0
            for p in pts_a:
                close = reach.contains(p) and min(segment_distance(p, a, b) for a, b in zip(poly, poly[1:])) < tolerance
                close = close and not any(box.contains(p) for box in shapes)
                streak = streak + 1 if close else 0
                if streak >= run:
                    problems.append(f"legs {name_a} and {name_b} drawn on top of each other")
                    break
    return problems


def _shrunk(box: Box, by: float = 0.02) -> Box:
    return Box(box.x0 + by, box.y0 + by, box.x1 - by, box.y1 - by)
