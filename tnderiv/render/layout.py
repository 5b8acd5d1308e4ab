"""Deterministic layout of one diagram, following the paper conventions.

Data flows left to right: inputs (``x``), index patterns (one per spatial dimension, stacked),
parameters (``weight``, ``bias``), then cotangents (``grad_out``). A leg on three or more ends (the
batch leg of a per-sample gradient) meets at a dot. A diagram made of two copies (``glue``) is drawn
as the copy above its mirror image, shared legs crossing the axis. Open legs are labelled stubs
pointing away from the picture; legs between the same two nodes leave from distinct ports, so no two
legs are drawn on top of each other.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from tnderiv.ir import Diagram, Node, NodeKind
from tnderiv.render.geometry import Box, Curve, Point, distance, rounded, segment_distance, unit
from tnderiv.render.labels import Label, leg_label, operand_label
from tnderiv.render.model import LEG_PT, NOTE_PT, OPERAND_PT, Leg, LegKind, Picture, Shape, ShapeKind

COL_GAP = 1.35  # between the boxes of neighbouring columns (room for leg labels)
ROW_GAP = 0.75  # between nodes stacked in a column
MIRROR_GAP = 1.6  # between a copy and its mirror image
STUB = 0.45  # length of an open leg's stub
PORT_MIN = 0.18  # least distance between two legs leaving one side of a node
DOT = 0.12  # diameter of delta and hyperedge dots
ONES = 0.34  # diameter of a ones node

# column of an operand by its role (unknown names count as inputs)
ROLE_RANK = {
    "x": 0.0, "x_hat": 0.0, "tangent": 0.0, "inv_std": 1.5, "weight": 2.0, "bias": 2.0,
    "grad_out": 3.0, "sqrt_out": 3.0, "S": 3.0,
}  # fmt: skip
PATTERN_RANK = 1.0

PosKey = int | str
DIRECTIONS_4: tuple[Point, ...] = ((1.0, 0.0), (0.0, 1.0), (0.0, -1.0), (-1.0, 0.0))
_D = math.sqrt(0.5)
DIRECTIONS_8: tuple[Point, ...] = DIRECTIONS_4 + ((_D, _D), (_D, -_D), (-_D, _D), (-_D, -_D))


@dataclass
class _Conn:
    """A leg leaving a node: towards ``target``; ``port`` is filled in when ports are assigned."""

    leg: str
    target: Point
    rank: int
    port: Point | None = None
    side: str = ""


@dataclass
class _State:
    diagram: Diagram
    legs_of: list[tuple[str, ...]]
    shapes: dict[str, Shape] = field(default_factory=dict)
    columns: dict[str, int] = field(default_factory=dict)
    half: dict[str, int] = field(default_factory=dict)  # +1 top copy, -1 mirror copy, 0 not mirrored
    hidden: set[str] = field(default_factory=set)  # constants on hidden legs only (they equal 1)
    dot_ends: dict[str, list[str]] = field(default_factory=dict)


def node_key(index: int) -> str:
    return f"n{index}"


def dot_key(leg: str) -> str:
    return f"dot:{leg}"


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
    hidden = tuple(leg for leg in diagram.sizes if leg not in visible)
    state = _State(diagram, [tuple(leg for leg in node.legs if leg in visible) for node in diagram.nodes])
    state.hidden = {
        node_key(i) for i, node in enumerate(diagram.nodes)
        if node.kind in (NodeKind.DELTA, NodeKind.ONES) and node.legs and not state.legs_of[i]
    }  # fmt: skip
    pins = _check_pins(diagram, pos or {}, state)
    pairs = _mirror_pairs(diagram) if mirror is not False else None
    if mirror is True and pairs is None:
        raise ValueError("mirror=True, but the diagram is not two copies of one network (as made by glue)")
    _place_nodes(state, pairs)
    for key, xy in pins.items():
        if key in state.shapes:
            shape = state.shapes[key]
            state.shapes[key] = Shape(shape.key, shape.kind, (float(xy[0]), float(xy[1])), shape.width, shape.height,
                                      shape.label, shape.note, shape.node)  # fmt: skip
    ends = _leg_ends(state)
    _place_dots(state, ends, pins)
    routes = _route_legs(state, ends)
    stubs = _choose_stubs(state, ends, routes)
    legs = _draw_legs(state, ends, routes, stubs)
    shapes = tuple(_rounded_shape(s) for s in state.shapes.values())
    return Picture(shapes=shapes, legs=legs, hidden_legs=hidden, hidden_nodes=tuple(sorted(state.hidden)))


# ----- pins -------------------------------------------------------------------------------------


def _check_pins(diagram: Diagram, pos: Mapping[PosKey, tuple[float, float]], state: _State) -> dict[str, Point]:
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


# ----- two copies -------------------------------------------------------------------------------


def _mirror_pairs(diagram: Diagram) -> list[tuple[int, int]] | None:
    """Pairs (top, mirror) of nodes when the diagram is a network glued to a primed copy of itself."""
    if len(diagram.nodes) < 2 or len(diagram.nodes) % 2:
        return None
    groups: dict[tuple, list[int]] = {}
    for index, node in enumerate(diagram.nodes):
        signature = (node.label(), tuple(leg.rstrip("'") for leg in node.legs))
        groups.setdefault(signature, []).append(index)
    pairs = []
    for members in groups.values():
        if len(members) != 2:
            return None
        a, b = sorted(members, key=lambda i: (_primes(diagram.nodes[i]), i))
        if _primes(diagram.nodes[a]) == _primes(diagram.nodes[b]) and diagram.nodes[a].legs != diagram.nodes[b].legs:
            return None
        pairs.append((a, b))
    if not any(_primes(diagram.nodes[b]) > _primes(diagram.nodes[a]) for a, b in pairs):
        return None
    return sorted(pairs)


def _primes(node: Node) -> int:
    return sum(len(leg) - len(leg.rstrip("'")) for leg in node.legs)


# ----- nodes ------------------------------------------------------------------------------------


def _shape_for(index: int, node: Node, center: Point = (0.0, 0.0)) -> Shape:
    key = node_key(index)
    if node.kind is NodeKind.OPERAND:
        label = operand_label(node.name)
        width = max(0.75, label.width(OPERAND_PT) + 0.34)
        return Shape(key, ShapeKind.OPERAND, center, width, 0.66, label, node=index)
    if node.kind is NodeKind.PATTERN:
        note = _pattern_note(node)
        width = max(0.66, Label(note, italic=False).width(NOTE_PT) + 0.16) if note else 0.66
        return Shape(
            key, ShapeKind.PATTERN, center, width, 0.86 if note else 0.66, Label("Π", italic=False), note, node=index
        )
    if node.kind is NodeKind.DELTA:
        return Shape(key, ShapeKind.DELTA, center, DOT, DOT, node=index)
    if node.kind not in (NodeKind.ONES, NodeKind.SCALAR):  # folded constants (Π̄) and kinds to come
        label = operand_label(node.display_name)
        width = max(0.66, label.width(OPERAND_PT) + 0.3)
        return Shape(key, ShapeKind.CONSTANT, center, width, 0.66, label, node=index)
    if node.kind is NodeKind.ONES:
        return Shape(key, ShapeKind.ONES, center, ONES, ONES, Label("1", italic=False), node=index)
    label = Label(f"{node.value:g}", italic=False)
    return Shape(key, ShapeKind.SCALAR, center, label.width(OPERAND_PT) + 0.1, 0.45, label, node=index)


def _pattern_note(node: Node) -> str:
    """Non-default hyperparameters of a pattern, e.g. ``S=2, P=1``."""
    p = node.pattern
    assert p is not None
    parts = [f"S={p.stride}"] if p.stride != 1 else []
    parts += [f"D={p.dilation}"] if p.dilation != 1 else []
    parts += [f"P={p.pad_left}"] if p.pad_left else []
    parts += [p.mode.value] if p.mode.value != "zeros" else []
    return ", ".join(parts)


def _spatial_index(node: Node) -> int:
    for leg in node.legs:
        match = re.search(r"(\d+)'*$", leg)
        if match:
            return int(match.group(1))
    return 0


def _ranks(state: _State, indices: list[int]) -> dict[int, float]:
    nodes = state.diagram.nodes
    rank: dict[int, float | None] = {}
    for i in indices:
        node = nodes[i]
        if node.kind is NodeKind.PATTERN or node.kind.value == "folded":
            rank[i] = PATTERN_RANK
        elif node.kind is NodeKind.OPERAND:
            rank[i] = ROLE_RANK.get(node.name.rstrip("'"), 0.0)
        else:
            rank[i] = None
    neighbours = {i: [j for j in indices if j != i and set(state.legs_of[i]) & set(state.legs_of[j])] for i in indices}
    for _ in range(3):  # connectors sit between what they connect (chains of deltas need a few sweeps)
        for i in indices:
            if nodes[i].kind in (NodeKind.DELTA, NodeKind.ONES, NodeKind.SCALAR):
                values = [rank[j] for j in neighbours[i] if rank[j] is not None]
                rank[i] = round(sum(values) / len(values), 3) if values else rank[i]  # type: ignore[arg-type]
    return {i: (0.0 if r is None else r) for i, r in rank.items()}


def _place_nodes(state: _State, pairs: list[tuple[int, int]] | None) -> None:
    nodes = state.diagram.nodes
    main = [a for a, _ in pairs] if pairs else list(range(len(nodes)))
    main = [i for i in main if node_key(i) not in state.hidden]
    satellites = _satellites(state, main)
    main = [i for i in main if i not in satellites]
    ranks = _ranks(state, main)
    columns = {r: c for c, r in enumerate(sorted(set(ranks.values())))}
    by_column: dict[int, list[int]] = {}
    for i in main:
        by_column.setdefault(columns[ranks[i]], []).append(i)
    shapes = {i: _shape_for(i, nodes[i]) for i in range(len(nodes))}
    centers: dict[int, Point] = {}
    x = 0.0
    previous_width = 0.0
    for c in sorted(by_column):
        members = sorted(by_column[c], key=lambda i: _stack_key(nodes[i], i))
        width = max(shapes[i].width for i in members)
        x += (previous_width / 2 + COL_GAP + width / 2) if c else 0.0
        previous_width = width
        # a stacked node whose open leg hangs into the gap needs room for the stub and its label
        gap = ROW_GAP + 0.4 * (len(members) > 2 and any(_has_stub(state, i) for i in members[1:-1]))
        # neighbours joined by legs need room for the legs' labels (and dots) between them
        gaps = [
            max(gap, 1.3) if set(state.legs_of[a]) & set(state.legs_of[b]) else gap
            for a, b in zip(members, members[1:])
        ]
        total = sum(shapes[i].height for i in members) + sum(gaps)
        y = total / 2
        for i, below in zip(members, gaps + [0.0]):
            centers[i] = (x, y - shapes[i].height / 2)
            y -= shapes[i].height + below
            state.columns[node_key(i)] = c
    _center_connectors(state, by_column, centers, shapes)
    _place_satellites(state, satellites, centers, shapes)
    pairs = [(a, b) for a, b in pairs if a in centers] if pairs else None
    if pairs:
        low = min(centers[a][1] - shapes[a].height / 2 for a, _ in pairs)
        shift = MIRROR_GAP / 2 - low
        for a, b in pairs:
            cx, cy = centers[a]
            centers[a] = (cx, cy + shift)
            centers[b] = (cx, -(cy + shift))
            state.columns[node_key(b)] = state.columns[node_key(a)]
            state.half[node_key(a)], state.half[node_key(b)] = 1, -1
    for i, shape in shapes.items():
        if i not in centers:
            continue  # hidden
        state.shapes[node_key(i)] = Shape(shape.key, shape.kind, centers[i], shape.width, shape.height,
                                          shape.label, shape.note, shape.node)  # fmt: skip
        state.half.setdefault(node_key(i), 0)


def _has_stub(state: _State, index: int) -> bool:
    """True when node ``index`` carries an open leg that no other node carries."""
    return any(_is_open(state, leg) and sum(leg in legs for legs in state.legs_of) == 1 for leg in state.legs_of[index])


def _satellites(state: _State, indices: list[int]) -> dict[int, int]:
    """Deltas and ones tied to a single operand or pattern: drawn next to it, not in a column."""
    nodes = state.diagram.nodes
    out = {}
    for i in indices:
        if nodes[i].kind not in (NodeKind.DELTA, NodeKind.ONES):
            continue
        neighbours = [j for j in indices if j != i and set(state.legs_of[i]) & set(state.legs_of[j])]
        if len(neighbours) == 1 and nodes[neighbours[0]].kind in (NodeKind.OPERAND, NodeKind.PATTERN):
            out[i] = neighbours[0]
    return out


def _place_satellites(state: _State, satellites: dict[int, int], centers: dict[int, Point], shapes: dict) -> None:
    columns = [state.columns[node_key(j)] for j in centers]
    last = max(columns, default=0)
    for i, anchor in satellites.items():
        ax, ay = centers[anchor]
        a_shape = shapes[anchor]
        column = state.columns[node_key(anchor)]
        preferred = (
            (1.0, 0.0)
            if column == last and last
            else (-1.0, 0.0)
            if column == 0 and last
            else (0.0, 1.0 if ay >= 0 else -1.0)
        )
        best, best_score = None, math.inf
        for order, d in enumerate(DIRECTIONS_8):
            reach = 0.9 + (a_shape.width / 2 * abs(d[0]) if abs(d[0]) >= abs(d[1]) else a_shape.height / 2 * abs(d[1]))
            p = (ax + reach * d[0], ay + reach * d[1])
            box = Box.around(p, shapes[i].width, shapes[i].height).inflate(0.35)
            score = 3.0 * (1 - d[0] * preferred[0] - d[1] * preferred[1]) + 0.1 * order
            for j, c in centers.items():
                if j != i:
                    other = Box.around(c, shapes[j].width, shapes[j].height)
                    score += 100 * other.overlaps(box) + 40 * (j != anchor and other.hits_segment((ax, ay), p))
            if score < best_score - 1e-9:
                best, best_score = p, score
        assert best is not None
        centers[i] = best
        state.columns[node_key(i)] = column


def _stack_key(node: Node, index: int) -> tuple[int, int]:
    if node.kind is NodeKind.PATTERN or node.kind.value == "folded":
        return (1, _spatial_index(node))
    return (0 if node.kind is NodeKind.OPERAND else 2, index)


def _center_connectors(state: _State, by_column: dict[int, list[int]], centers: dict[int, Point], shapes: dict) -> None:
    """A column of only deltas and ones sits at the height of what it connects, in that order."""
    nodes = state.diagram.nodes
    for members in by_column.values():
        if any(nodes[i].kind in (NodeKind.OPERAND, NodeKind.PATTERN) for i in members):
            continue
        wanted = {}
        for i in members:
            ys = [
                centers[j][1]
                for j in centers
                if j != i and j not in members and set(state.legs_of[i]) & set(state.legs_of[j])
            ]
            wanted[i] = sum(ys) / len(ys) if ys else centers[i][1]
        order = sorted(members, key=lambda i: (-wanted[i], i))
        y_prev = math.inf
        placed = {}
        for i in order:
            half = shapes[i].height / 2
            y = min(wanted[i], y_prev - ROW_GAP - half) if y_prev < math.inf else wanted[i]
            placed[i] = y
            y_prev = y - half
        shift = sum(wanted[i] - placed[i] for i in members) / len(members)
        for i in members:
            centers[i] = (centers[i][0], placed[i] + shift)


def _rounded_shape(shape: Shape) -> Shape:
    return Shape(shape.key, shape.kind, (rounded(shape.center[0]), rounded(shape.center[1])), rounded(shape.width),
                 rounded(shape.height), shape.label, shape.note, shape.node)  # fmt: skip


# ----- hyperedge dots ---------------------------------------------------------------------------


def _leg_ends(state: _State) -> dict[str, list[str]]:
    ends: dict[str, list[str]] = {}
    for index, legs in enumerate(state.legs_of):
        for leg in legs:
            ends.setdefault(leg, []).append(node_key(index))
    order = [leg for leg in state.diagram.legs if leg in ends]
    return {leg: ends[leg] for leg in order}


def _is_open(state: _State, leg: str) -> bool:
    return leg in state.diagram.open_legs


def _place_dots(state: _State, ends: dict[str, list[str]], pins: dict[str, Point]) -> None:
    # dots of open legs come last: their stubs then see every other leg
    for leg, keys in sorted(ends.items(), key=lambda item: _is_open(state, item[0])):
        if len(keys) + _is_open(state, leg) < 3:
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


def _free_spot(state: _State, bary: Point, keys: list[str], leg: str) -> Point:
    """The spot near ``bary`` for a hyperedge dot: clear of shapes, edges and room kept for stubs."""
    best, best_score = bary, math.inf
    on_axis = any(state.half.values()) and abs(bary[1]) < 1e-6
    edges = _straight_edges(state, exclude=leg)
    zones = _stub_zones(state)
    spokes = [(s.center, state.shapes[k].center) for s in state.shapes.values() if s.kind is ShapeKind.HYPEREDGE
              for k in state.dot_ends[s.key]]  # fmt: skip
    keep_clear = [s.box.inflate(0.3) for s in state.shapes.values()]
    dots = [s.center for s in state.shapes.values() if s.kind is ShapeKind.HYPEREDGE]
    ends = [state.shapes[k].center for k in keys]
    walls = [(s.key, s.box.inflate(0.05)) for s in state.shapes.values() if not s.is_dot]
    for step in range(8):
        r = 0.4 * step
        # a leg shared by a network and its mirror image keeps its dot on the axis
        directions = (((1.0, 0.0), (-1.0, 0.0)) if on_axis else DIRECTIONS_8) if step else ((0.0, 0.0),)
        for direction in directions:
            p = (bary[0] + r * direction[0], bary[1] + r * direction[1])
            score = r
            score += 100 * sum(box.contains(p) for box in keep_clear)
            score += 100 * sum(distance(c, p) < 0.45 for c in dots)
            if score >= best_score:
                continue
            score += 20 * sum(1 for a, b in edges if segment_distance(p, a, b) < 0.15)
            for a, b in spokes:
                score += 6 * sum(_segments_cross(a, b, e, p) for e in ends)
            for zone in zones:
                score += 50 * zone.contains(p) + 3 * sum(zone.hits_segment(e, p) for e in ends)
            for k, e in zip(keys, ends):
                score += 12 * sum(1 for key, wall in walls if key != k and wall.hits_segment(e, p))
                score += 15 * sum(_alongside(e, p, a, b) for a, b in edges + spokes)
            if _is_open(state, leg) and score < best_score:
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


def _stub_zones(state: _State) -> list[Box]:
    """Room kept free for the open legs of nodes, on the side where they prefer to hang."""
    counts: dict[str, int] = {}
    for legs in state.legs_of:
        for leg in legs:
            counts[leg] = counts.get(leg, 0) + 1
    last = max(state.columns.values(), default=0)
    zones = []
    for index, legs in enumerate(state.legs_of):
        if not any(counts[leg] == 1 and _is_open(state, leg) for leg in legs):
            continue
        shape = state.shapes[node_key(index)]
        d = _preferred_direction(state, shape, last)
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


def _straight_edges(state: _State, exclude: str) -> list[tuple[Point, Point]]:
    """Centre-to-centre segments of the two-ended legs (an estimate made before routing)."""
    ends: dict[str, list[Point]] = {}
    for index, legs in enumerate(state.legs_of):
        for leg in legs:
            ends.setdefault(leg, []).append(state.shapes[node_key(index)].center)
    return [(e[0], e[1]) for leg, e in ends.items() if len(e) == 2 and leg != exclude]


def _open_stub_cost(state: _State, p: Point, segments: list[tuple[Point, Point]], leg: str) -> float:
    """How hard it is to hang the open leg's stub and label from a dot at ``p``."""
    label = leg_label(leg)
    size = (label.width(LEG_PT) + 0.08, label.height(LEG_PT) + 0.06)
    best = math.inf
    for direction in DIRECTIONS_8:
        end = (p[0] + STUB * direction[0], p[1] + STUB * direction[1])
        box = _label_box(end, direction, size).inflate(0.05)
        cost = 0.5 * (abs(direction[0]) > 1e-9 and abs(direction[1]) > 1e-9)
        for shape in state.shapes.values():
            if shape.box.inflate(0.05).hits_segment(p, end) or shape.box.overlaps(box):
                cost += 100
        for a, b in segments:
            if box.hits_segment(a, b) or _segments_cross(a, b, p, end):
                cost += 8
        best = min(best, cost)
    return best


