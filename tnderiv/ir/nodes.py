"""Nodes of a tensor-network diagram: operands, copy tensors, index patterns, ones, scalars."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any, Literal


class NodeKind(str, enum.Enum):
    """What a node stands for."""

    OPERAND = "operand"  # runtime data, looked up by name (x, weight, grad_out, ...)
    DELTA = "delta"  # copy tensor: 1 where all legs agree
    PATTERN = "pattern"  # 0/1 index pattern Π[k, o, i] of one spatial dimension
    ONES = "ones"  # all-ones tensor (a sum or a broadcast)
    SCALAR = "scalar"  # a number with no legs
    FOLDED = "folded"  # a sub-network of constants contracted into one constant (e.g. Π̄ = Σ_o Π)


PaddingModeName = Literal["zeros", "reflect", "replicate", "circular"]  # the values of ``PaddingMode``


class PaddingMode(str, enum.Enum):
    """How a pattern treats an index that falls outside the input."""

    ZEROS = "zeros"
    REFLECT = "reflect"
    REPLICATE = "replicate"
    CIRCULAR = "circular"

    @classmethod
    def parse(cls, value: PaddingModeName | PaddingMode) -> PaddingMode:
        """The mode named ``value``; raises listing the valid names."""
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(repr(m.value) for m in cls)
            raise ValueError(f"padding_mode={value!r} is not supported; expected one of {valid}") from None


@dataclass(frozen=True)
class PatternParams:
    """Hyperparameters of an index pattern ``Π[k, o, i] = 1 iff i = o·stride + k·dilation − pad_left``.

    Out-of-range ``i`` is dropped (``zeros``) or mapped back into the input by ``mode``.
    The sizes of ``k, o, i`` are the sizes of the pattern node's legs.
    """

    stride: int = 1
    dilation: int = 1
    pad_left: int = 0
    mode: PaddingMode = PaddingMode.ZEROS

    def label(self) -> str:
        """A short, stable description used in hashes and printouts."""
        return f"S={self.stride},D={self.dilation},P={self.pad_left},{self.mode.value}"


@dataclass(frozen=True)
class AxisView:
    """How an operand's legs index one axis of the user's tensor: ``position = offset + Σ stride·index``.

    ``size`` is the length of the user's axis (the legs may read only part of it, e.g. a strided
    sub-sampling ``(o, k) ↦ o·S + k``); ``strides`` has one entry per leg of the axis group.
    """

    size: Any  # int or sympy expression
    strides: tuple[int, ...]
    offset: int = 0

    def label(self) -> str:
        return f"{self.size}:{self.offset}+{self.strides}"


@dataclass(frozen=True)
class Node:
    """One tensor of a diagram.

    ``legs`` are leg names in axis order. ``groups`` says how an operand's legs merge into the axes
    of the user's tensor (e.g. ``(1, 2, 1)`` for ``x[n, (g c_in), i0]``); ``None`` means one axis per leg;
    a group of length 0 is a user axis of size 1 without a leg. ``view`` (operands, one entry per
    axis group, ``None`` = row-major) reads an axis with explicit strides. A ``FOLDED`` node holds in
    ``network`` the constant diagram it stands for; its legs are that diagram's open legs, in order.
    """

    kind: NodeKind
    legs: tuple[str, ...]
    name: str = ""
    pattern: PatternParams | None = None
    value: float = 1.0
    groups: tuple[int, ...] | None = None
    view: tuple[AxisView | None, ...] | None = None
    network: Any = None  # Diagram of a FOLDED node

    def __post_init__(self) -> None:
        if len(set(self.legs)) != len(self.legs):
            raise ValueError(f"node {self.display_name!r} repeats a leg: {self.legs}")
        if self.kind is NodeKind.PATTERN and (self.pattern is None or len(self.legs) != 3):
            raise ValueError(f"a pattern node needs PatternParams and legs (k, o, i), got {self.legs}")
        if self.kind is NodeKind.OPERAND and not self.name:
            raise ValueError("an operand node needs a name")
        if self.kind is NodeKind.SCALAR and self.legs:
            raise ValueError("a scalar node has no legs")
        if self.groups is not None and sum(self.groups) != len(self.legs):
            raise ValueError(f"groups {self.groups} do not cover the legs {self.legs} of {self.display_name!r}")
        if self.view is not None:
            axes = self.axis_groups
            if len(self.view) != len(axes) or any(
                v is not None and len(v.strides) != len(g) for v, g in zip(self.view, axes)
            ):
                raise ValueError(f"view {self.view} does not match the axes {axes} of {self.display_name!r}")
        if self.kind is NodeKind.FOLDED and (self.network is None or len(self.network.open_legs) != len(self.legs)):
            raise ValueError(f"a folded node needs a constant diagram with open legs matching {self.legs}")

    @property
    def display_name(self) -> str:
        """Name used in printouts: the operand's name or a symbol for the kind."""
        if self.kind is NodeKind.OPERAND:
            return self.name
        return {
            NodeKind.DELTA: "δ",
            NodeKind.PATTERN: "Π",
            NodeKind.ONES: "1",
            NodeKind.SCALAR: f"{self.value:g}",
            NodeKind.FOLDED: self.name or "C",
        }[self.kind]

    @property
    def is_constant(self) -> bool:
        """True for nodes whose values are known without runtime data."""
        return self.kind is not NodeKind.OPERAND

    @property
    def axis_groups(self) -> tuple[tuple[str, ...], ...]:
        """The node's legs grouped into the user's tensor axes."""
        return split_groups(self.legs, self.groups)

    def label(self) -> str:
        """Everything about the node except its leg names (for canonical hashing)."""
        parts = [self.kind.value, self.name]
        if self.pattern is not None:
            parts.append(self.pattern.label())
        if self.kind is NodeKind.SCALAR:
            parts.append(repr(self.value))
        if self.groups is not None:
            parts.append(str(self.groups))
        if self.view is not None:
            parts.append(",".join("-" if v is None else v.label() for v in self.view))
        if self.network is not None:
            parts.append(self.network.canonical_hash)
        return "|".join(parts)

    def with_legs(self, legs: tuple[str, ...]) -> Node:
        """The same node on other legs."""
        # by keyword, but not dataclasses.replace: renaming is on the cold path, and replace costs 1.5x
        return Node(
            self.kind,
            legs,
            name=self.name,
            pattern=self.pattern,
            value=self.value,
            groups=self.groups,
            view=self.view,
            network=self.network,
        )

    def axis_sizes(self, sizes: Any) -> tuple[Any, ...]:
        """Sizes of the user's axes from leg sizes (a mapping leg → size): products, or the view's size."""
        out = []
        views = self.view or (None,) * len(self.axis_groups)
        for group, view in zip(self.axis_groups, views):
            out.append(view.size if view is not None else math.prod((sizes[leg] for leg in group), start=1))
        return tuple(out)


