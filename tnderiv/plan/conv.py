"""Steps that are exactly a convolution run as torch's own convolution kernels.

A step that contracts two data tensors with one to three index patterns, where every pattern leg
sits on exactly one of the two tensors or the result, is a convolution in one of three roles:

- ``conv``: ``X`` carries the input legs ``i``, ``W`` the kernel legs ``k``, the result the ``o`` legs;
- ``conv_transpose``: ``X`` carries ``o``, ``W`` carries ``k``, the result ``i``;
- ``conv_weight``: ``X`` carries ``i``, ``W`` carries ``o``, the result ``k`` (the weight gradient).

The other legs become torch's batch, groups, input and output channels by where they occur, e.g. a
per-sample gradient keeps ``n`` on ``X``, ``W`` and the result: it is a grouped weight gradient.
Padding modes and asymmetric or cropped borders are applied with explicit index maps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tnderiv.ir import NodeKind, PaddingMode, PatternParams
from tnderiv.plan.cost import StepCost, conv_factor, grouped_weight_slowdown
from tnderiv.plan.kernels import Kernel, StepInput, dense_flops
from tnderiv.plan.reference import index_map

ROLES = ("conv", "conv_transpose", "conv_weight")
_KEYS = {
    "conv": {"XWR": "group", "XW": "cin", "XR": "batch", "WR": "cout"},
    "conv_transpose": {"XWR": "group", "XW": "cin", "XR": "batch", "WR": "cout"},
    "conv_weight": {"XWR": "group", "XW": "batch", "XR": "cin", "WR": "cout"},
}


@dataclass(frozen=True)
class ConvDim:
    """One spatial dimension: the pattern's legs, their sizes and hyperparameters."""

    k: str
    o: str
    i: str
    kernel: int
    out: int
    inp: int
    params: PatternParams


@dataclass(frozen=True)
class ConvMatch:
    """How a step maps onto a torch convolution (see the module docstring)."""

    role: str
    x: int
    w: int
    dims: tuple[ConvDim, ...]
    batch: tuple[str, ...]
    group: tuple[str, ...]
    cin: tuple[str, ...]
    cout: tuple[str, ...]


def match_conv(inputs: Sequence[StepInput], out: set[str], sizes: Mapping[str, int]) -> ConvMatch | None:
    """The convolution a step is, or ``None``."""
    data = [j for j, t in enumerate(inputs) if not t.constant]
    patterns = [j for j, t in enumerate(inputs) if t.node is not None and t.node.kind is NodeKind.PATTERN]
    if len(data) != 2 or len(patterns) + 2 != len(inputs) or not 1 <= len(patterns) <= 3:
        return None
    pattern_legs = [leg for j in patterns for leg in inputs[j].legs]
    if len(set(pattern_legs)) != len(pattern_legs):
        return None
    for x, w in ((data[0], data[1]), (data[1], data[0])):
        found = _match(inputs, patterns, x, w, out, sizes, set(pattern_legs))
        if found is not None:
            return found
    return None


def _match(
    inputs: Sequence[StepInput], patterns: list[int], x: int, w: int, out: set[str], sizes: Mapping[str, int], pattern_legs: set[str]
) -> ConvMatch | None:
    xl, wl = inputs[x].legs, inputs[w].legs

    def where(leg: str) -> str:
        return ("X" if leg in xl else "") + ("W" if leg in wl else "") + ("R" if leg in out else "")

    roles, dims = set(), []
    for j in patterns:
        node = inputs[j].node
        assert node is not None and node.pattern is not None
        k, o, i = node.legs
        placed = (where(k), where(o), where(i))
        role = {("W", "R", "X"): "conv", ("W", "X", "R"): "conv_transpose", ("R", "W", "X"): "conv_weight"}.get(placed)
        if role is None:
            return None
        roles.add(role)
        dims.append(ConvDim(k, o, i, sizes[k], sizes[o], sizes[i], node.pattern))
    if len(roles) != 1:
        return None
    role = roles.pop()
    spatial_of_x = {d.o if role == "conv_transpose" else d.i: d for d in dims}
    ordered = tuple(spatial_of_x[leg] for leg in xl if leg in spatial_of_x)
    classes: dict[str, list[str]] = {"batch": [], "group": [], "cin": [], "cout": []}
    for leg in list(dict.fromkeys(xl + wl)):
        if leg in pattern_legs:
            continue
        cls = _KEYS[role].get(where(leg))
        if cls is None:
            return None  # a leg summed on one side only, or a broadcast: not a convolution
        classes[cls].append(leg)
    return ConvMatch(role, x, w, ordered, *(tuple(classes[c]) for c in ("batch", "group", "cin", "cout")))


