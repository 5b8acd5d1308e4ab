"""Kernels that run one step of a plan: einsum (GEMM-like), gather/scatter (data with a 0/1 constant), convolution.

``choose_kernel`` looks at what a step contracts and returns the kernel that runs it, with its
output leg order and its cost (``plan.cost``). Structure-aware kernels (gather, convolution) run on
torch; other backends run every step as an einsum.
"""

from __future__ import annotations

import math
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import opt_einsum as oe
from opt_einsum.helpers import flop_count

from tnderiv.ir import Node, NodeKind, PaddingMode
from tnderiv.plan.backends import backend_named
from tnderiv.plan.constants import constant_array
from tnderiv.plan.cost import StepCost


@dataclass(frozen=True)
class StepInput:
    """One input of a step: its legs, and the constant node it is (``None`` for data and intermediates)."""

    legs: tuple[str, ...]
    constant: bool
    node: Node | None = None


def _size(legs: Sequence[str], sizes: Mapping[str, int]) -> int:
    return math.prod(sizes[leg] for leg in legs)


def dense_flops(inputs: Sequence[StepInput], out_legs: Sequence[str], sizes: Mapping[str, int]) -> int:
    """opt_einsum's FLOP count of the step with every tensor dense."""
    legs = {leg for t in inputs for leg in t.legs} | set(out_legs)
    inner = bool({leg for t in inputs for leg in t.legs} - set(out_legs))
    return int(flop_count(legs, inner, len(inputs), sizes))


class Kernel:
    """Runs one step: ``kernel(*arrays)`` (one array per input, in the step's order) → array on ``out_legs``."""

    kind: str = "einsum"
    out_legs: tuple[str, ...] = ()
    cost: StepCost
    fresh: bool = True  # the output is new memory (not a view of an input), so it may be updated in place

    def __call__(self, *arrays: Any) -> Any:  # pragma: no cover - interface
        raise NotImplementedError


# ----- einsum ------------------------------------------------------------------------------------
def einsum_kind(in_legs: Sequence[Sequence[str]], out_legs: Sequence[str]) -> str:
    """GEMM, batched GEMM, elementwise, outer product, reduction, transpose or einsum (3+ operands)."""
    out = set(out_legs)
    if len(in_legs) == 1:
        return "reduction" if set(in_legs[0]) - out else "transpose"
    if len(in_legs) > 2:
        return "einsum"
    a, b = set(in_legs[0]), set(in_legs[1])
    contracted = (a & b) - out
    batch = a & b & out
    if contracted:
        return "batched GEMM" if batch else "GEMM"
    if batch:
        return "elementwise"
    return "outer product"


def natural_order(in_legs: Sequence[Sequence[str]], out: set[str]) -> tuple[str, ...]:
    """The order a matrix-multiply produces: legs on every input first, then each input's own legs."""
    seen = list(dict.fromkeys(leg for legs in in_legs for leg in legs if leg in out))
    everywhere = [leg for leg in seen if all(leg in legs for legs in in_legs)]
    return tuple(everywhere + [leg for leg in seen if leg not in everywhere])


class EinsumKernel(Kernel):
    """A dense contraction by the backend's einsum (torch.einsum for torch)."""

    def __init__(self, inputs: Sequence[StepInput], out_legs: Sequence[str], sizes: Mapping[str, int], backend: str) -> None:
        legs = list(dict.fromkeys([leg for t in inputs for leg in t.legs] + list(out_legs)))
        symbols = string.ascii_letters if len(legs) <= len(string.ascii_letters) else None
        letter = {leg: (symbols[j] if symbols else oe.get_symbol(j)) for j, leg in enumerate(legs)}
        self.equation = ",".join("".join(letter[leg] for leg in t.legs) for t in inputs) + "->" + "".join(letter[leg] for leg in out_legs)
        self.out_legs = tuple(out_legs)
        self.kind = einsum_kind([t.legs for t in inputs], out_legs)
        self.fresh = self.kind != "transpose"
        self.backend = backend
        self._torch = backend_named(backend).is_torch and symbols is not None
        flops = dense_flops(inputs, out_legs, sizes)
        moved = 0 if self.kind == "transpose" else sum(_size(t.legs, sizes) for t in inputs) + _size(out_legs, sizes)
        self.cost = StepCost(self.kind, flops, flops, moved, _size(out_legs, sizes))

    def __call__(self, *arrays: Any) -> Any:
        if self._torch:
            import torch

            return torch.einsum(self.equation, *arrays)
        return oe.contract(self.equation, *arrays, backend=self.backend)


