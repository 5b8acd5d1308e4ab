"""What the layout steps share: spacing constants, the state being filled in, and small geometric helpers.

The steps run in order (nodes → hyperedge dots → routes → stubs → ports and paths → labels), each in
its own module, reading and extending one ``LayoutState``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tnderiv.ir import Diagram
from tnderiv.render.geometry import Box, Curve, Point
from tnderiv.render.labels import leg_label
from tnderiv.render.model import LEG_PT, Shape, ShapeKind

COL_GAP = 1.35  # between the boxes of neighbouring columns (room for leg labels)
ROW_GAP = 0.75  # between nodes stacked in a column
MIRROR_GAP = 1.6  # between a copy and its mirror image
STUB = 0.45  # length of an open leg's stub
PORT_MIN = 0.18  # least distance between two legs leaving one side of a node
DOT = 0.12  # diameter of delta and hyperedge dots
ONES = 0.34  # diameter of a ones node

PosKey = int | str
DIRECTIONS_4: tuple[Point, ...] = ((1.0, 0.0), (0.0, 1.0), (0.0, -1.0), (-1.0, 0.0))
DIAG = math.sqrt(0.5)
DIRECTIONS_8: tuple[Point, ...] = DIRECTIONS_4 + ((DIAG, DIAG), (DIAG, -DIAG), (-DIAG, DIAG), (-DIAG, -DIAG))


@dataclass
class LayoutState:
    """A layout in progress: shapes by key, columns, and which copy of a two-copy network a shape is in.

    ``axis`` is ``""`` (one network), ``"x"`` (the copy above its mirror image) or ``"y"`` (the copy left
    of its mirror image); ``half`` is +1 for the copy, −1 for the mirror image, 0 for shapes on the axis.
    """

    diagram: Diagram
    legs_of: list[tuple[str, ...]]
    shapes: dict[str, Shape] = field(default_factory=dict)
    columns: dict[str, int] = field(default_factory=dict)
    half: dict[str, int] = field(default_factory=dict)
    hidden: set[str] = field(default_factory=set)  # constants on hidden legs only (they equal 1)
    dot_ends: dict[str, list[str]] = field(default_factory=dict)
    axis: str = ""
    dots_avoid_edges: bool = True  # a dot's spokes should cross no (estimated) edge

    def is_open(self, leg: str) -> bool:
        return leg in self.diagram.open_legs

    def outward(self, key: str) -> Point:
        """The direction away from the mirror axis for a shape of a two-copy layout, else ``(0, 0)``."""
        half = self.half.get(key, 0)
        if not half or not self.axis:
            return (0.0, 0.0)
        return (0.0, float(half)) if self.axis == "x" else (-float(half), 0.0)


def node_key(index: int) -> str:
    return f"n{index}"


def dot_key(leg: str) -> str:
    return f"dot:{leg}"


def leg_ends(state: LayoutState) -> dict[str, list[str]]:
    """The shapes each visible leg ends on, legs in the diagram's order."""
    ends: dict[str, list[str]] = {}
    for index, legs in enumerate(state.legs_of):
        for leg in legs:
            ends.setdefault(leg, []).append(node_key(index))
    order = [leg for leg in state.diagram.legs if leg in ends]
    return {leg: ends[leg] for leg in order}


def label_size(leg: str) -> tuple[float, float]:
    """Room (cm) for the label of ``leg``."""
    label = leg_label(leg)
    return (label.width(LEG_PT) + 0.08, label.height(LEG_PT) + 0.06)


def preferred_direction(state: LayoutState, shape: Shape, last_column: int) -> Point:
    """Where an open leg of ``shape`` should point: away from the axis, or out of the first or last column."""
    outward = state.outward(shape.key)
    if outward != (0.0, 0.0):
        return outward
    column = state.columns.get(shape.key)
    if column is not None and last_column > 0:
        if column == last_column:
            return (1.0, 0.0)
        if column == 0:
            return (-1.0, 0.0)
    if last_column == 0:
        return (1.0, 0.0)
    if state.axis == "y" and shape.center[1] < 0:
        return (0.0, -1.0)
    return (0.0, 1.0) if shape.center[1] >= 0 else (0.0, -1.0)


def boundary(shape: Shape, direction: Point) -> Point:
    """Where a ray from the shape's centre in ``direction`` leaves it."""
    x, y = shape.center
    if shape.is_dot:
        return shape.center
    if shape.kind is ShapeKind.ONES:
        return (x + direction[0] * ONES / 2, y + direction[1] * ONES / 2)
    tx = shape.width / 2 / abs(direction[0]) if direction[0] else math.inf
    ty = shape.height / 2 / abs(direction[1]) if direction[1] else math.inf
    t = min(tx, ty)
    return (x + t * direction[0], y + t * direction[1])


def label_box(end: Point, direction: Point, size: tuple[float, float]) -> Box:
    """The box of a stub's label beyond the stub's ``end``."""
    w, h = size
    cx = end[0] + (w / 2 + 0.03) * sign(direction[0])
    cy = end[1] + (h / 2 + 0.02) * sign(direction[1])
    return Box.around((cx, cy), w, h)


def sign(v: float) -> float:
    return 0.0 if abs(v) < 1e-9 else math.copysign(1.0, v)


def crosses(curve: Curve, segment: Curve) -> bool:
    """True when the straight ``segment`` crosses ``curve``."""
    pts = curve.polyline
    s0, s1 = segment.start, segment.end
    extent = curve.box()
    if max(s0[0], s1[0]) < extent.x0 or min(s0[0], s1[0]) > extent.x1:
        return False
    if max(s0[1], s1[1]) < extent.y0 or min(s0[1], s1[1]) > extent.y1:
        return False
    return any(segments_cross(p, q, s0, s1) for p, q in zip(pts, pts[1:]))


def segments_cross(p: Point, q: Point, r: Point, s: Point) -> bool:
    """True when the segments ``pq`` and ``rs`` cross properly."""

    def orient(a: Point, b: Point, c: Point) -> float:
        return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])

    d1, d2, d3, d4 = orient(r, s, p), orient(r, s, q), orient(p, q, r), orient(p, q, s)
    return d1 * d2 < -1e-12 and d3 * d4 < -1e-12
