"""Node edits that keep values: an operand's legs split, dropped or merged; constants folded into one node.

For operands the user's tensor stays what it is; only how the diagram's legs read it changes
(``groups`` and, where a reshape cannot say it, a strided ``view``). A folded node keeps its
sub-network as a diagram with canonically renamed legs, so equal sub-networks fold to equal nodes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tnderiv.ir import AxisView, Diagram, Node, NodeKind
from tnderiv.simplify.sizes import Size, known_int, product, provably_equal, row_major


def _group_of(node: Node, leg: str) -> int:
    return next(j for j, group in enumerate(node.axis_groups) if leg in group)


def _strides(node: Node, axis: int, sizes: Mapping[str, Size]) -> tuple[tuple[Size, ...], Size, int]:
    """Strides of the legs of user axis ``axis``, the axis' size and its offset."""
    group = node.axis_groups[axis]
    view = node.view[axis] if node.view is not None else None
    if view is None:
        return row_major([sizes[leg] for leg in group]), product(sizes[leg] for leg in group), 0
    return view.strides, view.size, view.offset


def _rebuild(
    node: Node,
    axis: int,
    group: Sequence[str],
    strides: Sequence[Size],
    axis_size: Size,
    offset: int,
    sizes: Mapping[str, Size],
) -> Node | None:
    """``node`` with user axis ``axis`` read by legs ``group`` at ``strides``; ``None`` if that needs unknown strides."""
    group_sizes = [sizes[leg] for leg in group]
    plain = offset == 0 and provably_equal(axis_size, product(group_sizes)) and all(
        known_int(size) == 1 or provably_equal(stride, expected)
        for size, stride, expected in zip(group_sizes, strides, row_major(group_sizes))
    )
    if plain:
        view = None
    else:
        int_strides = [known_int(s) for s in strides]
        if any(s is None for s in int_strides):
            return None  # a view needs numeric strides; decided again once sizes are bound
        view = AxisView(axis_size, tuple(int(s) for s in int_strides), offset)  # type: ignore[arg-type]
    groups = list(node.axis_groups)
    groups[axis] = tuple(group)
    views = list(node.view) if node.view is not None else [None] * len(groups)
    views[axis] = view
    legs = tuple(leg for g in groups for leg in g)
    lengths = tuple(len(g) for g in groups)
    return Node(
        node.kind,
        legs,
        node.name,
        node.pattern,
        node.value,
        None if all(n == 1 for n in lengths) else lengths,
        None if all(v is None for v in views) else tuple(views),
        node.network,
    )


def split_leg(
    node: Node, leg: str, parts: Sequence[tuple[str, Size]], steps: Sequence[int], sizes: Mapping[str, Size]
) -> Node | None:
    """Replace ``leg`` by ``parts`` (name, size) with ``index(leg) = Σ step·index(part)``; ``None`` if not expressible."""
    assert node.kind is NodeKind.OPERAND
    axis = _group_of(node, leg)
    strides, axis_size, offset = _strides(node, axis, sizes)
    group = node.axis_groups[axis]
    pos = group.index(leg)
    new_group = (*group[:pos], *(name for name, _ in parts), *group[pos + 1 :])
    new_strides = (*strides[:pos], *(step * strides[pos] for step in steps), *strides[pos + 1 :])
    extended = dict(sizes)
    extended.update(dict(parts))
    return _rebuild(node, axis, new_group, new_strides, axis_size, offset, extended)


def drop_leg(node: Node, leg: str, sizes: Mapping[str, Size]) -> Node | None:
    """Remove a size-1 leg (it always takes index 0)."""
    axis = _group_of(node, leg)
    strides, axis_size, offset = _strides(node, axis, sizes)
    group = node.axis_groups[axis]
    pos = group.index(leg)
    return _rebuild(node, axis, group[:pos] + group[pos + 1 :], strides[:pos] + strides[pos + 1 :], axis_size, offset, sizes)


def adjacent(node: Node, first: str, second: str) -> bool:
    """Whether ``second`` directly follows ``first`` in the user axis of ``node`` that reads ``first``."""
    group = node.axis_groups[_group_of(node, first)]
    pos = group.index(first)
    return pos + 1 < len(group) and group[pos + 1] == second


def merge_legs(node: Node, first: str, second: str, merged: str, sizes: Mapping[str, Size]) -> Node | None:
    """Replace adjacent legs ``first, second`` of one user axis by ``merged`` (``first`` major); ``None`` if impossible."""
    if not adjacent(node, first, second):
        return None
    axis = _group_of(node, first)
    group = node.axis_groups[axis]
    pos = group.index(first)
    strides, axis_size, offset = _strides(node, axis, sizes)
    if not provably_equal(strides[pos], strides[pos + 1] * sizes[second]):
        return None
    extended = dict(sizes)
    extended[merged] = sizes[first] * sizes[second]
    new_group = (*group[:pos], merged, *group[pos + 2 :])
    new_strides = (*strides[:pos], strides[pos + 1], *strides[pos + 2 :])
    return _rebuild(node, axis, new_group, new_strides, axis_size, offset, extended)


def folded_node(nodes: Sequence[Node], keep: Sequence[str], sizes: Mapping[str, Size]) -> Node:
    """One constant node on legs ``keep`` standing for the contraction of ``nodes`` (all other legs summed)."""
    flat: list[Node] = []
    sizes = dict(sizes)
    for position, node in enumerate(nodes):
        if node.kind is NodeKind.FOLDED:
            inlined, private = _inline(node, position)
            flat.extend(inlined)
            sizes.update(private)
        else:
            flat.append(node)
    legs = list(dict.fromkeys(leg for node in flat for leg in node.legs))
    summed = [leg for leg in legs if leg not in keep]
    mapping = {leg: f"_{j}" for j, leg in enumerate(keep)}
    mapping.update({leg: f"_s{j}" for j, leg in enumerate(summed)})
    inner = Diagram(
        tuple(node.with_legs(tuple(mapping[leg] for leg in node.legs)) for node in flat),
        tuple(mapping[leg] for leg in keep),
        {mapping[leg]: sizes[leg] for leg in legs},
    )
    patterns = sum(node.kind is NodeKind.PATTERN for node in flat)
    return Node(NodeKind.FOLDED, tuple(keep), name="Π̄" if patterns == 1 else "C", network=inner)


def _inline(node: Node, position: int) -> tuple[list[Node], dict[str, Size]]:
    """The nodes of a folded node's network on the outer leg names, and the sizes of its private summed legs."""
    inner: Diagram = node.network
    mapping = dict(zip(inner.open_legs, node.legs))
    private = {}
    for leg in inner.summed_legs:
        mapping[leg] = f"{leg}@{position}"
        private[mapping[leg]] = inner.sizes[leg]
    return [n.with_legs(tuple(mapping[leg] for leg in n.legs)) for n in inner.nodes], private
