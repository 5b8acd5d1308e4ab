"""The symbolic IR: legs with symbolic sizes, nodes, diagrams and sums of diagrams."""

from tnderiv.ir.diagram import Diagram, DiagramSum, Expression, make_sum, node_tag, terms_of
from tnderiv.ir.legs import Size, as_size, evaluate, size_symbol
from tnderiv.ir.nodes import (
    AxisView,
    Node,
    NodeKind,
    PaddingMode,
    PaddingModeName,
    PatternParams,
    delta,
    ones,
    operand,
    pattern,
    split_groups,
)
from tnderiv.ir.registry import DuplicateNameError, Registry, UnknownNameError

__all__ = [
    "AxisView",
    "Diagram",
    "DiagramSum",
    "DuplicateNameError",
    "Expression",
    "Node",
    "NodeKind",
    "PaddingMode",
    "PaddingModeName",
    "PatternParams",
    "Registry",
    "Size",
    "UnknownNameError",
    "as_size",
    "delta",
    "evaluate",
    "make_sum",
    "node_tag",
    "ones",
    "operand",
    "pattern",
    "size_symbol",
    "split_groups",
    "terms_of",
]