# ----- Hadamard sum: two inputs on the same legs, multiplied entrywise and summed over some legs ------------
def hadamard_applies(a: StepInput, b: StepInput, out: set[str]) -> bool:
    """Two data inputs on the same legs, some summed: ``Σ a ⊙ b``. As a batched GEMM this is a batch of 1×K·K×1
    products (slow: e.g. a squared per-sample gradient summed over the batch); multiplied and summed it is two passes."""
    return not a.constant and not b.constant and set(a.legs) == set(b.legs) and bool(set(a.legs) - out)


class HadamardKernel(Kernel):
    """``Σ_summed a ⊙ b`` by ``torch.mul`` (``b`` viewed in ``a``'s leg order) and one ``sum``; output legs in ``a``'s order."""

    kind = "Hadamard sum"

    def __init__(self, a: StepInput, b: StepInput, out: set[str], sizes: Mapping[str, int]) -> None:
        self.perm = tuple(b.legs.index(leg) for leg in a.legs)
        self.summed = tuple(j for j, leg in enumerate(a.legs) if leg not in out)
        self.out_legs = tuple(leg for leg in a.legs if leg in out)
        self.cost = hadamard_cost(a, b, self.out_legs, sizes)

    def __call__(self, a: Any, b: Any) -> Any:
        if self.perm != tuple(range(len(self.perm))):
            b = b.permute(self.perm)
        product = a * b  # laid out as a is (a permuted view of an intermediate, often)
        # reduce in memory order: summing outer dims of a strided view is several times slower
        order = sorted(range(product.dim()), key=lambda d: -product.stride(d))
        if order == list(range(product.dim())):
            return product.sum(dim=self.summed)
        kept = [d for d in order if d not in self.summed]
        summed = tuple(j for j, d in enumerate(order) if d in self.summed)
        result = product.permute(order).sum(dim=summed)  # kept dims in memory order
        return result.permute([kept.index(d) for d in sorted(kept)])


def hadamard_cost(a: StepInput, b: StepInput, out_legs: Sequence[str], sizes: Mapping[str, int]) -> StepCost:
    """One multiply and one add per entry; the inputs read, the product written and read, the result written."""
    size = _size(a.legs, sizes)
    out = _size(out_legs, sizes)
    return StepCost("Hadamard sum", 2 * size, 2 * size, 4 * size + out, out)