# ----- routing ----------------------------------------------------------------------------------


@dataclass
class _Route:
    """A connection between two shapes: straight, or an arc through ``apex``."""

    leg: str
    a: str
    b: str
    apex: Point | None = None


def _connections(state: _State, ends: dict[str, list[str]]) -> list[_Route]:
    routes = []
    for leg, keys in ends.items():
        if dot_key(leg) in state.shapes:
            routes.extend(_Route(leg, k, dot_key(leg)) for k in keys)
        elif len(keys) == 2:
            routes.append(_Route(leg, keys[0], keys[1]))
    return routes


def _route_legs(state: _State, ends: dict[str, list[str]]) -> list[_Route]:
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


def _arc_apex(a: Point, b: Point, obstacles: list[Box], state: _State, lane: int, drawn: list[Curve]) -> Point:
    mid = ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2)
    d = unit((b[0] - a[0], b[1] - a[1]))
    normal = (-d[1], d[0])
    # arcs bow away from the mirror axis, and upwards otherwise
    sign = 1.0 if normal[1] >= 0 else -1.0
    if any(state.half.values()) and mid[1] < 0:
        sign = -sign
    fallback = None
    for h in (0.45, 0.65, 0.85, 1.1, 1.4, 1.8, 2.3, 2.9):
        for s in (sign, -sign):
            apex = (mid[0] + s * (h + 0.22 * lane) * normal[0], mid[1] + s * (h + 0.22 * lane) * normal[1])
            curve = Curve.through(a, apex, b)
            if any(curve.hits(box) for box in obstacles):
                continue
            if not any(_runs_along(curve, other, a, b) for other in drawn):
                return apex
            fallback = fallback or apex
    return fallback or (mid[0] + sign * 3.2 * normal[0], mid[1] + sign * 3.2 * normal[1])


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


