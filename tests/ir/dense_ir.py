"""A dense oracle for small IR diagrams: explicit numpy tensors per node and one ``np.einsum`` (never tnderiv's planner)."""

from __future__ import annotations

import string
from collections.abc import Mapping

import numpy as np

from tnderiv.ir import Diagram, NodeKind


def node_tensor(node, sizes: Mapping[str, int], operands: Mapping[str, np.ndarray]) -> np.ndarray:
    """The node as an explicit array with one axis per leg (operands without merged axes only)."""
    shape = tuple(sizes[leg] for leg in node.legs)
    if node.kind is NodeKind.OPERAND:
        array = operands[node.name]
        assert array.shape == shape, (node.name, array.shape, shape)
        return array
    if node.kind is NodeKind.ONES:
        return np.ones(shape)
    if node.kind is NodeKind.SCALAR:
        return np.array(node.value)
    if node.kind is NodeKind.DELTA:
        out = np.zeros(shape)
        for i in range(min(shape, default=1)):
            out[(i,) * len(shape)] = 1.0
        return out
    raise NotImplementedError(node.kind)


def evaluate(diagram: Diagram, operands: Mapping[str, np.ndarray]) -> np.ndarray:
    """``coefficient · Σ_summed Π nodes`` by one einsum with a letter per leg."""
    sizes = {leg: int(size) for leg, size in diagram.sizes.items()}
    letter = dict(zip(sizes, string.ascii_letters, strict=False))
    inputs = ",".join("".join(letter[leg] for leg in node.legs) for node in diagram.nodes)
    output = "".join(letter[leg] for leg in diagram.open_legs)
    arrays = [node_tensor(node, sizes, operands) for node in diagram.nodes]
    return float(diagram.coefficient) * np.einsum(f"{inputs}->{output}", *arrays)