# ----- gather / scatter with a 0/1 constant ------------------------------------------------------------
class SparseKernel(Kernel):
    """Data ``T`` contracted with a 0/1 constant ``C`` (an index pattern or a copy tensor): ``C``'s nonzeros are index lists.

    Where every output position receives at most one input element the step is a *gather*
    (``index_select``; for an index pattern read along its input leg, an ``unfold`` view of the padded
    input); otherwise a *scatter* (``index_add``). Copy tensors are *relabels*.
    """

    def __init__(self, data: StepInput, const: StepInput, out: set[str], sizes: Mapping[str, int], like: Any, data_index: int = 0) -> None:
        import torch

        assert const.node is not None
        self.data_index = data_index
        cl = const.legs
        self.keep = [leg for leg in data.legs if leg not in cl and leg in out]
        summed = [leg for leg in data.legs if leg not in cl and leg not in out]
        tp = [leg for leg in data.legs if leg in cl]
        rp = [leg for leg in cl if leg in out and leg not in self.keep]
        self.out_legs = tuple(self.keep + rp)
        order = self.keep + summed + tp
        self.perm = tuple(data.legs.index(leg) for leg in order)
        self.sum_dims = tuple(range(len(self.keep), len(self.keep) + len(summed)))
        self.keep_shape = tuple(sizes[leg] for leg in self.keep)
        self.rp_shape = tuple(sizes[leg] for leg in rp)
        self.tp_size = _size(tp, sizes)
        rp_size = _size(rp, sizes)
        out_size = _size(self.out_legs, sizes)
        data_size = _size(data.legs, sizes)
        dense = dense_flops([data, const], self.out_legs, sizes)
        self.unfold = self._unfold_plan(const.node, tp, rp, summed, sizes)
        if self.unfold is not None:
            self.kind = "gather"
            self.fresh = bool(self.unfold[0] or self.unfold[1])
            self.cost = StepCost("gather", dense, 0, data_size + out_size, out_size)
            return
        values = constant_array(const.node, dict(zip(cl, (sizes[leg] for leg in cl))))
        coords = np.nonzero(values)
        nnz = len(coords[0]) if coords else int(values != 0)
        src = _ravel([coords[cl.index(leg)] for leg in tp], [sizes[leg] for leg in tp], nnz)
        dst = _ravel([coords[cl.index(leg)] for leg in rp], [sizes[leg] for leg in rp], nnz)
        device = like.device
        unique_dst = len(np.unique(dst)) == len(dst)
        if unique_dst:
            index = np.full(rp_size, self.tp_size, dtype=np.int64)
            index[dst] = src
            self.pad = bool((index == self.tp_size).any())
            self.index = torch.as_tensor(index, device=device)
            self.kind = "relabel" if const.node.kind is NodeKind.DELTA else "gather"
            self.scatter = None
            self.cost = StepCost(self.kind, dense, 0, data_size + out_size, out_size)
        else:
            self.src = torch.as_tensor(src, device=device)
            self.scatter = torch.as_tensor(dst, device=device)
            self.rp_size = rp_size
            self.kind = "scatter"
            self.cost = StepCost("scatter", dense, len(src) * math.prod(self.keep_shape), data_size + 2 * out_size, out_size)

    def _unfold_plan(
        self, node: Node, tp: list[str], rp: list[str], summed: list[str], sizes: Mapping[str, int]
    ) -> tuple[int, int, int, int, int, int, bool] | None:
        """For a zero-padded pattern read along its input leg into ``(k, o)``: an unfold view of the padded data."""
        if node.kind is not NodeKind.PATTERN or node.pattern is None or node.pattern.mode is not PaddingMode.ZEROS:
            return None
        k, o, i = node.legs
        if tp != [i] or set(rp) != {k, o} or summed:
            return None
        p = node.pattern
        kk, oo, ii = sizes[k], sizes[o], sizes[i]
        span = (kk - 1) * p.dilation + 1
        extra = max(0, (oo - 1) * p.stride + span - p.pad_left - ii)
        return (p.pad_left, extra, span, p.stride, oo, p.dilation, rp == [k, o])

    def __call__(self, *arrays: Any) -> Any:
        import torch
        import torch.nn.functional as F

        t = arrays[self.data_index].permute(self.perm)
        if self.sum_dims:
            t = t.sum(self.sum_dims)
        if self.unfold is not None:
            left, right, span, stride, size, dilation, k_first = self.unfold
            if left or right:
                t = F.pad(t, (left, right))
            u = t.unfold(-1, span, stride)[..., :size, ::dilation]
            return u.transpose(-1, -2) if k_first else u
        t = t.reshape(*self.keep_shape, self.tp_size)
        if self.scatter is None:
            if self.pad:
                t = F.pad(t, (0, 1))
            return t.index_select(-1, self.index).view(*self.keep_shape, *self.rp_shape)
        values = t.index_select(-1, self.src)
        out = torch.zeros(*self.keep_shape, self.rp_size, dtype=t.dtype, device=t.device)
        out.index_add_(-1, self.scatter, values)
        return out.view(*self.keep_shape, *self.rp_shape)


