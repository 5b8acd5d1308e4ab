"""Deterministic layout of one diagram, following the paper conventions.

Data flows left to right: inputs (``x``), index patterns (one per spatial dimension, stacked),
parameters (``weight``, ``bias``), then cotangents (``grad_out``). A leg on three or more ends (the
batch leg of a per-sample gradient) meets at a dot. A diagram made of two copies (``glue``) is drawn
as the copy beside its mirror image, legs shared by the copies running straight across the axis.
Open legs are labelled stubs pointing away from the picture; legs between the same two nodes leave
from distinct ports, so no two legs are drawn on top of each other.

The steps live in their own modules (``nodes``, ``mirror``, ``dots``, ``routing``, ``stubs``, ``ports``,
``paths``, ``leg_labels``); this one runs them, tries a few arrangements when legs cross, and keeps
the one with the fewest crossings (``crossings``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from tnderiv.ir import Diagram, NodeKind
from tnderiv.render.crossings import crossing_count, label_problems, overlapping_legs
from tnderiv.render.dots import place_dots
from tnderiv.render.geometry import Point, rounded
from tnderiv.render.layout_state import LayoutState, PosKey, dot_key, leg_ends, node_key
from tnderiv.render.mirror import Variant, mirror_pairs, variants
from tnderiv.render.model import Picture, Shape, ShapeKind
from tnderiv.render.nodes import place_nodes
from tnderiv.render.paths import draw_legs
from tnderiv.render.routing import route_legs
from tnderiv.render.stubs import choose_stubs

__all__ = ["PosKey", "layout_diagram"]


def layout_diagram(
    diagram: Diagram,
    *,
    pos: Mapping[PosKey, tuple[float, float]] | None = None,
    hide_unit_legs: bool = True,
    mirror: bool | None = None,
) -> Picture:
    """Place every node and route every leg of ``diagram``.

    ``pos`` pins shapes: a node index, an operand name (if unique) or ``"leg:NAME"`` for a hyperedge dot
    → ``(x, y)`` in cm. ``hide_unit_legs`` leaves out legs of size 1 (``g`` without groups).
    ``mirror``: draw two-copy networks mirrored (``None``: when detected).
    """
    visible = {leg for leg, size in diagram.sizes.items() if not (hide_unit_legs and size == 1)}
    legs_of = [tuple(leg for leg in node.legs if leg in visible) for node in diagram.nodes]
    pins = _check_pins(diagram, pos or {})
    pairs = mirror_pairs(diagram) if mirror is not False else None
    if mirror is True and pairs is None:
        raise ValueError("mirror=True, but the diagram is not two copies of one network (as made by glue)")
    candidates = variants(pairs is not None)
    attempts = [_attempt(diagram, legs_of, visible, pins, pairs, candidates[0])]
    if pins or (not attempts[0].crossings and not overlapping_legs(attempts[0].picture)):
        return attempts[0].picture
    attempts += [_attempt(diagram, legs_of, visible, pins, pairs, v) for v in candidates[1:]]
    best = _best(attempts)
    if best.crossings or overlapping_legs(best.picture):  # try each stack of two or more nodes the other way up
        for column in _stacked_columns(best.state):
            flipped = replace(best.variant, reversed_columns=best.variant.reversed_columns | {column})
            attempts.append(_attempt(diagram, legs_of, visible, pins, pairs, flipped))
        for column in _stacked_columns(best.state, operands_only=True):  # a stack of operands as a row
            spread = replace(best.variant, spread_columns=best.variant.spread_columns | {column})
            attempts.append(_attempt(diagram, legs_of, visible, pins, pairs, spread))
    return _best(attempts).picture


@dataclass
class _Attempt:
    picture: Picture
    variant: Variant
    state: LayoutState
    crossings: int


def _best(attempts: list[_Attempt]) -> _Attempt:
    """No legs on top of each other; fewest crossings; then fewest label problems, smallest area, earliest."""
    ranked = sorted(attempts, key=lambda a: a.crossings)  # stable: ties keep their order
    for fewest in sorted({a.crossings for a in ranked}):
        tied = [a for a in ranked if a.crossings == fewest and not overlapping_legs(a.picture)]
        if tied:
            return min(tied, key=_tie_break) if len(tied) > 1 else tied[0]
    return ranked[0]


def _tie_break(attempt: _Attempt) -> tuple[int, float]:
    box = attempt.picture.bbox
    return (len(label_problems(attempt.picture)), round(box.width * box.height, 3))


def _attempt(
    diagram: Diagram,
    legs_of: list[tuple[str, ...]],
    visible: set[str],
    pins: dict[str, Point],
    pairs: list[tuple[int, int]] | None,
    variant: Variant,
) -> _Attempt:
    """One layout in the arrangement ``variant``."""
    state = LayoutState(diagram, legs_of)
    state.hidden = {
        node_key(i) for i, node in enumerate(diagram.nodes)
        if node.kind in (NodeKind.DELTA, NodeKind.ONES) and node.legs and not legs_of[i]
    }  # fmt: skip
    place_nodes(state, pairs, variant)
    for key, xy in pins.items():
        if key in state.shapes:
            state.shapes[key] = replace(state.shapes[key], center=xy)
    ends = leg_ends(state)
    place_dots(state, ends, pins)
    routes = route_legs(state, ends)
    stubs = choose_stubs(state, ends, routes)
    legs = draw_legs(state, ends, routes, stubs)
    shapes = tuple(_rounded_shape(s) for s in state.shapes.values())
    hidden = tuple(leg for leg in diagram.sizes if leg not in visible)
    picture = Picture(shapes=shapes, legs=legs, hidden_legs=hidden, hidden_nodes=tuple(sorted(state.hidden)))
    return _Attempt(picture, variant, state, crossing_count(picture))


def _stacked_columns(state: LayoutState, *, operands_only: bool = False) -> list[int]:
    """Columns holding two or more nodes of the (first) copy (``operands_only``: and only operands)."""
    counts: dict[int, int] = {}
    others: set[int] = set()
    for key, column in state.columns.items():
        if state.half.get(key, 0) >= 0 and key.startswith("n"):
            counts[column] = counts.get(column, 0) + 1
            if state.shapes[key].kind is not ShapeKind.OPERAND:
                others.add(column)
    return sorted(c for c, n in counts.items() if n >= 2 and not (operands_only and c in others))


def _rounded_shape(shape: Shape) -> Shape:
    return replace(shape, center=(rounded(shape.center[0]), rounded(shape.center[1])), width=rounded(shape.width),
                   height=rounded(shape.height))  # fmt: skip


def _check_pins(diagram: Diagram, pos: Mapping[PosKey, tuple[float, float]]) -> dict[str, Point]:
    names: dict[str, list[int]] = {}
    for index, node in enumerate(diagram.nodes):
        if node.kind is NodeKind.OPERAND:
            names.setdefault(node.name, []).append(index)
    out: dict[str, Point] = {}
    for key, xy in pos.items():
        if not (isinstance(xy, tuple | list) and len(xy) == 2 and all(isinstance(v, int | float) for v in xy)):
            raise TypeError(f"pos[{key!r}]={xy!r}: expected a pair of numbers (x, y) in cm")
        if isinstance(key, int) and not isinstance(key, bool) and 0 <= key < len(diagram.nodes):
            out[node_key(key)] = (float(xy[0]), float(xy[1]))
        elif isinstance(key, str) and key.startswith("leg:") and key[4:] in diagram.sizes:
            out[dot_key(key[4:])] = (float(xy[0]), float(xy[1]))
        elif isinstance(key, str) and len(names.get(key, ())) == 1:
            out[node_key(names[key][0])] = (float(xy[0]), float(xy[1]))
        elif isinstance(key, str) and key in names:
            raise ValueError(f"pos key {key!r} names operands at nodes {names[key]}; use a node index")
        else:
            valid = f"node indices 0..{len(diagram.nodes) - 1}, operand names {sorted(names)}, or 'leg:NAME'"
            raise ValueError(f"pos key {key!r} is not a node of the diagram; expected {valid}")
    return out
