"""A slow, plain evaluator: every node as a dense numpy array, one einsum per term.

It defines the host values of the constant nodes (which the compiled plans share) and shares nothing
else with them, so rewrite rules (and the debug switch that re-checks them, which this module plugs
into ``simplify.check``) compare a diagram before and after against it.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np
import opt_einsum as oe
import sympy

from tnderiv.ir import Diagram, Expression, Node, NodeKind, PaddingMode, PatternParams, terms_of
from tnderiv.plan.bind import concrete
from tnderiv.plan.cache import register_cache
from tnderiv.plan.layout import leg_array, leg_layout
from tnderiv.simplify.check import register_reference


def integer_sizes(diagram: Diagram, bindings: Mapping[Any, int] | None = None) -> dict[str, int]:
    """Leg sizes of ``diagram`` as ints (``bindings`` maps size symbols to values)."""
    out = {}
    for leg, size in diagram.sizes.items():
        value = size.xreplace(_sympy(bindings)) if not size.is_Integer else size
        if not value.is_Integer:
            raise ValueError(f"leg {leg} has size {size}, which needs values for {sorted(map(str, value.free_symbols))}")
        out[leg] = int(value)
    return out


def _sympy(bindings: Mapping[Any, int] | None) -> dict[Any, sympy.Integer]:
    return {k: sympy.Integer(int(v)) for k, v in (bindings or {}).items()}


def operand_shapes(expr: Expression, bindings: Mapping[Any, int] | None = None) -> dict[str, tuple[int, ...]]:
    """The user-layout shape of every operand of ``expr``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for term in terms_of(expr):
        sizes = integer_sizes(term, bindings)
        for node in term.nodes:
            if node.kind is NodeKind.OPERAND:
                shape = leg_layout(node, sizes).user_shape
                if shapes.setdefault(node.name, shape) != shape:
                    raise ValueError(f"operand {node.name} has shapes {shapes[node.name]} and {shape} in one expression")
    return shapes


def output_shape(expr: Expression, bindings: Mapping[Any, int] | None = None) -> tuple[int, ...]:
    """The user-layout shape of the result."""
    term = terms_of(expr)[0]
    sizes = integer_sizes(term, bindings)
    return tuple(int(np.prod([sizes[leg] for leg in group], dtype=np.int64)) for group in term.open_axis_groups)


def contract_dense(expr: Expression, operands: Mapping[str, np.ndarray], bindings: Mapping[Any, int] | None = None) -> np.ndarray:
    """``expr`` evaluated with numpy, every constant dense; the result in the user's layout."""
    total = None
    shape = output_shape(expr, bindings)
    for term in terms_of(expr):
        sizes = integer_sizes(term, bindings)
        symbols = {leg: oe.get_symbol(j) for j, leg in enumerate(term.sizes)}
        arrays, inputs = [], []
        for node in term.nodes:
            if node.kind is NodeKind.OPERAND:
                arrays.append(np.asarray(leg_array(np.asarray(operands[node.name]), leg_layout(node, sizes))))
            else:
                arrays.append(constant_array(node, sizes).astype(np.float64))
            inputs.append("".join(symbols[leg] for leg in node.legs))
        out_legs = term.open_legs
        equation = ",".join(inputs) + "->" + "".join(symbols[leg] for leg in out_legs)
        value = oe.contract(equation, *arrays) if arrays else np.array(1.0)
        value = np.asarray(value, dtype=np.float64) * float(term.coefficient.xreplace(_sympy(bindings)))
        value = np.broadcast_to(value, tuple(sizes[leg] for leg in out_legs)).reshape(shape)
        total = value if total is None else total + value
    assert total is not None
    return total