def _ravel(coords: list[np.ndarray], shape: list[int], nnz: int) -> np.ndarray:
    """Flat indices of the nonzeros over the given legs (all 0 when there are none)."""
    if not coords:
        return np.zeros(nnz, dtype=np.int64)
    return np.ravel_multi_index(tuple(coords), tuple(shape)).astype(np.int64)


# ----- matrix multiply on views ---------------------------------------------------------------------------
class MatmulKernel(Kernel):
    """A pairwise contraction as one (batched, broadcast) ``torch.matmul`` on views of its inputs.

    Legs on both inputs and the output are batch dimensions, legs on both inputs only are contracted,
    the rest are matrix rows or columns; leading legs of one input only may act as broadcast batch
    dimensions. Of the ways to lay this out, the one that copies the fewest input elements (assuming
    inputs contiguous in their leg order) is chosen, so that e.g. a 1×1 convolution is
    ``weight @ x.view(N, C_in, H·W)`` with no copy at all.
    """

    def __init__(self, a: StepInput, b: StepInput, out: set[str], sizes: Mapping[str, int]) -> None:
        self.copied, self.swap, choice = _best_matmul(a, b, out, sizes)
        self.left, self.right, self.out_legs, self.out_shape = _layout(*choice, sizes)
        self.kind = "batched GEMM" if set(a.legs) & set(b.legs) & out else "GEMM"
        flops = dense_flops([a, b], self.out_legs, sizes)
        moved = _size(a.legs, sizes) + _size(b.legs, sizes) + _size(self.out_legs, sizes) + self.copied
        self.cost = StepCost(self.kind, flops, flops, moved, _size(self.out_legs, sizes))

    def __call__(self, *arrays: Any) -> Any:
        import torch

        first, second = (arrays[1], arrays[0]) if self.swap else (arrays[0], arrays[1])
        p = _arrange(first, self.left)
        q = _arrange(second, self.right)
        return torch.matmul(p, q).view(self.out_shape)


def matmul_copies(a: StepInput, b: StepInput, out: set[str], sizes: Mapping[str, int]) -> int:
    """Input elements the best matmul layout copies (inputs assumed contiguous in their leg order): what
    ``MatmulKernel`` chooses by, computed without building the layouts."""
    return _best_matmul(a, b, out, sizes)[0]


def _best_matmul(a: StepInput, b: StepInput, out: set[str], sizes: Mapping[str, int]) -> tuple[int, bool, tuple]:
    """``(copied elements, inputs swapped, layout choice)`` of the layout that copies least (first on ties)."""
    best = None
    for swap, (left, right) in ((False, (a, b)), (True, (b, a))):
        for choice in _matmul_choices(left.legs, right.legs, out):
            copied = _copies(*choice, sizes)
            if best is None or copied < best[0]:
                best = (copied, swap, choice)
    assert best is not None
    return best


def matmul_applies(a: StepInput, b: StepInput, out: set[str]) -> bool:
    """Two data inputs with contracted legs and no leg summed on one side only."""
    if a.constant or b.constant:
        return False
    shared = set(a.legs) & set(b.legs)
    if not shared - out:
        return False
    return all(leg in out for leg in set(a.legs) ^ set(b.legs))


def _arrange(array: Any, how: tuple[tuple[int, ...], tuple[int, ...], bool]) -> Any:
    perm, shape, transpose = how
    if perm != tuple(range(len(perm))):
        array = array.permute(perm)
    array = array.reshape(shape)
    return array.transpose(-1, -2) if transpose else array