# ----- stubs ------------------------------------------------------------------------------------


@dataclass
class _Stub:
    leg: str
    anchor: str
    direction: Point


def _choose_stubs(state: _State, ends: dict[str, list[str]], routes: list[_Route]) -> list[_Stub]:
    curves = [_center_curve(state, r) for r in routes]
    last_column = max(state.columns.values(), default=0)
    chosen: list[tuple[_Stub, Curve, Box]] = []
    for leg, keys in ends.items():
        if len(keys) != 1 and dot_key(leg) not in state.shapes:
            continue
        anchor = dot_key(leg) if dot_key(leg) in state.shapes else keys[0]
        if anchor.startswith("dot:") and not _is_open(state, leg):
            continue
        shape = state.shapes[anchor]
        label = leg_label(leg)
        size = (label.width(LEG_PT) + 0.08, label.height(LEG_PT) + 0.06)
        preferred = _preferred_direction(state, shape, last_column)
        best = None
        candidates = DIRECTIONS_8 if shape.is_dot else DIRECTIONS_4
        for order, direction in enumerate(candidates):
            start = _boundary(shape, direction)
            end = (start[0] + STUB * direction[0], start[1] + STUB * direction[1])
            segment = Curve.line(start, end)
            box = _label_box(end, direction, size)
            score = 0.2 * order + 3.0 * (1 - (direction[0] * preferred[0] + direction[1] * preferred[1]))
            for other in state.shapes.values():
                hit_box = other.box.inflate(0.05)
                if other.key != anchor and (segment.hits(hit_box) or hit_box.overlaps(box)):
                    score += 100
            for curve in curves:
                score += 8 * curve.hits(box.inflate(0.02)) + 8 * _crosses(curve, segment)
            for stub, other_segment, other_box in chosen:
                if other_box.overlaps(box) or other_segment.hits(box):
                    score += 60
                if stub.anchor == anchor and stub.direction == direction and shape.is_dot:
                    score += 100
                score += 10 * _crosses(other_segment, segment)
            if best is None or score < best[0] - 1e-9:
                best = (score, direction, segment, box)
        assert best is not None
        stub = _Stub(leg, anchor, best[1])
        chosen.append((stub, best[2], best[3]))
    return [c[0] for c in chosen]


