"""Ports: where each leg leaves its node, legs leaving one side spread apart in angular order."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from tnderiv.render.geometry import Point, unit
from tnderiv.render.layout_state import PORT_MIN, LayoutState, boundary
from tnderiv.render.model import Shape, ShapeKind


@dataclass
class Conn:
    """A leg leaving a node: towards ``target``; ``port`` is filled in when ports are assigned."""

    leg: str
    target: Point
    rank: int
    port: Point | None = None
    side: str = ""


def _side(shape: Shape, target: Point) -> str:
    dx, dy = target[0] - shape.center[0], target[1] - shape.center[1]
    if abs(dx) * shape.height >= abs(dy) * shape.width:
        return "right" if dx >= 0 else "left"
    return "top" if dy > 0 else "bottom"


def _side_angle(side: str, center: Point, target: Point) -> float:
    """Angle of ``target`` seen from ``center``, increasing top→bottom (left, right sides) or left→right (top, bottom)."""
    dx, dy = target[0] - center[0], target[1] - center[1]
    return round(
        {
            "right": -math.atan2(dy, dx),
            "left": -math.atan2(dy, -dx),
            "top": math.atan2(dx, dy),
            "bottom": math.atan2(dx, -dy),
        }[side],
        6,
    )


def assign_ports(state: LayoutState, conns: dict[str, list[Conn]]) -> None:
    """Spread the legs leaving each side of a box over distinct ports (growing the box if needed)."""
    for key, items in conns.items():
        shape = state.shapes[key]
        if shape.is_dot:
            for c in items:
                c.port = shape.center
            continue
        if shape.kind in (ShapeKind.ONES, ShapeKind.SCALAR):
            for c in items:
                d = unit((c.target[0] - shape.center[0], c.target[1] - shape.center[1]))
                c.port = boundary(shape, d) if shape.kind is ShapeKind.ONES else shape.center
            continue
        sides: dict[str, list[Conn]] = {}
        for c in items:
            c.side = _side(shape, c.target)
            sides.setdefault(c.side, []).append(c)
        width, height = shape.width, shape.height
        for side, members in sides.items():
            vertical = side in ("left", "right")
            length = height if vertical else width
            need = PORT_MIN * (len(members) - 1) + 0.2
            if need > length:
                width, height = (width, need) if vertical else (need, height)
        shape = replace(shape, width=width, height=height)
        state.shapes[key] = shape
        x, y = shape.center
        for side, members in sides.items():
            vertical = side in ("left", "right")
            length = height if vertical else width
            # in angular order around the node, so legs leaving one side do not cross each other
            members.sort(key=lambda c: (_side_angle(side, shape.center, c.target), c.rank))
            step = min(0.4, (length - 0.2) / (len(members) - 1)) if len(members) > 1 else 0.0
            for j, c in enumerate(members):
                offset = (j - (len(members) - 1) / 2) * step
                if side == "right":
                    c.port = (x + width / 2, y - offset)
                elif side == "left":
                    c.port = (x - width / 2, y - offset)
                elif side == "top":
                    c.port = (x + offset, y + height / 2)
                else:
                    c.port = (x + offset, y - height / 2)
