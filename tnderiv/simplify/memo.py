"""A bounded memo of simplifications, keyed on the exact expression (not on its isomorphism class).

The driver is a deterministic function of the expression's exact structure (nodes in order, leg
names, sizes, coefficient, groups) and of the rules it runs, so a repeated input returns the stored
result unchanged. Keys never use ``Diagram.__eq__`` (equal up to renaming summed legs and node
order): a result derived for an isomorphic input would carry that input's names and order.

``plan.cache`` lists it as ``rewrites`` (``clear_caches`` clears it; simplify cannot import plan,
so ``plan.bind`` registers it).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

from tnderiv.ir import Diagram, DiagramSum, Expression, Node, terms_of


class MemoInfo(NamedTuple):
    """As ``functools.lru_cache``'s ``cache_info()``."""

    hits: int
    misses: int
    maxsize: int
    currsize: int


class Memo:
    """At most ``maxsize`` results, least recently used dropped first; ``cache_info``/``cache_clear`` as ``lru_cache``."""

    def __init__(self, maxsize: int = 512) -> None:
        self.maxsize = maxsize
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self.hits = self.misses = 0

    def get_or_build(self, key: Hashable, build: Callable[[], Any]) -> Any:
        entry = self._entries.get(key)
        if entry is not None:
            self.hits += 1
            self._entries.move_to_end(key)
            return entry
        self.misses += 1
        entry = build()
        self._entries[key] = entry
        if len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)
        return entry

    def cache_info(self) -> MemoInfo:
        return MemoInfo(self.hits, self.misses, self.maxsize, len(self._entries))

    def cache_clear(self) -> None:
        self._entries.clear()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)


SIMPLIFIED = Memo(maxsize=512)


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