def _preferred_direction(state: _State, shape: Shape, last_column: int) -> Point:
    half = state.half.get(shape.key, 0)
    if half:
        return (0.0, float(half))
    column = state.columns.get(shape.key)
    if column is not None and last_column > 0:
        if column == last_column:
            return (1.0, 0.0)
        if column == 0:
            return (-1.0, 0.0)
    if last_column == 0:
        return (1.0, 0.0)
    return (0.0, 1.0) if shape.center[1] >= 0 else (0.0, -1.0)


def _boundary(shape: Shape, direction: Point) -> Point:
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


def _label_box(end: Point, direction: Point, size: tuple[float, float]) -> Box:
    w, h = size
    cx = end[0] + (w / 2 + 0.03) * _sign(direction[0])
    cy = end[1] + (h / 2 + 0.02) * _sign(direction[1])
    return Box.around((cx, cy), w, h)


def _sign(v: float) -> float:
    return 0.0 if abs(v) < 1e-9 else math.copysign(1.0, v)


def _center_curve(state: _State, route: _Route) -> Curve:
    a, b = state.shapes[route.a].center, state.shapes[route.b].center
    return Curve.line(a, b) if route.apex is None else Curve.through(a, route.apex, b)


def _crosses(curve: Curve, segment: Curve) -> bool:
    pts = curve._polyline
    s0, s1 = segment.start, segment.end
    extent = curve.box()
    if max(s0[0], s1[0]) < extent.x0 or min(s0[0], s1[0]) > extent.x1:
        return False
    if max(s0[1], s1[1]) < extent.y0 or min(s0[1], s1[1]) > extent.y1:
        return False
    return any(_segments_cross(p, q, s0, s1) for p, q in zip(pts, pts[1:]))


