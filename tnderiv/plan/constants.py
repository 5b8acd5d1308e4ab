"""Values of constant nodes (index patterns, copy tensors, ones) for bound leg sizes, as numpy arrays."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np

from tnderiv.ir import Diagram, Node, NodeKind, PaddingMode, PatternParams
from tnderiv.plan.cache import LRUCache, register_cache


def constant_array(node: Node, sizes: Mapping[str, int]) -> np.ndarray:
    """The node's values for these leg sizes (read-only; cached per shape)."""
    shape = tuple(int(sizes[leg]) for leg in node.legs)
    if node.kind is NodeKind.PATTERN:
        assert node.pattern is not None
        return pattern_array(node.pattern, *shape)
    if node.kind is NodeKind.DELTA:
        return delta_array(shape)
    if node.kind is NodeKind.ONES:
        return _readonly(np.ones(shape, dtype=np.int8))
    if node.kind is NodeKind.SCALAR:
        return _readonly(np.array(node.value))
    if node.kind is NodeKind.FOLDED:
        return folded_array(node.network)
    raise TypeError(f"node {node.display_name!r} of kind {node.kind.value} has no constant value")


@lru_cache(maxsize=1024)
def pattern_array(params: PatternParams, k_size: int, o_size: int, i_size: int) -> np.ndarray:
    """``Π[k, o, i] = 1 iff i = map(o·S + k·D − P_left)``, with ``map`` given by the padding mode."""
    k = np.arange(k_size)[:, None]
    o = np.arange(o_size)[None, :]
    idx = o * params.stride + k * params.dilation - params.pad_left
    idx = np.broadcast_to(idx, (k_size, o_size)).copy()
    if params.mode is PaddingMode.REFLECT:
        idx = np.where(idx < 0, -idx, idx)
        idx = np.where(idx >= i_size, 2 * (i_size - 1) - idx, idx)
    elif params.mode is PaddingMode.REPLICATE:
        idx = np.clip(idx, 0, i_size - 1)
    elif params.mode is PaddingMode.CIRCULAR:
        idx = np.mod(idx, i_size)
    valid = (idx >= 0) & (idx < i_size)
    out = np.zeros((k_size, o_size, i_size), dtype=np.int8)
    kk, oo = np.nonzero(valid)
    out[kk, oo, idx[kk, oo]] = 1
    return _readonly(out)


@lru_cache(maxsize=256)
def folded_array(network: Diagram) -> np.ndarray:
    """The values of a constant-only diagram (its sizes bound to integers), contracted once and cached."""
    from tnderiv.plan.reference import contract_dense

    sizes = {leg: int(size) for leg, size in network.sizes.items() if size.is_Integer}
    unbound = set(network.sizes) - set(sizes)
    if unbound:
        raise ValueError(f"a folded constant needs bound sizes, but legs {sorted(unbound)} are symbolic: {network}")
    value = contract_dense(network, {}).reshape(tuple(sizes[leg] for leg in network.open_legs))
    return _readonly(np.array(value, dtype=np.float64, order="C"))


@lru_cache(maxsize=256)
def delta_array(shape: tuple[int, ...]) -> np.ndarray:
    """Copy tensor: 1 where all indices agree."""
    if len(set(shape)) > 1:
        raise ValueError(f"a copy tensor needs legs of equal size, got {shape}")
    out = np.zeros(shape, dtype=np.int8)
    if shape:
        out[(np.arange(shape[0]),) * len(shape)] = 1
    return _readonly(out)


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


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
register_cache("patterns", "index patterns Π on the host (numpy)", lambda: pattern_array)
register_cache("folded", "folded constant-only networks on the host (numpy)", lambda: folded_array)
register_cache("deltas", "copy tensors on the host (numpy)", lambda: delta_array)
