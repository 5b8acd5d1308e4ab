"""Legs that carry no information (size 1) or always travel together (merge them into one, bigger BLAS dimensions).

Every rule here removes a leg from the diagram, so repeated application terminates.
"""

from __future__ import annotations

from tnderiv.ir import Diagram, Node, NodeKind, ones
from tnderiv.simplify.edits import adjacent, drop_leg, folded_node, merge_legs
from tnderiv.simplify.rule import rule
from tnderiv.simplify.sizes import known_int


def _without_open(diagram: Diagram, remove: set[str], insert: dict[str, str] | None = None) -> tuple[tuple[str, ...], tuple[int, ...] | None]:
    """Open legs and groups with legs in ``remove`` dropped (``insert`` maps a dropped leg to its replacement)."""
    groups = []
    for group in diagram.open_axis_groups:
        new = []
        for leg in group:
            if leg in remove:
                if insert and leg in insert:
                    new.append(insert[leg])
            else:
                new.append(leg)
        groups.append(tuple(dict.fromkeys(new)))
    lengths = tuple(len(g) for g in groups)
    return tuple(leg for g in groups for leg in g), (None if all(n == 1 for n in lengths) else lengths)


@rule("squeeze", priority=70)
def squeeze(diagram: Diagram) -> Diagram | None:
    """A summed leg of size 1 always takes index 0: drop it from every node.

    Fires on a summed leg provably of size 1 that no pattern carries (a pattern's legs are its
    structure; the pattern rules deal with them). Operands keep their user layout (a group may become
    empty: an axis of size 1); copy tensors and ones lose the leg; a folded constant sums it.
    """
    return _squeeze(diagram, open_too=False)


@rule("squeeze open legs", priority=72, stage="plan")
def squeeze_open(diagram: Diagram) -> Diagram | None:
    """As ``squeeze``, for open legs of size 1 too (the result's axis keeps its size 1). Plan stage only."""
    return _squeeze(diagram, open_too=True)


def _squeeze(diagram: Diagram, open_too: bool) -> Diagram | None:
    for leg, size in diagram.sizes.items():
        if known_int(size) != 1 or (leg in diagram.open_legs and not open_too):
            continue
        carriers = diagram.nodes_with(leg)
        if any(diagram.nodes[j].kind is NodeKind.PATTERN for j in carriers):
            continue
        nodes: list[Node] = []
        for j, node in enumerate(diagram.nodes):
            if j not in carriers:
                nodes.append(node)
                continue
            rest = tuple(x for x in node.legs if x != leg)
            if node.kind is NodeKind.OPERAND:
                dropped = drop_leg(node, leg, diagram.sizes)
                if dropped is None:
                    break
                nodes.append(dropped)
            elif node.kind is NodeKind.DELTA:
                if len(rest) >= 2:
                    nodes.append(Node(NodeKind.DELTA, rest))
                elif rest:
                    nodes.append(ones(*rest))
            elif node.kind is NodeKind.ONES:
                if rest:
                    nodes.append(ones(*rest))
            elif node.kind is NodeKind.FOLDED:
                nodes.append(folded_node((node,), rest, diagram.sizes))
            else:
                break
        else:
            if leg not in diagram.open_legs:
                return diagram.replace(nodes=tuple(nodes))
            open_legs, groups = _without_open(diagram, {leg})
            if not set(open_legs) <= {x for n in nodes for x in n.legs}:
                continue  # an open leg would be on no node
            return diagram.replace(nodes=tuple(nodes), open_legs=open_legs, open_groups=groups)
    return None


@rule("merge legs", priority=71)
def merge(diagram: Diagram) -> Diagram | None:
    """Two summed legs that always travel together are one leg of the product size (bigger BLAS dimensions).

    Fires on summed legs ``a, b`` carried by exactly the same nodes, all operands or ones, where on
    every operand ``b`` directly follows ``a`` inside one user axis (so one stride reads both).
    Merging across user axes is left to the einsum backend (it reshapes operands to matrices itself).
    """
    return _merge(diagram, open_too=False)


@rule("merge open legs", priority=73, stage="plan")
def merge_open(diagram: Diagram) -> Diagram | None:
    """As ``merge legs``, also for two open legs adjacent within one output axis. Plan stage only."""
    return _merge(diagram, open_too=True)


def _carriers(diagram: Diagram) -> dict[str, tuple[int, ...]]:
    """``diagram.nodes_with(leg)`` for every leg, in one pass over the nodes."""
    found: dict[str, list[int]] = {leg: [] for leg in diagram.sizes}
    for j, node in enumerate(diagram.nodes):
        for leg in dict.fromkeys(node.legs):
            found[leg].append(j)
    return {leg: tuple(js) for leg, js in found.items()}


def _merge(diagram: Diagram, open_too: bool) -> Diagram | None:
    legs = list(diagram.sizes)
    open_legs = diagram.open_legs
    carried = _carriers(diagram)
    by_carriers: dict[tuple[int, ...], list[str]] = {}
    for leg in legs:
        by_carriers.setdefault(carried[leg], []).append(leg)
    for a in legs:
        if a in open_legs and not open_too:
            continue
        carriers = carried[a]
        if not carriers or len(by_carriers[carriers]) < 2:
            continue
        if any(diagram.nodes[j].kind not in (NodeKind.OPERAND, NodeKind.ONES) for j in carriers):
            continue
        for b in by_carriers[carriers]:  # the legs on exactly the same nodes, in the order of ``legs``
            if b == a:
                continue
            if (a in open_legs) != (b in open_legs):
                continue
            if a in open_legs and not any(
                a in group and b in group and group.index(b) == group.index(a) + 1 for group in diagram.open_axis_groups
            ):
                continue
            if not all(diagram.nodes[j].kind is NodeKind.ONES or adjacent(diagram.nodes[j], a, b) for j in carriers):
                continue  # merge_legs would refuse an operand (cheap check first: most pairs end here)
            merged = diagram.fresh_leg(f"{a}·{b}")
            sizes = dict(diagram.sizes)
            sizes[merged] = sizes[a] * sizes[b]
            nodes = []
            for j, node in enumerate(diagram.nodes):
                if j not in carriers:
                    nodes.append(node)
                elif node.kind is NodeKind.ONES:
                    nodes.append(ones(*(x for x in node.legs if x != b and x != a), merged))
                else:
                    new = merge_legs(node, a, b, merged, sizes)
                    if new is None:
                        break
                    nodes.append(new)
            else:
                if a in open_legs:
                    open_, groups = _without_open(diagram, {a, b}, {a: merged, b: merged})
                    return diagram.replace(nodes=tuple(nodes), open_legs=open_, sizes={merged: sizes[merged]}, open_groups=groups)
                return diagram.replace(nodes=tuple(nodes), sizes={merged: sizes[merged]})
    return None
