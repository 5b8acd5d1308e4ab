"""A bounded least-recently-used cache (``LRUCache``): plans, warm calls, simplifications — never user tensors.

It lives in ``ir`` (the lowest package) so that every package can keep one, and ``plan.cache`` registers them all.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class CacheInfo:
    hits: int
    misses: int
    size: int
    maxsize: int


class LRUCache(Generic[T]):
    """At most ``maxsize`` entries; the least recently used is dropped first."""

    def __init__(self, maxsize: int = 512) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize={maxsize}: expected ≥ 1")
        self.maxsize = maxsize
        self._entries: OrderedDict[Hashable, T] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get_or_build(self, key: Hashable, build: Callable[[], T]) -> T:
        """The entry under ``key``, built (and stored) on a miss."""
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

    def clear(self) -> None:
        self._entries.clear()
        self.hits = self.misses = 0

    def info(self) -> CacheInfo:
        return CacheInfo(self.hits, self.misses, len(self._entries), self.maxsize)

    def __len__(self) -> int:
        return len(self._entries)


__all__ = ["CacheInfo", "LRUCache"]
