"""The layout model every emitter draws: placed shapes, leg paths with labels, texts and arrows (cm, y up)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from tnderiv.render.geometry import Box, Curve, Point, bounding_box, rounded
from tnderiv.render.labels import Label

OPERAND_PT = 10.0  # font sizes (pt) the layout reserves room for; the emitters use the same
LEG_PT = 8.0
NOTE_PT = 7.0


class ShapeKind(str, enum.Enum):
    """How a node is drawn."""

    OPERAND = "operand"  # rounded box with the operand's name
    PATTERN = "pattern"  # shaded square box with Π (and non-default hyperparameters)
    CONSTANT = "constant"  # shaded box with a dashed border: constants folded into one (Π̄ = Σ_o Π)
    DELTA = "delta"  # a black dot (copy tensor)
    HYPEREDGE = "hyperedge"  # a black dot joining the nodes of a leg shared by three or more ends
    ONES = "ones"  # a small circle with 1
    SCALAR = "scalar"  # a number


@dataclass(frozen=True)
class Shape:
    """A drawn node: ``node`` is its index in the diagram (``None`` for hyperedge dots)."""

    key: str
    kind: ShapeKind
    center: Point
    width: float
    height: float
    label: Label | None = None
    note: str = ""
    node: int | None = None

    @property
    def box(self) -> Box:
        return Box.around(self.center, self.width, self.height)

    @property
    def is_dot(self) -> bool:
        return self.kind in (ShapeKind.DELTA, ShapeKind.HYPEREDGE)

    def translate(self, dx: float, dy: float) -> Shape:
        return replace(self, center=(rounded(self.center[0] + dx), rounded(self.center[1] + dy)))


class LegKind(str, enum.Enum):
    EDGE = "edge"  # a summed leg between two nodes
    STUB = "stub"  # a leg on one node only (open: the result's index; summed: a sum over it)
    HYPEREDGE = "hyperedge"  # spokes from a dot to every node (and a stub if open)


@dataclass(frozen=True)
class Leg:
    """One leg of a diagram as drawn, exactly once: its paths, the shapes it ends on and its label."""

    name: str
    kind: LegKind
    paths: tuple[Curve, ...]
    ends: tuple[str, ...]
    label: Label
    label_center: Point
    label_size: tuple[float, float]
    open: bool

    @property
    def label_box(self) -> Box:
        return Box.around(self.label_center, *self.label_size)

    def translate(self, dx: float, dy: float) -> Leg:
        return replace(
            self,
            paths=tuple(p.translate(dx, dy) for p in self.paths),
            label_center=(rounded(self.label_center[0] + dx), rounded(self.label_center[1] + dy)),
        )


class TextRole(str, enum.Enum):
    COEFFICIENT = "coefficient"
    OPERATOR = "operator"  # + and − between terms
    RULE = "rule"  # a rewrite rule's name under an arrow
    CAPTION = "caption"


@dataclass(frozen=True)
class Text:
    """Free text: ``tex`` is TeX (text mode), ``plain`` the same as Unicode.

    A stacked fraction (a coefficient) has SVG runs ``(text, role)`` for its ``numerator`` and
    ``denominator``; role ∈ italic, upright, sub, sup.
    """

    tex: str
    plain: str
    center: Point
    width: float
    height: float
    role: TextRole
    numerator: tuple[tuple[str, str], ...] = ()
    denominator: tuple[tuple[str, str], ...] = ()

    @property
    def box(self) -> Box:
        return Box.around(self.center, self.width, self.height)

    def translate(self, dx: float, dy: float) -> Text:
        return replace(self, center=(rounded(self.center[0] + dx), rounded(self.center[1] + dy)))


@dataclass(frozen=True)
class Arrow:
    """A derivation arrow from ``start`` to ``end``."""

    start: Point
    end: Point

    def translate(self, dx: float, dy: float) -> Arrow:
        return Arrow(
            (rounded(self.start[0] + dx), rounded(self.start[1] + dy)),
            (rounded(self.end[0] + dx), rounded(self.end[1] + dy)),
        )


@dataclass(frozen=True)
class Picture:
    """Everything to draw, already placed.

    ``hidden_legs`` were left out on purpose (size 1), and so were ``hidden_nodes`` (keys of deltas and
    ones on hidden legs only, which equal 1).
    """

    shapes: tuple[Shape, ...] = ()
    legs: tuple[Leg, ...] = ()
    texts: tuple[Text, ...] = ()
    arrows: tuple[Arrow, ...] = ()
    hidden_legs: tuple[str, ...] = ()
    hidden_nodes: tuple[str, ...] = ()

    @property
    def bbox(self) -> Box:
        boxes = [s.box for s in self.shapes] + [t.box for t in self.texts]
        for leg in self.legs:
            boxes.append(leg.label_box)
            boxes.extend(p.box() for p in leg.paths)
        boxes.extend(Box(min(a.start[0], a.end[0]), min(a.start[1], a.end[1]) - 0.1,
                         max(a.start[0], a.end[0]), max(a.start[1], a.end[1]) + 0.1) for a in self.arrows)  # fmt: skip
        return bounding_box(boxes)

    def translate(self, dx: float, dy: float) -> Picture:
        return Picture(
            tuple(s.translate(dx, dy) for s in self.shapes),
            tuple(leg.translate(dx, dy) for leg in self.legs),
            tuple(t.translate(dx, dy) for t in self.texts),
            tuple(a.translate(dx, dy) for a in self.arrows),
            self.hidden_legs,
            self.hidden_nodes,
        )

    def prefixed(self, prefix: str) -> Picture:
        """The same picture with shape keys prefixed (to merge several pictures)."""
        return replace(
            self,
            shapes=tuple(replace(s, key=prefix + s.key) for s in self.shapes),
            legs=tuple(replace(leg, ends=tuple(prefix + e for e in leg.ends)) for leg in self.legs),
            hidden_nodes=tuple(prefix + k for k in self.hidden_nodes),
        )

    def merged(self, other: Picture) -> Picture:
        return Picture(
            self.shapes + other.shapes,
            self.legs + other.legs,
            self.texts + other.texts,
            self.arrows + other.arrows,
            self.hidden_legs + other.hidden_legs,
            self.hidden_nodes + other.hidden_nodes,
        )
