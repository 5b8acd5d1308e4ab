"""Placing leg labels: beside an edge, away from the picture's middle, or next to a hyperedge dot."""

from __future__ import annotations

from tnderiv.render.geometry import Box, Curve, Point
from tnderiv.render.layout_state import DIAG, sign
from tnderiv.render.model import Shape


def _label_score(box: Box, placed: list[Box], curves: list[Curve]) -> float:
    score = 0.0
    for other in placed:
        if other.overlaps(box):
            score += 100
    for curve in curves:
        if curve.hits(box):
            score += 12
    return score


def edge_label(curve: Curve, size: tuple[float, float], placed: list[Box], others: list[Curve], middle: Point) -> Box:
    """Beside the leg, on the side away from the picture's middle (above, for a leg through it)."""
    best: tuple[float, Box] | None = None
    w, h = size
    for order, t in enumerate((0.5, 0.4, 0.6, 0.3, 0.7, 0.22, 0.78)):
        p = curve.point_at(t)
        d = curve.direction_at(t)
        normal = (-d[1], d[0])
        outward = (p[0] - middle[0]) * normal[0] + (p[1] - middle[1]) * normal[1]
        if outward < -0.05 or (abs(outward) <= 0.05 and (normal[1] < 0 or (abs(normal[1]) < 1e-9 and normal[0] < 0))):
            normal = (-normal[0], -normal[1])
        for side_order, s in enumerate((1.0, -1.0)):
            n = (s * normal[0], s * normal[1])
            offset = 0.5 * (abs(n[0]) * w + abs(n[1]) * h) + 0.04
            box = Box.around((p[0] + offset * n[0], p[1] + offset * n[1]), w, h)
            score = _label_score(box, placed, others) + 0.3 * order + 0.5 * side_order
            if curve.hits(box):
                score += 50
            if best is None or score < best[0] - 1e-9:
                best = (score, box)
    assert best is not None
    return best[1]


def dot_label(dot: Shape, size: tuple[float, float], placed: list[Box], curves: list[Curve]) -> Box:
    best: tuple[float, Box] | None = None
    w, h = size
    for order, d in enumerate(
        ((0.0, 1.0), (DIAG, DIAG), (-DIAG, DIAG), (1.0, 0.0), (-1.0, 0.0), (0.0, -1.0), (DIAG, -DIAG), (-DIAG, -DIAG))
    ):
        cx = dot.center[0] + sign(d[0]) * (w / 2 + 0.09)
        cy = dot.center[1] + sign(d[1]) * (h / 2 + 0.09)
        box = Box.around((cx, cy), w, h)
        score = _label_score(box, [p for p in placed if not p.overlaps(dot.box)], curves) + 0.3 * order
        if best is None or score < best[0] - 1e-9:
            best = (score, box)
    assert best is not None
    return best[1]
