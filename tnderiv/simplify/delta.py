"""Copy tensors, ones and scalars: eliminate what is only a renaming, a sum or a number.

Every rule here removes a leg from a node or a node from the diagram, so repeated application
terminates.
"""

from __future__ import annotations

from tnderiv.ir import Diagram, Node, NodeKind, ones
from tnderiv.simplify.rule import rule


@rule("delta elimination")
def eliminate_delta_leg(diagram: Diagram) -> Diagram | None:
    """A summed leg of a copy tensor of order ≥ 2 is a renaming: ``Σ_a δ(a, b, …) X[a] = X[b] δ(b, …)``.

    Fires on a delta with a summed leg ``a``; renames ``a`` to another leg ``b`` of the delta on the
    other nodes and drops ``a`` from the delta (an order-1 delta becomes ones). Covers delta–delta
    merges and renaming deltas.
    """
    open_legs = set(diagram.open_legs)
    for index, node in enumerate(diagram.nodes):
        if node.kind is not NodeKind.DELTA or len(node.legs) < 2:
            continue
        summed = [leg for leg in node.legs if leg not in open_legs]
        if not summed:
            continue
        a = summed[0]
        b = next(leg for leg in node.legs if leg != a)
        if any(b in other.legs and a in other.legs for j, other in enumerate(diagram.nodes) if j != index):
            continue  # renaming would repeat a leg on one node (a diagonal); leave it
        rest = tuple(leg for leg in node.legs if leg != a)
        replacement = ones(*rest) if len(rest) == 1 else Node(NodeKind.DELTA, rest)
        nodes = tuple(
            replacement if j == index else other.with_legs(tuple(b if leg == a else leg for leg in other.legs))
            for j, other in enumerate(diagram.nodes)
        )
        return diagram.replace(nodes=nodes)
    return None


@rule("ones absorption")
def absorb_ones_leg(diagram: Diagram) -> Diagram | None:
    """A ones leg that another node carries multiplies by 1; a ones leg on nothing else and summed is its size.

    Fires on a ones node with such a leg and removes the leg (an empty ones node disappears). A ones
    leg that is open and on no other node is a broadcast and stays.
    """
    open_legs = set(diagram.open_legs)
    counts = diagram.leg_count
    for index, node in enumerate(diagram.nodes):
        if node.kind is not NodeKind.ONES:
            continue
        for leg in node.legs:
            shared = counts[leg] > 1
            if shared or leg not in open_legs:
                factor = 1 if shared else diagram.sizes[leg]
                rest = tuple(x for x in node.legs if x != leg)
                nodes = diagram.nodes[:index] + ((ones(*rest),) if rest else ()) + diagram.nodes[index + 1 :]
                return diagram.replace(nodes=nodes, coefficient=diagram.coefficient * factor)
        if not node.legs:
            return diagram.replace(nodes=diagram.nodes[:index] + diagram.nodes[index + 1 :])
    return None


@rule("scalar folding")
def fold_scalar(diagram: Diagram) -> Diagram | None:
    """A scalar node is a factor of the coefficient. Fires on any scalar node and removes it."""
    for index, node in enumerate(diagram.nodes):
        if node.kind is NodeKind.SCALAR:
            nodes = diagram.nodes[:index] + diagram.nodes[index + 1 :]
            return diagram.replace(nodes=nodes, coefficient=diagram.coefficient * node.value)
    return None
