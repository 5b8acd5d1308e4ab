"""How an operand's legs read the user's tensor: axis groups (a reshape) and views (explicit strides).

``leg_layout(node, sizes)`` says, for bound leg sizes, where each leg steps in the user's tensor;
``leg_array`` applies it to a torch tensor or a numpy array without copying.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from tnderiv.ir import Node
from tnderiv.plan.backends import CUPY
from tnderiv.plan.cache import register_cache


@dataclass(frozen=True)
class LegLayout:
    """Leg shape of an operand, and for each leg ``(user axis, step along that axis)``; ``offsets`` per user axis.

    ``plain``: the legs are a reshape of the user's tensor (no view, nothing skipped); ``identity``:
    one leg per axis, so the user's tensor is used as it is.
    """

    user_shape: tuple[int, ...]
    shape: tuple[int, ...]
    steps: tuple[tuple[int, int], ...]
    offsets: tuple[int, ...]
    plain: bool

    @property
    def identity(self) -> bool:
        return self.plain and self.user_shape == self.shape


def leg_layout(node: Node, sizes: Mapping[str, int]) -> LegLayout:
    """The layout of ``node``'s legs for these (integer) leg sizes."""
    return _layout(node, tuple(int(sizes[leg]) for leg in node.legs))


@lru_cache(maxsize=4096)
def _layout(node: Node, leg_sizes: tuple[int, ...]) -> LegLayout:
    size_of = dict(zip(node.legs, leg_sizes))
    views = node.view or (None,) * len(node.axis_groups)
    user_shape, steps, offsets = [], [], []
    plain = True
    for axis, (group, view) in enumerate(zip(node.axis_groups, views)):
        group_sizes = [size_of[leg] for leg in group]
        if view is None:
            strides = []
            step = 1
            for size in reversed(group_sizes):
                strides.append(step)
                step *= size
            strides.reverse()
            user_shape.append(math.prod(group_sizes))
            offsets.append(0)
        else:
            strides = [int(s) for s in view.strides]
            user_shape.append(int(view.size))
            offsets.append(int(view.offset))
            plain = False
        steps.extend((axis, stride) for stride in strides)
    return LegLayout(tuple(user_shape), leg_sizes, tuple(steps), tuple(offsets), plain)


def leg_array(array: Any, layout: LegLayout) -> Any:
    """``array`` (user layout) seen with one axis per leg; a view wherever the strides allow it."""
    if layout.identity:
        return array
    if layout.plain:
        return array.reshape(layout.shape)
    if type(array).__module__.split(".")[0] == "numpy":
        import numpy as np

        base = array[tuple(slice(o, None) for o in layout.offsets)]
        strides = tuple(base.strides[axis] * step for axis, step in layout.steps)
        return np.lib.stride_tricks.as_strided(base, layout.shape, strides, writeable=False)
    if CUPY.owns(array):
        import cupy  # type: ignore[import-not-found]

        base = array[tuple(slice(o, None) for o in layout.offsets)]
        strides = tuple(base.strides[axis] * step for axis, step in layout.steps)
        return cupy.lib.stride_tricks.as_strided(base, layout.shape, strides)
    strides = tuple(array.stride(axis) * step for axis, step in layout.steps)
    offset = array.storage_offset() + sum(o * array.stride(axis) for axis, o in enumerate(layout.offsets))
    return array.as_strided(layout.shape, strides, offset)


register_cache("layouts", "how operands' legs read the user's tensors, per node and sizes", lambda: _layout)
