"""Fused gathers: one data tensor read through several index patterns in one pass (one im2col).

A step that contracts one data tensor ``x`` with index patterns ``Π_j[k_j, o_j, i_j]``, each read
along its input leg ``i_j`` (on ``x``, summed) into its kernel and output legs (both kept), is an
unfold of ``x`` over all the ``i_j`` at once: every output position receives at most one input
element. ``match_gather`` recognizes such a step, ``gather_cost`` prices it and ``GatherKernel``
runs it — the one cost function both ranks candidate orders (``program.step_cost``) and is the
built kernel's cost, so a plan's printed cost is the cost it was chosen by.

The kernel pads (or, for reflect/replicate/circular borders, index-maps with one flat index over all
spatial legs) the data once, takes strided windows of every spatial leg (views) and, as the last step
of a plan, copies them once into a layout with the output legs ``o`` innermost, the layout in which the
copy runs fastest and in which the Gram of an unfolded input (KFAC) merges its rows as a view. Inside a
plan it returns the strided view and leaves the copy to the consumer, as the single-pattern gather does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tnderiv.ir import NodeKind, PaddingMode
from tnderiv.plan.conv import ConvDim
from tnderiv.plan.cost import StepCost
from tnderiv.plan.kernels import Kernel, StepInput, dense_flops
from tnderiv.plan.reference import index_map

# False: every pattern is gathered in its own step, as before fused gathers (a benchmark and debugging
# switch; clear the plan caches after changing it: tnderiv.clear_caches()).
FUSED_GATHERS = True


@dataclass(frozen=True)
class GatherDim(ConvDim):
    """One pattern read along its input leg ``i`` into ``(k, o)`` (the fields of ``ConvDim``), and the padded span it needs."""

    @property
    def needed(self) -> int:
        """Padded positions the windows cover: ``(O − 1)·S + (K − 1)·D + 1``."""
        return (self.out - 1) * self.params.stride + (self.kernel - 1) * self.params.dilation + 1

    @property
    def pads(self) -> tuple[int, int]:
        """Zeros added on the left and right of the input (negative: cropped) to cover exactly ``needed``."""
        left = self.params.pad_left
        return left, self.needed - left - self.inp


@dataclass(frozen=True)
class GatherMatch:
    """A step that is one unfold: ``data`` (position among the step's inputs), its patterns, kept and summed legs.

    ``dims`` follow the order of their input legs on the data tensor; ``keep`` and ``summed`` the data's order.
    """

    data: int
    patterns: tuple[int, ...]
    dims: tuple[GatherDim, ...]
    keep: tuple[str, ...]
    summed: tuple[str, ...]

    @property
    def pattern_legs(self) -> tuple[str, ...]:
        return tuple(leg for d in self.dims for leg in (d.k, d.o))

    @property
    def zeros(self) -> bool:
        """Every border is zeros: one ``F.pad``; otherwise one flat index over all spatial legs."""
        return all(d.params.mode is PaddingMode.ZEROS for d in self.dims)

    @property
    def padding(self) -> bool:
        """Whether the data passes through a padding (or border-mapping) copy before the windows are taken."""
        return not self.zeros or any(pair != (0, 0) for pair in (d.pads for d in self.dims))


def match_gather(inputs: Sequence[StepInput], out: set[str], sizes: Mapping[str, int]) -> GatherMatch | None:
    """The unfold a step is (one data tensor, one or more patterns read along their input legs), or ``None``."""
    data = [j for j, t in enumerate(inputs) if not t.constant]
    patterns = [j for j, t in enumerate(inputs) if t.node is not None and t.node.kind is NodeKind.PATTERN and t.node.pattern is not None]
    if len(data) != 1 or not patterns or len(data) + len(patterns) != len(inputs):
        return None
    x = inputs[data[0]].legs
    dims = []
    for j in patterns:
        node = inputs[j].node
        assert node is not None and node.pattern is not None
        k, o, i = node.legs
        if i not in x or i in out or k in x or o in x or k not in out or o not in out or len({k, o, i}) != 3:
            return None
        dims.append(GatherDim(k, o, i, sizes[k], sizes[o], sizes[i], node.pattern))
    legs = [leg for d in dims for leg in (d.k, d.o, d.i)]
    if len(set(legs)) != len(legs):
        return None
    by_input = {d.i: d for d in dims}
    ordered = tuple(by_input[leg] for leg in x if leg in by_input)
    keep = tuple(leg for leg in x if leg not in by_input and leg in out)
    summed = tuple(leg for leg in x if leg not in by_input and leg not in out)
    return GatherMatch(data[0], tuple(patterns), ordered, keep, summed)


def gather_cost(match: GatherMatch, inputs: Sequence[StepInput], out_legs: Sequence[str], sizes: Mapping[str, int]) -> StepCost:
    """No arithmetic; the data read once, and written once reduced (summed legs), once padded and once unfolded."""
    size = lambda legs: math.prod(sizes[leg] for leg in legs)  # noqa: E731
    data = size(inputs[match.data].legs)
    reduced = size(match.keep) * size([d.i for d in match.dims]) if match.summed else 0
    padded = size(match.keep) * math.prod(d.needed for d in match.dims) if match.padding else 0
    out = size(out_legs)
    return StepCost("gather", dense_flops(inputs, out_legs, sizes), 0, data + reduced + padded + out, out)


def fused_gather_group(inputs: Sequence[StepInput], out_legs: Sequence[str], sizes: Mapping[str, int]) -> tuple[int, ...] | None:
    """Positions of a data tensor and every pattern it can be gathered through in one step (two or more), if any."""
    for j, t in enumerate(inputs):
        if t.constant:
            continue
        readers = [p for p, q in enumerate(inputs) if q.node is not None and q.node.kind is NodeKind.PATTERN and q.legs[2] in t.legs]
        if len(readers) < 2:
            continue
        group = (j, *readers)
        outside = {leg for q, u in enumerate(inputs) if q not in group for leg in u.legs} | set(out_legs)
        # a pattern whose kernel or output leg is summed right away is a scatter: leave it out of the group
        usable = tuple(p for p in readers if {inputs[p].legs[0], inputs[p].legs[1]} <= outside)
        if len(usable) < 2:
            continue
        group = (j, *usable)
        legs = {leg for q in group for leg in inputs[q].legs}
        if match_gather([inputs[q] for q in group], legs & outside, sizes) is not None:
            return group
    return None


class GatherKernel(Kernel):
    """A step run as one unfold of its data tensor over every pattern's input leg (see the module docstring).

    ``final``: the plan's last step, which returns ``out_legs`` exactly as requested, materialized once with
    the output legs innermost (a permuted view of that memory); inside a plan the result is the window view
    on ``[*keep, *o, *k]``.
    """

    kind = "gather"

    def __init__(
        self, match: GatherMatch, inputs: Sequence[StepInput], out_legs: Sequence[str], final: bool, sizes: Mapping[str, int], like: Any
    ) -> None:
        import torch

        self.match = m = match
        view = m.keep + tuple(d.o for d in m.dims) + tuple(d.k for d in m.dims)
        self.final = final
        keep = m.keep
        if final:
            self.out_legs = tuple(out_legs)
            physical = _outputs_innermost(self.out_legs, {d.o for d in m.dims}, set(m.keep))
            self.rows = _rows_plan(m, physical, inputs[m.data].legs, sizes, like.device) if _rows_faster(m, physical, sizes) else None
            if m.padding:  # the padding copy lays the kept legs out as the output has them (the gather then reads in order)
                keep = tuple(leg for leg in physical if leg in m.keep)
                view = keep + view[len(m.keep) :]
            self.to_physical = tuple(view.index(leg) for leg in physical)
            self.to_logical = None if physical == self.out_legs else tuple(physical.index(leg) for leg in self.out_legs)
            if self.rows is not None:
                self.rows.to_logical = self.to_logical
        else:
            self.out_legs = view
            self.to_physical = self.to_logical = None
            self.rows = None
        legs = inputs[m.data].legs
        order = keep + m.summed + tuple(d.i for d in m.dims)
        self.perm = None if order == legs else tuple(legs.index(leg) for leg in order)
        nkeep = len(keep)
        self.sum_dims = tuple(range(nkeep, nkeep + len(m.summed)))
        self.keep_shape = tuple(sizes[leg] for leg in keep)
        self.windows = tuple(((d.kernel - 1) * d.params.dilation + 1, d.params.stride, d.params.dilation) for d in m.dims)
        self.dilated = any(d.params.dilation > 1 for d in m.dims)
        self.pads: tuple[tuple[int, int], ...] | None = None
        self.index: Any = None
        self.zero_slot = False
        if m.zeros and m.padding:
            self.pads = tuple(d.pads for d in m.dims)
        elif not m.zeros:
            self._plan_index(torch, like.device)
        self.fresh = final or m.padding or bool(m.summed)
        self.cost = gather_cost(m, inputs, self.out_legs, sizes)

    def _plan_index(self, torch: Any, device: Any) -> None:
        """One flat index over the spatial legs: padded position → input position (``I`` = a zero appended at the end)."""
        maps = [index_map(d.params, np.arange(d.needed), d.inp) for d in self.match.dims]
        inputs = [d.inp for d in self.match.dims]
        total = math.prod(inputs)
        zero = np.zeros(tuple(d.needed for d in self.match.dims), dtype=bool)
        flat = np.zeros(zero.shape, dtype=np.int64)
        for axis, (index, size) in enumerate(zip(maps, inputs)):
            shape = [1] * len(maps)
            shape[axis] = len(index)
            column = index.reshape(shape)
            zero = zero | (column == size)
            flat = flat * size + np.where(column == size, 0, column)
        flat = np.where(zero, total, flat)
        self.zero_slot = bool(zero.any())
        self.index = torch.as_tensor(flat.reshape(-1), device=device)
        self.padded_shape = zero.shape

    def __call__(self, *arrays: Any) -> Any:
        import torch.nn.functional as F

        t = arrays[self.match.data]
        if self.rows is not None:
            return self.rows(t)
        if self.perm is not None:
            t = t.permute(self.perm)
        if self.sum_dims:
            t = t.sum(self.sum_dims)
        if self.pads is not None:
            t = _pad_zeros(t, self.pads)
        elif self.index is not None:
            t = t.reshape(*self.keep_shape, -1)
            if self.zero_slot:
                t = F.pad(t, (0, 1))
            t = t.index_select(-1, self.index).view(*self.keep_shape, *self.padded_shape)
        first = len(self.keep_shape)
        for axis, (span, stride, _) in enumerate(self.windows):
            t = t.unfold(first + axis, span, stride)
        if self.dilated:
            t = t[(..., *(slice(None, None, dilation) for _, _, dilation in self.windows))]
        if not self.final:
            return t
        t = t.permute(self.to_physical).contiguous()
        return t if self.to_logical is None else t.permute(self.to_logical)


# The window copy's innermost loop runs along the last output leg; with a stride (strided reads) or below
# ROWS_BELOW positions along it, one index_select of the flattened data is faster — when the rows it
# gathers (the kept legs in front, e.g. channels) are at least ROWS_OUTER long, so that reading the index
# is amortized. Measured on the real layers (CPU, 1 thread, KFAC-expand half): depthwise 4x4 outputs
# 0.57 vs 2.23 ms, stride 2 28x28 7.5 vs 8.7 ms, grouped stride 2 9.0 vs 12.5 ms, 5x5 outputs (64
# channels) 0.14 vs 0.23 ms; with 1-3 input channels slower (stride 2, 3 channels: 1.74 vs 0.95 ms).
ROWS_BELOW = 16
ROWS_OUTER = 16
# None: that rule; True/False: always/never one index_select (tests and measurements; clear the plan caches after changing it)
ROWS: bool | None = None


def _rows_faster(match: GatherMatch, physical: tuple[str, ...], sizes: Mapping[str, int]) -> bool:
    """Whether the last step's copy runs as one ``index_select`` (``_Rows``) rather than a window copy."""
    last = next((leg for leg in reversed(physical) if leg in {d.o for d in match.dims}), None)
    if ROWS is not None or last is None:
        return bool(ROWS) and last is not None
    outer = 1
    for leg in physical:
        if leg not in match.keep:
            break
        outer *= sizes[leg]
    strided = any(d.params.stride > 1 for d in match.dims)
    return outer >= ROWS_OUTER and (strided or sizes[last] < ROWS_BELOW)


class _Rows:
    """The whole gather as one ``index_select`` along the last axis of ``x`` flattened to ``[outer, inner·I (+1 zero)]``.

    ``outer``: the kept legs in front of the output's first kernel/output leg (each row of the result
    belongs to one of them); the index enumerates the remaining legs of the output in its memory order,
    with the padding (any mode) folded into the index (out-of-range reads point at an appended zero).
    """

    def __init__(self, perm: tuple[int, ...] | None, sum_dims: tuple[int, ...], outer: int, block: int, index: Any, zero: bool, shape: tuple[int, ...], to_logical: tuple[int, ...] | None) -> None:
        self.perm, self.sum_dims, self.outer, self.block = perm, sum_dims, outer, block
        self.index, self.zero, self.shape, self.to_logical = index, zero, shape, to_logical

    def __call__(self, t: Any) -> Any:
        if self.perm is not None:
            t = t.permute(self.perm)
        if self.sum_dims:
            t = t.sum(self.sum_dims)
        if self.zero:
            flat = t.new_empty(self.outer, self.block + 1)
            flat[:, self.block] = 0
            flat[:, : self.block].view(t.shape).copy_(t)
        else:
            flat = t.reshape(self.outer, self.block)
        out = flat.index_select(1, self.index).view(self.shape)
        return out if self.to_logical is None else out.permute(self.to_logical)


def _rows_plan(match: GatherMatch, physical: tuple[str, ...], legs: tuple[str, ...], sizes: Mapping[str, int], device: Any) -> _Rows:
    """The ``_Rows`` gather producing ``physical`` (the output's memory order)."""
    import torch

    nouter = 0
    while physical[nouter] in match.keep:
        nouter += 1
    outer, rest = physical[:nouter], physical[nouter:]
    inner = tuple(leg for leg in rest if leg in match.keep)
    order = outer + inner + match.summed + tuple(d.i for d in match.dims)
    perm = None if order == legs else tuple(legs.index(leg) for leg in order)
    first = len(outer) + len(inner)
    sum_dims = tuple(range(first, first + len(match.summed)))
    spatial = [d.inp for d in match.dims]
    # row-major strides of the flattened block [*inner, *spatial]
    block_shape = [sizes[leg] for leg in inner] + spatial
    strides = [math.prod(block_shape[j + 1 :]) for j in range(len(block_shape))]
    axis = {leg: j for j, leg in enumerate(rest)}

    def along(leg: str, values: np.ndarray) -> np.ndarray:
        shape = [1] * len(rest)
        shape[axis[leg]] = len(values)
        return values.reshape(shape)

    flat = np.zeros([1] * len(rest), dtype=np.int64)
    zero = np.zeros([1] * len(rest), dtype=bool)
    for j, leg in enumerate(inner):
        flat = flat + along(leg, np.arange(sizes[leg])) * strides[j]
    for j, d in enumerate(match.dims):
        p = d.params
        position = along(d.o, np.arange(d.out) * p.stride) + along(d.k, np.arange(d.kernel) * p.dilation)
        source = index_map(p, np.arange(d.needed), d.inp)[position]
        zero = zero | (source == d.inp)
        flat = flat + np.where(source == d.inp, 0, source) * strides[len(inner) + j]
    block = math.prod(block_shape)
    flat = np.broadcast_to(np.where(zero, block, flat), tuple(sizes[leg] for leg in rest))
    index = torch.as_tensor(np.array(flat, dtype=np.int64).reshape(-1), device=device)
    shape = tuple(sizes[leg] for leg in physical)
    return _Rows(perm, sum_dims, math.prod(sizes[leg] for leg in outer), block, index, bool(zero.any()), shape, None)


def _outputs_innermost(order: tuple[str, ...], outputs: set[str], kept: set[str]) -> tuple[str, ...]:
    """``order`` with the legs after its last output leg moved in front of the rows: the output legs and the kept leg just before them.

    E.g. an unfolded input ``[g, n, o0, o1, c, k0, k1]`` (a KFAC half) is laid out ``[g, c, k0, k1, n, o0, o1]``:
    blocks keep their order, so the legs a Gram merges (``n·o0·o1`` and ``c·k0·k1``) stay adjacent and
    merge as views; the copy's innermost loop runs along an output leg, not a short kernel leg; and each
    leading leg (``g``) is finished before the next, so the taps of one slice are read from cache.
    """
    spots = [j for j, leg in enumerate(order) if leg in outputs]
    if not spots:
        return order
    first, last = spots[0], spots[-1]
    start = first - 1 if first > 0 and order[first - 1] in kept else first
    return order[:start] + order[last + 1 :] + order[start : last + 1]


def _pad_zeros(t: Any, pads: Sequence[tuple[int, int]]) -> Any:
    """``t`` with ``pads[j]`` zeros before/after its ``j``-th trailing axis (negative: cropped); only the borders are zeroed."""
    first = t.dim() - len(pads)
    crop = tuple(slice(max(0, -left), t.shape[first + j] - max(0, -right)) for j, (left, right) in enumerate(pads))
    t = t[(..., *crop)]
    grown = [(max(0, left), max(0, right)) for left, right in pads]
    shape = list(t.shape[:first]) + [t.shape[first + j] + left + right for j, (left, right) in enumerate(grown)]
    out = t.new_empty(shape)
    interior = []
    for j, (left, right) in enumerate(grown):
        size = shape[first + j]
        lead = (slice(None),) * (first + j)
        if left:
            out[(*lead, slice(0, left))] = 0
        if right:
            out[(*lead, slice(size - right, size))] = 0
        interior.append(slice(left, size - right))
    out[(..., *interior)] = t
    return out


__all__ = ["FUSED_GATHERS", "GatherKernel", "GatherMatch", "fused_gather_group", "gather_cost", "match_gather"]