def _segments_cross(p: Point, q: Point, r: Point, s: Point) -> bool:
    def orient(a: Point, b: Point, c: Point) -> float:
        return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])

    d1, d2, d3, d4 = orient(r, s, p), orient(r, s, q), orient(p, q, r), orient(p, q, s)
    return d1 * d2 < -1e-12 and d3 * d4 < -1e-12


# ----- ports and final paths --------------------------------------------------------------------


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


def _assign_ports(state: _State, conns: dict[str, list[_Conn]]) -> None:
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
                c.port = _boundary(shape, d) if shape.kind is ShapeKind.ONES else shape.center
            continue
        sides: dict[str, list[_Conn]] = {}
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
        shape = Shape(shape.key, shape.kind, shape.center, width, height, shape.label, shape.note, shape.node)
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


def _draw_legs(state: _State, ends: dict[str, list[str]], routes: list[_Route], stubs: list[_Stub]) -> tuple[Leg, ...]:
    rank = {leg: i for i, leg in enumerate(ends)}
    conns: dict[str, list[_Conn]] = {}
    route_conns = []
    for route in routes:
        a, b = state.shapes[route.a].center, state.shapes[route.b].center
        ca = _Conn(route.leg, route.apex or b, rank[route.leg])
        cb = _Conn(route.leg, route.apex or a, rank[route.leg])
        conns.setdefault(route.a, []).append(ca)
        conns.setdefault(route.b, []).append(cb)
        route_conns.append((route, ca, cb))
    stub_conns = []
    for stub in stubs:
        c = state.shapes[stub.anchor].center
        conn = _Conn(stub.leg, (c[0] + 100 * stub.direction[0], c[1] + 100 * stub.direction[1]), rank[stub.leg])
        conns.setdefault(stub.anchor, []).append(conn)
        stub_conns.append((stub, conn))
    _assign_ports(state, conns)

    paths: dict[str, list[Curve]] = {leg: [] for leg in ends}
    for route, ca, cb in route_conns:
        assert ca.port is not None and cb.port is not None
        curve = Curve.line(ca.port, cb.port) if route.apex is None else Curve.through(ca.port, route.apex, cb.port)
        paths[route.leg].append(curve)
    stub_geometry = _fan_stubs(state, stub_conns)
    for stub, _conn in stub_conns:
        paths[stub.leg].append(stub_geometry[stub.leg][0])

    placed: list[Box] = [s.box.inflate(0.02) for s in state.shapes.values()]
    label_at: dict[str, tuple[Point, tuple[float, float]]] = {}
    for stub, _conn in stub_conns:
        _curve, box = stub_geometry[stub.leg]
        label_at[stub.leg] = (box.center, (box.width, box.height))
        placed.append(box)
    all_curves = [c for leg_paths in paths.values() for c in leg_paths]
    centers = [s.center for s in state.shapes.values()]
    middle = (
        (sum(c[0] for c in centers) / len(centers), sum(c[1] for c in centers) / len(centers)) if centers else (0, 0)
    )
    for leg in ends:
        if leg in label_at:
            continue
        label = leg_label(leg)
        size = (label.width(LEG_PT) + 0.08, label.height(LEG_PT) + 0.06)
        if dot_key(leg) in state.shapes:
            box = _dot_label(state.shapes[dot_key(leg)], size, placed, all_curves)
        else:
            box = _edge_label(paths[leg][0], size, placed, [c for c in all_curves if c is not paths[leg][0]], middle)
        label_at[leg] = (box.center, (box.width, box.height))
        placed.append(box)

    legs = []
    for leg, keys in ends.items():
        has_dot = dot_key(leg) in state.shapes
        kind = LegKind.HYPEREDGE if has_dot else LegKind.EDGE if len(keys) == 2 else LegKind.STUB
        center, size = label_at[leg]
        legs.append(
            Leg(
                name=leg,
                kind=kind,
                paths=tuple(paths[leg]),
                ends=tuple(keys) + ((dot_key(leg),) if has_dot else ()),
                label=leg_label(leg),
                label_center=(rounded(center[0]), rounded(center[1])),
                label_size=(rounded(size[0]), rounded(size[1])),
                open=_is_open(state, leg),
            )
        )
    return tuple(legs)


