"""Constant folding: a sub-network of constants (patterns, deltas, ones, folded nodes) becomes one constant node.

The folded node keeps the sub-network as a diagram (legs renamed canonically), so two equal
sub-networks fold to equal nodes; plans contract it once per shape (``plan.constants``) and keep the
values on the device. Every firing replaces two nodes by one, so repeated application terminates.
"""

from __future__ import annotations

from collections.abc import Mapping

from tnderiv.ir import Diagram, Node, NodeKind
from tnderiv.simplify.edits import folded_node
from tnderiv.simplify.rule import rule
from tnderiv.simplify.sizes import Size, product, provably_le

FOLDABLE = (NodeKind.PATTERN, NodeKind.DELTA, NodeKind.ONES, NodeKind.FOLDED)


def _size(node: Node, sizes: Mapping[str, Size]) -> Size:
    return product(sizes[leg] for leg in node.legs)


@rule("constant folding", priority=80)
def fold_constants(diagram: Diagram) -> Diagram | None:
    """Two constant nodes sharing a leg that nothing else carries fold into one constant node.

    Fires where the folded node is provably no larger than the larger of the two (it sums the shared
    private legs away, e.g. ``Π[k, o, i] Π̄[o, j]``); with symbolic sizes this is usually decided at plan
    time. The planner folds any constant-only step of a contraction as well. Removes a node.
    """
    nodes = diagram.nodes
    counts = diagram.leg_count
    open_legs = set(diagram.open_legs)
    sizes = diagram.sizes
    for a in range(len(nodes)):
        if nodes[a].kind not in FOLDABLE:
            continue
        for b in range(a + 1, len(nodes)):
            if nodes[b].kind not in FOLDABLE:
                continue
            shared = set(nodes[a].legs) & set(nodes[b].legs)
            private = [leg for leg in shared if counts[leg] == 2 and leg not in open_legs]
            if not private:
                continue
            both = list(dict.fromkeys(nodes[a].legs + nodes[b].legs))
            keep = [leg for leg in both if leg not in private]
            if not any(provably_le(product(sizes[leg] for leg in keep), _size(n, sizes)) for n in (nodes[a], nodes[b])):
                continue
            folded = folded_node((nodes[a], nodes[b]), keep, sizes)
            rest = tuple(n for j, n in enumerate(nodes) if j not in (a, b))
            return diagram.replace(nodes=rest + (folded,))
    return None
