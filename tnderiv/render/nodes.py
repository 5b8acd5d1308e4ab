"""Placing the nodes of one diagram: columns by role, patterns stacked by dimension, connectors between.

Columns from left to right: inputs (``x``), index patterns, ``inv_std``, parameters, cotangents. Deltas
and ones tied to one node sit beside it (satellites); a column of connectors only sits at the height of
what it connects. Two-copy networks lay out one copy and mirror it (``mirror.py``).
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

from tnderiv.ir import Node, NodeKind
from tnderiv.render.geometry import Box, Point
from tnderiv.render.labels import Label, operand_label
from tnderiv.render.layout_state import COL_GAP, DIRECTIONS_8, DOT, ONES, ROW_GAP, LayoutState, node_key
from tnderiv.render.mirror import Variant, flip_copy, mirror_centers
from tnderiv.render.model import NOTE_PT, OPERAND_PT, Shape, ShapeKind

# column of an operand by its role (unknown names count as inputs)
ROLE_RANK = {
    "x": 0.0, "x_hat": 0.0, "tangent": 0.0, "inv_std": 1.5, "weight": 2.0, "bias": 2.0,
    "grad_out": 3.0, "sqrt_out": 3.0, "diag_out": 3.0, "S": 3.0,
}  # fmt: skip
SQUARED = "_sq"  # an elementwise square (``weight_sq``) sits where its base would
PATTERN_RANK = 1.0


def shape_for(index: int, node: Node, center: Point = (0.0, 0.0)) -> Shape:
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


def _ranks(state: LayoutState, indices: list[int]) -> dict[int, float]:
    nodes = state.diagram.nodes
    rank: dict[int, float | None] = {}
    for i in indices:
        node = nodes[i]
        if node.kind in (NodeKind.PATTERN, NodeKind.FOLDED):
            rank[i] = PATTERN_RANK
        elif node.kind is NodeKind.OPERAND:
            name = node.name.rstrip("'")
            rank[i] = ROLE_RANK.get(name.removesuffix(SQUARED) if name.endswith(SQUARED) else name, 0.0)
        else:
            rank[i] = None
    neighbours = {i: [j for j in indices if j != i and set(state.legs_of[i]) & set(state.legs_of[j])] for i in indices}
    for _ in range(3):  # connectors sit between what they connect (chains of deltas need a few sweeps)
        for i in indices:
            if nodes[i].kind in (NodeKind.DELTA, NodeKind.ONES, NodeKind.SCALAR):
                values = [rank[j] for j in neighbours[i] if rank[j] is not None]
                rank[i] = round(sum(values) / len(values), 3) if values else rank[i]  # type: ignore[arg-type]
    return {i: (0.0 if r is None else r) for i, r in rank.items()}


def place_nodes(state: LayoutState, pairs: list[tuple[int, int]] | None, variant: Variant) -> None:
    """Shapes for every visible node: columns by role (one copy of a two-copy network, then mirrored)."""
    nodes = state.diagram.nodes
    state.dots_avoid_edges = variant.dots_avoid_edges
    main = [a for a, _ in pairs] if pairs else list(range(len(nodes)))
    main = [i for i in main if node_key(i) not in state.hidden]
    satellites = _satellites(state, main)
    main = [i for i in main if i not in satellites]
    shapes = {i: shape_for(i, nodes[i]) for i in range(len(nodes))}
    centers, by_column = _columns(state, main, shapes, variant)
    _center_connectors(state, by_column, centers, shapes)
    _place_satellites(state, satellites, centers, shapes)
    if variant.flip:
        flip_copy(centers, list(centers))
    pairs = [(a, b) for a, b in pairs if a in centers] if pairs else None
    if pairs:
        mirror_centers(state, pairs, centers, shapes, variant.axis)
    for i, shape in shapes.items():
        if i not in centers:
            continue  # hidden
        state.shapes[node_key(i)] = replace(shape, center=centers[i])
        state.half.setdefault(node_key(i), 0)


def _columns(
    state: LayoutState, main: list[int], shapes: dict[int, Shape], variant: Variant
) -> tuple[dict[int, Point], dict[int, list[int]]]:
    """Centres of ``main`` in columns by role, each column's nodes stacked and centred on y = 0."""
    nodes = state.diagram.nodes
    ranks = _ranks(state, main)
    columns = {r: c for c, r in enumerate(sorted(set(ranks.values())))}
    by_column: dict[int, list[int]] = {}
    for i in main:
        by_column.setdefault(columns[ranks[i]], []).append(i)
    centers: dict[int, Point] = {}
    x = 0.0
    previous_width = 0.0
    for c in sorted(by_column):
        members = sorted(by_column[c], key=lambda i: _stack_key(nodes[i], i))
        if c in variant.reversed_columns:
            members.reverse()
        if c in variant.spread_columns:  # side by side in a row instead of stacked
            for j, i in enumerate(members):
                x += (previous_width / 2 + COL_GAP + shapes[i].width / 2) if c or j else 0.0
                previous_width = shapes[i].width
                centers[i] = (x, 0.0)
                state.columns[node_key(i)] = c
            continue
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
    return centers, by_column


def _has_stub(state: LayoutState, index: int) -> bool:
    """True when node ``index`` carries an open leg that no other node carries."""
    return any(state.is_open(leg) and sum(leg in legs for legs in state.legs_of) == 1 for leg in state.legs_of[index])


def _satellites(state: LayoutState, indices: list[int]) -> dict[int, int]:
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


def _place_satellites(state: LayoutState, satellites: dict[int, int], centers: dict[int, Point], shapes: dict) -> None:
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
    if node.kind in (NodeKind.PATTERN, NodeKind.FOLDED):
        return (1, _spatial_index(node))
    return (0 if node.kind is NodeKind.OPERAND else 2, index)


def _center_connectors(
    state: LayoutState, by_column: dict[int, list[int]], centers: dict[int, Point], shapes: dict
) -> None:
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