def _fan_stubs(state: _State, stub_conns: list[tuple[_Stub, _Conn]]) -> dict[str, tuple[Curve, Box]]:
    """Stub ends on one side of a node are spread so that their labels do not touch."""
    groups: dict[tuple[str, Point], list[tuple[_Stub, _Conn]]] = {}
    for stub, conn in stub_conns:
        groups.setdefault((stub.anchor, stub.direction), []).append((stub, conn))
    out: dict[str, tuple[Curve, Box]] = {}
    for (_anchor, direction), members in groups.items():
        sizes = []
        for stub, _conn in members:
            label = leg_label(stub.leg)
            sizes.append((label.width(LEG_PT) + 0.08, label.height(LEG_PT) + 0.06))
        ports = [conn.port for _stub, conn in members]
        assert all(p is not None for p in ports)
        horizontal = abs(direction[1]) < 1e-9
        vertical = abs(direction[0]) < 1e-9
        if horizontal or vertical:
            # members are in port order; lay the label boxes side by side along the node's side
            along = [p[1] for p in ports] if horizontal else [p[0] for p in ports]  # type: ignore[index]
            extent = [s[1] + 0.04 for s in sizes] if horizontal else [s[0] + 0.1 for s in sizes]
            positions = _spread(along, extent, descending=horizontal)
        else:
            positions = [None] * len(members)
        for (stub, conn), size, position in zip(members, sizes, positions):
            port = conn.port
            assert port is not None
            end = (port[0] + STUB * direction[0], port[1] + STUB * direction[1])
            if position is not None:
                end = (end[0], position) if horizontal else (position, end[1])
            out[stub.leg] = (Curve.line(port, end), _label_box(end, direction, size))
    return out


