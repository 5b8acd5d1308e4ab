"""A bounded memo of simplifications, keyed on the exact expression (not on its isomorphism class).

The driver is a deterministic function of the expression's exact structure (nodes in order, leg
names, sizes, coefficient, groups) and of the rules it runs, so a repeated input returns the stored
result unchanged. Keys never use ``Diagram.__eq__`` (equal up to renaming summed legs and node
order): a result derived for an isomorphic input would carry that input's names and order.

``plan.cache`` lists it as ``rewrites`` (``clear_caches`` clears it; simplify cannot import plan,
so ``plan.bind`` registers it).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from tnderiv.ir import Diagram, DiagramSum, Expression, Node, terms_of
from tnderiv.ir.lru import LRUCache

SIMPLIFIED: LRUCache[Any] = LRUCache(maxsize=512)


def exact_key(expr: Expression) -> Hashable:
    """Everything the driver reads of ``expr``: its type and each term's exact structure."""
    return (isinstance(expr, DiagramSum), tuple(_diagram_key(term) for term in terms_of(expr)))


def _diagram_key(diagram: Diagram) -> Hashable:
    sizes = tuple((leg, _typed(size)) for leg, size in diagram.sizes.items())
    return (tuple(_node_key(node) for node in diagram.nodes), diagram.open_legs, sizes, _typed(diagram.coefficient), diagram.open_groups)


def _node_key(node: Node) -> Hashable:
    network = None if node.network is None else _diagram_key(node.network)
    return (node.kind, node.legs, node.name, node.pattern, _typed(node.value), node.groups, node.view, network)


def _typed(value: Any) -> tuple[type, Any]:
    # numbers that compare equal across types (2 == 2.0 == sympy.Integer(2)) stay apart
    return (type(value), value)