def random_operands(expr: Expression, bindings: Mapping[Any, int] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal float64 operands of the right user shapes."""
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape) for name, shape in operand_shapes(expr, bindings).items()}


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


def index_map(params: PatternParams, positions: np.ndarray, size: int) -> np.ndarray:
    """Input index read at padded ``positions − P_left`` under the padding mode; ``size`` where nothing is read."""
    idx = positions - params.pad_left
    if params.mode is PaddingMode.REFLECT:
        idx = np.where(idx < 0, -idx, idx)
        idx = np.where(idx >= size, 2 * (size - 1) - idx, idx)
    elif params.mode is PaddingMode.REPLICATE:
        idx = np.clip(idx, 0, size - 1)
    elif params.mode is PaddingMode.CIRCULAR:
        idx = np.mod(idx, size)
    return np.where((idx >= 0) & (idx < size), idx, size)


@lru_cache(maxsize=1024)
def pattern_array(params: PatternParams, k_size: int, o_size: int, i_size: int) -> np.ndarray:
    """``Π[k, o, i] = 1 iff i = map(o·S + k·D − P_left)``, with ``map`` given by the padding mode."""
    kk, oo, ii = pattern_entries(params, k_size, o_size, i_size)
    out = np.zeros((k_size, o_size, i_size), dtype=np.int8)
    out[kk, oo, ii] = 1
    return _readonly(out)


def pattern_entries(params: PatternParams, k_size: int, o_size: int, i_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The coordinates ``(k, o, i)`` of ``Π``'s non-zero entries (each is 1)."""
    k = np.arange(k_size)[:, None]
    o = np.arange(o_size)[None, :]
    idx = index_map(params, np.broadcast_to(o * params.stride + k * params.dilation, (k_size, o_size)), i_size)
    kk, oo = np.nonzero(idx < i_size)
    return kk, oo, idx[kk, oo]


@lru_cache(maxsize=256)
def folded_array(network: Diagram) -> np.ndarray:
    """The values of a constant-only diagram (its sizes bound to integers), contracted once and cached."""
    sizes = {leg: int(size) for leg, size in network.sizes.items() if size.is_Integer}
    unbound = set(network.sizes) - set(sizes)
    if unbound:
        raise ValueError(f"a folded constant needs bound sizes, but legs {sorted(unbound)} are symbolic: {network}")
    single = _pattern_sum(network, sizes)
    if single is not None:
        return single
    value = contract_dense(network, {}).reshape(tuple(sizes[leg] for leg in network.open_legs))
    return _readonly(np.array(value, dtype=np.float64, order="C"))


def _pattern_sum(network: Diagram, sizes: Mapping[str, int]) -> np.ndarray | None:
    """One index pattern summed over some of its legs (``Σ_o Π[k, o, i]`` of KFAC-reduce), counted from its
    non-zero entries: ``O(K·O)`` work instead of a dense ``K × O × I`` array (None for any other network)."""
    if len(network.nodes) != 1 or network.coefficient != 1:
        return None
    node = network.nodes[0]
    if node.kind is not NodeKind.PATTERN or len(set(node.legs)) != 3 or not network.open_legs or not set(network.open_legs) <= set(node.legs):
        return None
    assert node.pattern is not None
    coords = dict(zip(node.legs, pattern_entries(node.pattern, *(sizes[leg] for leg in node.legs))))
    out = np.zeros(tuple(sizes[leg] for leg in network.open_legs), dtype=np.float64)
    np.add.at(out, tuple(coords[leg] for leg in network.open_legs), 1.0)
    return _readonly(out)


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


class _CheckReference:
    """The rewrite checker's oracle: sizes bound (legs, views, folded constants), then contracted densely."""

    def operand_shapes(self, diagram: Diagram, bindings: Mapping[Any, int]) -> dict[str, tuple[int, ...]]:
        return operand_shapes(concrete(diagram, bindings))

    def contract(self, diagram: Diagram, operands: Mapping[str, np.ndarray], bindings: Mapping[Any, int]) -> np.ndarray:
        return contract_dense(concrete(diagram, bindings), operands)


register_cache("patterns", "index patterns Π on the host (numpy)", lambda: pattern_array)
register_cache("folded", "folded constant-only networks on the host (numpy)", lambda: folded_array)
register_cache("deltas", "copy tensors on the host (numpy)", lambda: delta_array)
register_reference(_CheckReference())