def _spread(along: list[float], extent: list[float], *, descending: bool) -> list[float]:
    """Positions near ``along`` (in order) keeping consecutive items ``extent`` apart, centred as a group."""
    sign = -1.0 if descending else 1.0
    positions = [along[0]]
    for j in range(1, len(along)):
        gap = (extent[j - 1] + extent[j]) / 2
        wanted = along[j]
        positions.append(wanted if sign * (wanted - positions[-1]) >= gap else positions[-1] + sign * gap)
    shift = sum(a - p for a, p in zip(along, positions)) / len(along)
    return [p + shift for p in positions]


def _label_score(box: Box, placed: list[Box], curves: list[Curve]) -> float:
    score = 0.0
    for other in placed:
        if other.overlaps(box):
            score += 100
    for curve in curves:
        if curve.hits(box):
            score += 12
    return score


def _edge_label(curve: Curve, size: tuple[float, float], placed: list[Box], others: list[Curve], middle: Point) -> Box:
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


def _dot_label(dot: Shape, size: tuple[float, float], placed: list[Box], curves: list[Curve]) -> Box:
    best: tuple[float, Box] | None = None
    w, h = size
    for order, d in enumerate(
        ((0.0, 1.0), (_D, _D), (-_D, _D), (1.0, 0.0), (-1.0, 0.0), (0.0, -1.0), (_D, -_D), (-_D, -_D))
    ):
        cx = dot.center[0] + _sign(d[0]) * (w / 2 + 0.09)
        cy = dot.center[1] + _sign(d[1]) * (h / 2 + 0.09)
        box = Box.around((cx, cy), w, h)
        score = _label_score(box, [p for p in placed if not p.overlaps(dot.box)], curves) + 0.3 * order
        if best is None or score < best[0] - 1e-9:
            best = (score, box)
    assert best is not None
    return best[1]
