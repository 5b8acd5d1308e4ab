"""Constant nodes (index patterns, copy tensors, ones, folded networks) as arrays of the plan's backend and device.

Their host values (numpy) are defined beside the dense reference evaluator (``plan.reference``), since a
folded constant is itself a dense contraction; they are re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tnderiv.ir import Node
from tnderiv.plan.cache import LRUCache, register_cache
from tnderiv.plan.reference import constant_array, delta_array, folded_array, pattern_array

_DEVICE_CONSTANTS: LRUCache[Any] = LRUCache(maxsize=512)


def device_constant(node: Node, sizes: Mapping[str, int], backend: Any, like: Any) -> Any:
    """The node's values as an array of ``like``'s backend, dtype and device; built once per shape (bounded cache)."""
    leg_sizes = tuple(int(sizes[leg]) for leg in node.legs)
    key = (node, leg_sizes, backend.name, backend.device_key(like), backend.dtype_key(like))
    return device_cached(key, lambda: backend.from_numpy(constant_array(node, sizes), like))


def device_cached(key: Any, build: Any) -> Any:
    """A device array cached under ``key`` (constants and folded constant-only steps; bounded, least recently used dropped)."""
    return _DEVICE_CONSTANTS.get_or_build(key, build)


register_cache("constants", "constants on the device (index patterns, copy tensors, folded steps)", lambda: _DEVICE_CONSTANTS)

__all__ = ["constant_array", "delta_array", "device_cached", "device_constant", "folded_array", "pattern_array"]