def conv_cost(match: Any, inputs: Sequence[StepInput], sizes: Mapping[str, int], dense: int, size: int) -> StepCost:
    """Useful multiply-adds of a convolution step, the data it reads and writes, and its grouped-weight slowdown."""
    prod = lambda legs: math.prod(sizes[leg] for leg in legs)  # noqa: E731
    useful = 2 * prod(match.batch + match.group + match.cin + match.cout) * math.prod(d.kernel * d.out for d in match.dims)
    moved = sum(prod(t.legs) for t in inputs if not t.constant) + size
    slowdown = 1.0
    if match.role == "conv_weight":
        positions = math.prod(d.out for d in match.dims)
        slowdown = grouped_weight_slowdown(prod(match.group), prod(match.cin) * prod(match.cout), positions)
    overlapping = any(d.kernel > 1 and d.params.stride < (d.kernel - 1) * d.params.dilation + 1 for d in match.dims)
    return StepCost(match.role, dense, useful, moved, size, conv_factor(overlapping, slowdown))


class ConvKernel(Kernel):
    """A step run by ``torch.nn.functional.conv{1,2,3}d``, ``conv_transpose{1,2,3}d`` or the convolution weight gradient."""

    def __init__(self, match: ConvMatch, inputs: Sequence[StepInput], sizes: Mapping[str, int], like: Any) -> None:
        import torch

        self.match = match
        self.kind = match.role
        self._sizes = dict(sizes)
        m = match
        xl, wl = inputs[m.x].legs, inputs[m.w].legs
        size = lambda legs: math.prod(sizes[leg] for leg in legs)  # noqa: E731
        nb, ng, ci, co = size(m.batch), size(m.group), size(m.cin), size(m.cout)
        self.groups = ng
        self.nd = len(m.dims)
        self.stride = tuple(d.params.stride for d in m.dims)
        self.dilation = tuple(d.params.dilation for d in m.dims)
        device = like.device
        if m.role == "conv_transpose":
            x_spatial = [d.o for d in m.dims]
            self.x_perm = _perm(xl, m.batch + m.group + m.cin + tuple(x_spatial))
            self.x_shape = (nb, ng * ci, *(d.out for d in m.dims))
            self.w_perm = _perm(wl, m.group + m.cin + m.cout + tuple(d.k for d in m.dims))
            self.w_shape = (ng * ci, co, *(d.kernel for d in m.dims))
            self.out_legs = m.batch + m.group + m.cout + tuple(d.i for d in m.dims)
            self.out_shape = tuple(sizes[leg] for leg in self.out_legs)
            self._plan_transpose_output(device)
        else:
            self.x_perm = _perm(xl, m.batch + m.group + m.cin + tuple(d.i for d in m.dims))
            self.x_shape = (nb, ng * ci, *(d.inp for d in m.dims))
            self._plan_input_padding(device)
            if m.role == "conv":
                self.w_perm = _perm(wl, m.group + m.cout + m.cin + tuple(d.k for d in m.dims))
                self.w_shape = (ng * co, ci, *(d.kernel for d in m.dims))
                self.out_legs = m.batch + m.group + m.cout + tuple(d.o for d in m.dims)
            else:
                self.w_perm = _perm(wl, m.batch + m.group + m.cout + tuple(d.o for d in m.dims))
                self.w_shape = (nb, ng * co, *(d.out for d in m.dims))
                self.weight_shape = [ng * co, ci, *(d.kernel for d in m.dims)]
                # torch's weight-gradient kernel is slow for one channel per group and large kernels (depthwise
                # 7x7: measured 4x slower than the same sums as a forward convolution with the gradient as kernel)
                taps = math.prod(d.kernel for d in m.dims)
                self.weight_as_forward = ci * co == 1 and taps >= 25 and all(d.params.dilation == 1 for d in m.dims)
                self.out_legs = m.group + m.cout + m.cin + tuple(d.k for d in m.dims)
            self.out_shape = tuple(sizes[leg] for leg in self.out_legs)
        self.x_direct = self.x_perm == tuple(range(len(xl))) and tuple(sizes[leg] for leg in xl) == self.x_shape
        self.w_direct = self.w_perm == tuple(range(len(wl))) and tuple(sizes[leg] for leg in wl) == self.w_shape
        self.fresh = True
        natural = (nb, ng * co, *(d.inp if m.role == "conv_transpose" else d.out for d in m.dims))
        self.natural_shape = natural
        if m.role == "conv_weight":
            natural = tuple(self.weight_shape)
        self.reshape_out = natural != self.out_shape
        functional = torch.nn.functional
        self._conv = getattr(functional, f"conv{self.nd}d", None)
        self._conv_t = getattr(functional, f"conv_transpose{self.nd}d", None)
        self.cost = conv_cost(m, inputs, sizes, dense_flops(inputs, self.out_legs, sizes), size(self.out_legs))

    # ----- borders -------------------------------------------------------------------------------
    def _plan_input_padding(self, device: Any) -> None:
        """How to give the convolution exactly the input positions the patterns read (conv and weight roles)."""
        import torch

        self.padding: list[int] = []
        self.explicit: list[tuple[int, Any] | None] = []
        self.pad_pairs: list[tuple[int, int]] = []
        for d in self.match.dims:
            p = d.params
            needed = (d.out - 1) * p.stride + (d.kernel - 1) * p.dilation + 1
            symmetric = (d.inp + 2 * p.pad_left - (d.kernel - 1) * p.dilation - 1) // p.stride + 1
            if p.mode is PaddingMode.ZEROS and symmetric == d.out:
                self.padding.append(p.pad_left)
                self.explicit.append(None)
                self.pad_pairs.append((0, 0))
            elif p.mode is PaddingMode.ZEROS:
                self.padding.append(0)
                self.explicit.append(None)
                self.pad_pairs.append((p.pad_left, needed - p.pad_left - d.inp))
            else:
                self.padding.append(0)
                index = index_map(p, np.arange(needed), d.inp)
                self.explicit.append((bool((index == d.inp).any()), torch.as_tensor(index, device=device)))
                self.pad_pairs.append((0, 0))
        self.needs_pad = any(pair != (0, 0) for pair in self.pad_pairs)
        self.any_explicit = any(entry is not None for entry in self.explicit)

    def _prepare_input(self, xin: Any) -> Any:
        import torch.nn.functional as F

        if not self.needs_pad and not self.any_explicit:
            return xin
        if self.needs_pad:
            flat = []
            for left, right in reversed(self.pad_pairs):
                flat += [left, right]
            xin = F.pad(xin, flat)
        for axis, entry in enumerate(self.explicit):
            if entry is not None:
                has_zero, index = entry
                dim = 2 + axis
                if has_zero:
                    pads = [0, 0] * (xin.dim() - 1 - dim) + [0, 1]
                    xin = F.pad(xin, pads)
                xin = xin.index_select(dim, index)
        return xin

    def _plan_transpose_output(self, device: Any) -> None:
        """Padding and output padding of ``conv_transpose``, or how to fold its full output back onto ``i``."""
        import torch

        self.padding, self.output_padding, self.post = [], [], []
        for d in self.match.dims:
            p = d.params
            full = (d.out - 1) * p.stride + (d.kernel - 1) * p.dilation + 1
            extra = d.inp - (full - 2 * p.pad_left)
            if p.mode is PaddingMode.ZEROS and 0 <= extra < max(p.stride, p.dilation) and full - 2 * p.pad_left + extra >= 1:
                self.padding.append(p.pad_left)
                self.output_padding.append(extra)
                self.post.append(None)
            elif p.mode is PaddingMode.ZEROS:
                self.padding.append(0)
                self.output_padding.append(0)
                self.post.append(("crop", (-p.pad_left, d.inp - (full - p.pad_left))))
            else:
                self.padding.append(0)
                self.output_padding.append(0)
                index = index_map(p, np.arange(full), d.inp)
                valid = index < d.inp
                self.post.append(("fold", (torch.as_tensor(np.nonzero(valid)[0], device=device), torch.as_tensor(index[valid], device=device), d.inp)))
        self.post_free = all(entry is None for entry in self.post)
        # torch's transposed convolution is slow for grouped (not depthwise) channels on CPU; the input
        # gradient of the associated convolution computes the same (measured 2x faster at 32 groups)
        m = self.match
        size = lambda legs: math.prod(self._sizes[leg] for leg in legs)  # noqa: E731
        channels = size(m.cin) * size(m.cout)
        self.via_backward = (
            self.post_free
            and size(m.group) > 1
            and channels > 1
            and all(op < s for op, s in zip(self.output_padding, (d.params.stride for d in m.dims)))
        )

    def _finish_transpose(self, y: Any) -> Any:
        import torch
        import torch.nn.functional as F

        for axis, entry in enumerate(self.post):
            if entry is None:
                continue
            dim = 2 + axis
            kind, value = entry
            if kind == "crop":
                pads = [0, 0] * (y.dim() - 1 - dim) + list(value)
                y = F.pad(y, pads)
            else:
                source, target, size = value
                shape = list(y.shape)
                shape[dim] = size
                out = torch.zeros(shape, dtype=y.dtype, device=y.device)
                y = out.index_add_(dim, target, y.index_select(dim, source))
        return y

    # ----- running -------------------------------------------------------------------------------
    def __call__(self, *arrays: Any, bias: Any = None, natural: bool = False) -> Any:
        """The step's value; ``bias`` (``[G·C_out]``, conv and conv_transpose only) is added by torch's kernel.

        ``natural=True`` returns torch's own layout (``[batch, G·C_out, *spatial]``) without regrouping its axes.
        """
        import torch

        a, b = arrays[self.match.x], arrays[self.match.w]
        xin = a if self.x_direct else a.permute(self.x_perm).reshape(self.x_shape)
        other = b if self.w_direct else b.permute(self.w_perm).reshape(self.w_shape)
        if self.kind == "conv":
            y = self._conv(self._prepare_input(xin), other, bias, self.stride, self.padding, self.dilation, self.groups)
        elif self.kind == "conv_transpose" and self.via_backward and bias is None:
            dummy = xin.new_empty(1).expand(self.natural_shape)
            y = torch.ops.aten.convolution_backward(
                xin, dummy, other, None, list(self.stride), list(self.padding), list(self.dilation),
                False, [0] * self.nd, self.groups, [True, False, False],
            )[0]
        elif self.kind == "conv_transpose":
            y = self._conv_t(xin, other, bias if self.post_free else None, self.stride, self.padding, self.output_padding, self.groups, self.dilation)
            y = self._finish_transpose(y)
        elif self.weight_as_forward:
            y = self._weight_by_forward(self._prepare_input(xin), other)
        else:
            dummy = other.new_empty(1).expand(self.weight_shape)
            y = torch.ops.aten.convolution_backward(
                other, self._prepare_input(xin), dummy, None, list(self.stride), list(self.padding), list(self.dilation),
                False, [0] * self.nd, self.groups, [False, True, False],
            )[1]
        return y.reshape(self.out_shape) if self.reshape_out and not natural else y

    def _weight_by_forward(self, xin: Any, grad: Any) -> Any:
        """The weight gradient as a forward convolution: the output gradient is the kernel, stride and dilation swap."""
        import torch.nn.functional as F

        if any(self.padding):
            flat = []
            for p in reversed(self.padding):
                flat += [p, p]
            xin = F.pad(xin, flat)
        nb, groups = xin.shape[0], self.groups
        ci, co = xin.shape[1] // groups, grad.shape[1] // groups
        spatial = tuple(range(3, 3 + self.nd))
        x2 = xin.reshape(nb, groups, ci, *xin.shape[2:]).permute(2, 1, 0, *spatial).reshape(ci, groups * nb, *xin.shape[2:])
        g2 = grad.reshape(nb, groups, co, *grad.shape[2:]).permute(1, 2, 0, *spatial).reshape(groups * co, nb, *grad.shape[2:])
        out = self._conv(x2, g2, None, 1, 0, self.stride, groups)  # stride 1 and dilation S: the roles of k and o swap
        out = out[(..., *(slice(0, k) for k in self.weight_shape[2:]))]
        return out.transpose(0, 1)


def _perm(legs: Sequence[str], order: Sequence[str]) -> tuple[int, ...]:
    return tuple(legs.index(leg) for leg in order)
