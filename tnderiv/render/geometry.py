"""Plane geometry for layouts: points, boxes and leg paths (lines and cubic Bézier curves), in cm, y up."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

Point = tuple[float, float]


def rounded(value: float) -> float:
    """Coordinates are kept to 1/1000 cm so that emitted files are stable across platforms."""
    result = round(value, 3)
    return 0.0 if result == 0 else result


@dataclass(frozen=True)
class Box:
    """An axis-aligned rectangle ``[x0, x1] × [y0, y1]``."""

    x0: float
    y0: float
    x1: float
    y1: float

    @staticmethod
    def around(center: Point, width: float, height: float) -> Box:
        x, y = center
        return Box(x - width / 2, y - height / 2, x + width / 2, y + height / 2)

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def center(self) -> Point:
        return ((self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2)

    def inflate(self, margin: float) -> Box:
        return Box(self.x0 - margin, self.y0 - margin, self.x1 + margin, self.y1 + margin)

    def translate(self, dx: float, dy: float) -> Box:
        return Box(self.x0 + dx, self.y0 + dy, self.x1 + dx, self.y1 + dy)

    def overlaps(self, other: Box) -> bool:
        """True when the interiors intersect."""
        return self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1

    def contains(self, p: Point) -> bool:
        return self.x0 < p[0] < self.x1 and self.y0 < p[1] < self.y1

    def union(self, other: Box) -> Box:
        return Box(min(self.x0, other.x0), min(self.y0, other.y0), max(self.x1, other.x1), max(self.y1, other.y1))

    def hits_segment(self, a: Point, b: Point) -> bool:
        """True when the open segment ``ab`` passes through the box's interior (Liang–Barsky clipping)."""
        t0, t1 = 0.0, 1.0
        dx, dy = b[0] - a[0], b[1] - a[1]
        for p, q in ((-dx, a[0] - self.x0), (dx, self.x1 - a[0]), (-dy, a[1] - self.y0), (dy, self.y1 - a[1])):
            if p == 0:
                if q <= 0:
                    return False
                continue
            t = q / p
            if p < 0:
                t0 = max(t0, t)
            else:
                t1 = min(t1, t)
            if t0 >= t1:
                return False
        return t1 - t0 > 1e-9


def bounding_box(boxes: Iterable[Box]) -> Box:
    result: Box | None = None
    for box in boxes:
        result = box if result is None else result.union(box)
    return result if result is not None else Box(0, 0, 0, 0)


@dataclass(frozen=True)
class Curve:
    """A path from ``start``: each segment is ``(end,)`` (a line) or ``(c1, c2, end)`` (a cubic Bézier)."""

    start: Point
    segments: tuple[tuple[Point, ...], ...]

    @staticmethod
    def line(a: Point, b: Point) -> Curve:
        return Curve(_round_point(a), ((_round_point(b),),))

    @staticmethod
    def through(a: Point, apex: Point, b: Point) -> Curve:
        """The quadratic arc from ``a`` to ``b`` whose midpoint is ``apex``, as one cubic segment."""
        control = (2 * apex[0] - (a[0] + b[0]) / 2, 2 * apex[1] - (a[1] + b[1]) / 2)
        c1 = (a[0] + 2 / 3 * (control[0] - a[0]), a[1] + 2 / 3 * (control[1] - a[1]))
        c2 = (b[0] + 2 / 3 * (control[0] - b[0]), b[1] + 2 / 3 * (control[1] - b[1]))
        return Curve(_round_point(a), ((_round_point(c1), _round_point(c2), _round_point(b)),))

    @property
    def end(self) -> Point:
        return self.segments[-1][-1]

    def points(self, per_segment: int = 24) -> list[Point]:
        """Points along the path (the ends included)."""
        out = [self.start]
        current = self.start
        for segment in self.segments:
            if len(segment) == 1:
                end = segment[0]
                out.extend(lerp(current, end, i / per_segment) for i in range(1, per_segment + 1))
            else:
                c1, c2, end = segment
                out.extend(_bezier(current, c1, c2, end, i / per_segment) for i in range(1, per_segment + 1))
            current = segment[-1]
        return out

    def point_at(self, t: float) -> Point:
        """The point a fraction ``t`` of the way along the (single-segment) path."""
        segment = self.segments[0]
        if len(segment) == 1:
            return lerp(self.start, segment[0], t)
        return _bezier(self.start, *segment, t)

    def direction_at(self, t: float) -> Point:
        """Unit tangent at ``t``."""
        a, b = self.point_at(max(0.0, t - 0.01)), self.point_at(min(1.0, t + 0.01))
        return unit((b[0] - a[0], b[1] - a[1]))

    def translate(self, dx: float, dy: float) -> Curve:
        def move(p: Point) -> Point:
            return _round_point((p[0] + dx, p[1] + dy))

        return Curve(move(self.start), tuple(tuple(move(p) for p in seg) for seg in self.segments))

    @cached_property
    def _polyline(self) -> tuple[Point, ...]:
        """Corners of the path, or samples along it where it curves."""
        if all(len(segment) == 1 for segment in self.segments):
            return (self.start,) + tuple(segment[0] for segment in self.segments)
        return tuple(self.points(16))

    @property
    def polyline(self) -> tuple[Point, ...]:
        """Corners of the path, or samples along it where it curves."""
        return self._polyline

    @cached_property
    def _extent(self) -> Box:
        pts = self._polyline
        return Box(min(p[0] for p in pts), min(p[1] for p in pts), max(p[0] for p in pts), max(p[1] for p in pts))

    def hits(self, box: Box) -> bool:
        """True when the path passes through the box's interior."""
        extent = self._extent
        if extent.x1 < box.x0 or box.x1 < extent.x0 or extent.y1 < box.y0 or box.y1 < extent.y0:
            return False
        pts = self._polyline
        return any(box.hits_segment(a, b) for a, b in zip(pts, pts[1:]))

    def box(self) -> Box:
        return self._extent


def lerp(a: Point, b: Point, t: float) -> Point:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)


def unit(v: Point) -> Point:
    length = math.hypot(*v)
    return (0.0, 0.0) if length == 0 else (v[0] / length, v[1] / length)


def distance(a: Point, b: Point) -> float:
    return math.hypot(a[0] - b[0], a[1] - b[1])


def _bezier(p0: Point, p1: Point, p2: Point, p3: Point, t: float) -> Point:
    s = 1 - t
    return (
        s**3 * p0[0] + 3 * s * s * t * p1[0] + 3 * s * t * t * p2[0] + t**3 * p3[0],
        s**3 * p0[1] + 3 * s * s * t * p1[1] + 3 * s * t * t * p2[1] + t**3 * p3[1],
    )


def _round_point(p: Point) -> Point:
    return (rounded(p[0]), rounded(p[1]))


def segment_distance(p: Point, a: Point, b: Point) -> float:
    """Distance from ``p`` to the segment ``ab``."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    length2 = dx * dx + dy * dy
    if length2 == 0:
        return distance(p, a)
    t = max(0.0, min(1.0, ((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / length2))
    return distance(p, (a[0] + t * dx, a[1] + t * dy))