def split_groups(legs: tuple[str, ...], groups: tuple[int, ...] | None) -> tuple[tuple[str, ...], ...]:
    """Split ``legs`` into consecutive groups of the given lengths (one leg each if ``None``)."""
    if groups is None:
        return tuple((leg,) for leg in legs)
    out, start = [], 0
    for length in groups:
        out.append(legs[start : start + length])
        start += length
    return tuple(out)


def operand(name: str, *axes: str | tuple[str, ...]) -> Node:
    """An operand node; each axis is a leg name or a tuple of legs merged into one user axis."""
    legs: list[str] = []
    groups: list[int] = []
    for axis in axes:
        group = (axis,) if isinstance(axis, str) else tuple(axis)
        legs.extend(group)
        groups.append(len(group))
    merged = any(g != 1 for g in groups)
    return Node(NodeKind.OPERAND, tuple(legs), name=name, groups=tuple(groups) if merged else None)


def delta(*legs: str) -> Node:
    """A copy tensor on ``legs``."""
    return Node(NodeKind.DELTA, tuple(legs))


def ones(*legs: str) -> Node:
    """An all-ones tensor on ``legs``."""
    return Node(NodeKind.ONES, tuple(legs))


def pattern(k: str, o: str, i: str, params: PatternParams) -> Node:
    """The index pattern ``Π[k, o, i]`` of one spatial dimension."""
    return Node(NodeKind.PATTERN, (k, o, i), pattern=params)