def _blocks_in_order(legs: Sequence[str], prefix: Sequence[str], blocks: Sequence[Sequence[str]]) -> tuple[bool, bool]:
    """Whether ``legs`` is ``prefix`` then the two blocks (each in order) — and whether the blocks are swapped."""
    n = len(prefix)
    if tuple(legs[:n]) != tuple(prefix):
        return False, False
    rest = tuple(legs[n:])
    first, second = tuple(blocks[0]), tuple(blocks[1])
    if rest == first + second:
        return True, False
    if rest == second + first:
        return True, True
    return False, False


def _matmul_choices(left: tuple[str, ...], right: tuple[str, ...], out: set[str]):
    """Candidate layouts ``(left, right, batch, contracted, left lead, right lead, rows, cols)`` by leg names."""
    batch = [leg for leg in left if leg in right and leg in out]
    contracted = [leg for leg in left if leg in right and leg not in out]
    left_free = [leg for leg in left if leg not in right]
    right_free = [leg for leg in right if leg not in left]
    batch_right = [leg for leg in right if leg in batch]
    contracted_right = [leg for leg in right if leg in contracted]
    lead_left = _leading(left, left_free)
    lead_right = _leading(right, right_free)
    for batch_order in (batch, batch_right):
        for k_order in (contracted, contracted_right):
            for el in range(len(lead_left) + 1):
                for er in range(len(lead_right) + 1):
                    le, re = lead_left[:el], lead_right[:er]
                    m = [leg for leg in left_free if leg not in le]
                    n = [leg for leg in right_free if leg not in re]
                    yield (left, right, batch_order, k_order, le, re, m, n)


def _copies(left, right, batch, k, le, re, m, n, sizes) -> int:  # noqa: ANN001
    """Elements a layout copies: an input whose legs are not ``[*batch, *lead, rows, cols]`` in order (or with rows
    and columns swapped, a transposed view) is permuted into a copy."""
    copied = 0
    for legs, prefix, rows, cols in ((left, [*batch, *le], m, k), (right, [*batch, *re], k, n)):
        if not _blocks_in_order(legs, prefix, (rows, cols))[0]:
            copied += _size(legs, sizes)
    return copied


def _leading(legs: Sequence[str], free: Sequence[str]) -> list[str]:
    out = []
    for leg in legs:
        if leg not in free:
            break
        out.append(leg)
    return out


def _layout(left, right, batch, k, le, re, m, n, sizes):  # noqa: ANN001, ANN202
    """The views of a layout choice: how each input is arranged, and the output's legs and shape."""
    def how(legs, prefix_dims, ones_before, ones_after, rows, cols):
        """Permutation, shape and transpose flag for ``[*prefix, rows, cols]`` (with broadcast size-1 dims)."""
        prefix = list(prefix_dims)
        ok, swapped = _blocks_in_order(legs, prefix, (rows, cols))
        order = prefix + (list(cols) + list(rows) if (ok and swapped) else list(rows) + list(cols))
        perm = tuple(legs.index(leg) for leg in order)
        batch_shape = [sizes[leg] for leg in prefix_dims[: len(batch)]]
        extra = [sizes[leg] for leg in prefix_dims[len(batch) :]]
        r, c = _size(rows, sizes), _size(cols, sizes)
        mat = [c, r] if (ok and swapped) else [r, c]
        shape = tuple(batch_shape + [1] * ones_before + extra + [1] * ones_after + mat)
        return perm, shape, bool(ok and swapped)

    left_how = how(left, list(batch) + list(le), 0, len(re), m, k)
    right_how = how(right, list(batch) + list(re), len(le), 0, k, n)
    out_legs = tuple(batch) + tuple(le) + tuple(re) + tuple(m) + tuple(n)
    out_shape = tuple(sizes[leg] for leg in out_legs)
    return left_how, right_how, out_legs, out_shape
