"""Two-copy networks (a network glued to a primed copy of itself): finding the copies and mirroring one.

The copy is laid out like any network; its mirror image goes below it (``axis="x"``) or to its right
(``axis="y"``, the paper style: legs shared by the copies run straight across the axis, their dots on
it). ``Variant`` names one of the arrangements the layout tries; it keeps the one with fewest crossings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tnderiv.ir import Diagram, Node
from tnderiv.render.geometry import Point
from tnderiv.render.layout_state import MIRROR_GAP, LayoutState, node_key
from tnderiv.render.model import Shape


@dataclass(frozen=True)
class Variant:
    """One arrangement: the mirror axis, whether the copy is flipped (inputs face the axis), reversed stacks,
    and whether hyperedge dots keep their spokes off the other legs (at times a detour costs more)."""

    axis: Literal["x", "y"] = "y"
    flip: bool = False
    reversed_columns: frozenset[int] = frozenset()
    dots_avoid_edges: bool = True
    spread_columns: frozenset[int] = frozenset()


def variants(mirrored: bool) -> list[Variant]:
    """The arrangements to try, best guess first (ties keep the earlier one)."""
    if mirrored:
        return [Variant("y", flip=True), Variant("y"), Variant("x")]
    return [Variant(""), Variant("", dots_avoid_edges=False)]


def mirror_pairs(diagram: Diagram) -> list[tuple[int, int]] | None:
    """Pairs (copy, mirror image) of nodes when the diagram is a network glued to a primed copy of itself."""
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


def mirror_centers(
    state: LayoutState, pairs: list[tuple[int, int]], centers: dict[int, Point], shapes: dict[int, Shape], axis: Literal["x", "y"]
) -> None:
    """Move the copy (the first of each pair) off the axis and put its mirror image across it."""
    state.axis = axis
    if axis == "x":
        low = min(centers[a][1] - shapes[a].height / 2 for a, _ in pairs)
        shift = MIRROR_GAP / 2 - low
        moved = {a: (centers[a][0], centers[a][1] + shift) for a, _ in pairs}
        images = {b: (moved[a][0], -moved[a][1]) for a, b in pairs}
    else:
        right = max(centers[a][0] + shapes[a].width / 2 for a, _ in pairs)
        shift = -MIRROR_GAP / 2 - right
        moved = {a: (centers[a][0] + shift, centers[a][1]) for a, _ in pairs}
        images = {b: (-moved[a][0], moved[a][1]) for a, b in pairs}
    for a, b in pairs:
        centers[a], centers[b] = moved[a], images[b]
        state.columns[node_key(b)] = state.columns[node_key(a)]
        state.half[node_key(a)], state.half[node_key(b)] = 1, -1


def flip_copy(centers: dict[int, Point], indices: list[int]) -> None:
    """Mirror the copy left to right about its own middle (its inputs then face the axis)."""
    xs = [centers[i][0] for i in indices]
    middle = (min(xs) + max(xs)) / 2
    for i in indices:
        centers[i] = (2 * middle - centers[i][0], centers[i][1])
