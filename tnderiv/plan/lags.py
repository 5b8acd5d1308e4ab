"""KFAC-expand's input Gram of a stride-1 convolution from lag correlations: the input is unfolded only on a thin frame.

``A[(c,k),(c',k')] = s · Σ_{o ∈ [0,O)} ã_o[c,k] ã_o[c',k']`` with ``ã_o[c,k] = x[c, o + k·D − P]`` (zero
outside the input) is the glued network that ``simplify.lags.glued_lags`` recognizes. Summed over the
*extended* positions ``E = Π_d [P − (K−1)·D, I + P)`` (every window that touches the input) the Gram is
exactly Toeplitz in ``k``: ``Σ_{o ∈ E} ã_o ã_oᵀ [(c,k),(c',k')] = C[k' − k][c,c']`` with the lag
correlations ``C[m][c,c'] = Σ_{n,i} x[c,i] x[c',i+m·D]`` over all valid pairs (one GEMM per lag on the
zero-padded, flattened input: a shift of the flat index is a lag in every dimension; the
``(Π(2K−1)+1)/2`` lags ``≥ 0`` in lexicographic order, the others are transposes). Positions outside
``[0, O)`` are then removed exactly: ``A = s · (Toeplitz(C) − Σ_{o ∈ E \\ [0,O)} ã_o ã_oᵀ)``, the
frame ``E \\ [0,O)`` unfolded in at most ``2·dims`` slabs (for large inputs a thin border).

``lag_program`` prices this against the gather + GEMM plan and returns a program only where it is
cheaper; callers keep the general path otherwise.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tnderiv.ir import Diagram
from tnderiv.plan.cache import LRUCache, register_cache
from tnderiv.plan.cost import MOVE_COST
from tnderiv.simplify.lags import GluedLags, glued_lags

# A small torch call costs about this many FLOP-equivalents of Python and dispatch overhead
# (~5–10 µs on one CPU thread): the lag program runs one GEMM per lag and a few calls per frame slab.
OP_COST = 3e5
# Chosen only where its score is clearly lower: many small GEMMs and passes over the d×d factor run
# slower per FLOP than the one Gram GEMM of the general path (measured: benchmarks/bench_kfac_lags.py).
# Calibrated on the real layers of benchmarks/bench_kfac_lags.py (CPU, one thread): with several
# channels per group the lag program ran 1.3–2× slower than its score relative to gather + GEMM; with
# one channel per group (depthwise: dot products instead of GEMMs) faster than its score.
LAG_MARGIN = 0.6
LAG_MARGIN_DEPTHWISE = 0.9


@dataclass(frozen=True)
class LagCost:
    """Scores (FLOPs + ``MOVE_COST``·elements moved + ``OP_COST``·calls) and FLOPs of both ways to form ``A``."""

    lag_flops: int
    lag_time: float
    unfold_flops: int
    unfold_time: float
    depthwise: bool = False

    @property
    def chosen(self) -> bool:
        return self.lag_time < (LAG_MARGIN_DEPTHWISE if self.depthwise else LAG_MARGIN) * self.unfold_time


@dataclass(frozen=True)
class LagProgram:
    """``A`` ``[G, C·ΠK, C·ΠK]`` from the operand ``name`` (``[N, G·C, *I]``) by lag correlations and a frame.

    ``shifts`` are the flat offsets of the lags ``≥ 0``; ``index`` ``[ΠK, ΠK]`` picks for ``(k, k')`` the
    lag ``k' − k`` from their stack followed by the transposes; ``slabs`` the frame's output positions
    as ranges of window starts in the input padded by ``(K−1)·D`` on each side.
    """

    name: str
    batch: int
    groups: int
    channels: int
    inputs: tuple[int, ...]
    kernel: tuple[int, ...]
    dilation: tuple[int, ...]
    shifts: tuple[int, ...]
    index: tuple[tuple[int, ...], ...]
    slabs: tuple[tuple[tuple[int, int], ...], ...]
    scale: float
    cost: LagCost

    @property
    def pads(self) -> tuple[int, ...]:
        return tuple((k - 1) * d for k, d in zip(self.kernel, self.dilation))

    def __call__(self, x: Any) -> Any:
        """``x`` ``[N, G·C, *I]`` → ``A`` ``[G, C·ΠK, C·ΠK]``."""
        g, c, dims = self.groups, self.channels, len(self.inputs)
        xr = x.reshape(self.batch, g, c, *self.inputs)
        pads = self.pads
        trailing = F.pad(xr, [p for q in reversed(pads) for p in (0, q)]) if any(pads) else xr
        flat = trailing.movedim(0, 2).reshape(g, c, -1)  # [G, C, N·Π(I+p)]
        length = flat.shape[-1]
        lags = [_correlate(flat[..., : length - s], flat[..., s:]) for s in self.shifts]  # [G, C, C'] each
        stacked = torch.stack(lags + [lag.transpose(-1, -2) for lag in lags[1:]])  # [J, G, C, C'], lag 0 first
        kk, device = math.prod(self.kernel), x.device
        index = torch.tensor(self.index, device=device)
        # one gather straight into the layout [G, C, K, C', K']
        A = stacked[
            index[None, None, :, None, :],
            torch.arange(g, device=device)[:, None, None, None, None],
            torch.arange(c, device=device)[None, :, None, None, None],
            torch.arange(c, device=device)[None, None, None, :, None],
        ].reshape(g, c * kk, c * kk)
        if not self.slabs:
            return A.mul_(self.scale)
        both = F.pad(xr, [p for q in reversed(pads) for p in (q, q)]) if any(pads) else xr
        windows = both
        for d in range(dims):
            windows = windows.unfold(3 + d, pads[d] + 1, 1)
        windows = windows[(..., *(slice(None, None, dd) for dd in self.dilation))]  # [N, G, C, *W, *K]
        order = (1, 0, *range(3, 3 + dims), 2, *range(3 + dims, 3 + 2 * dims))
        parts = [windows[(slice(None),) * 3 + tuple(slice(lo, hi) for lo, hi in slab)].permute(order).reshape(g, -1, c * kk) for slab in self.slabs]
        frame = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]  # [G, M, d]: the unfolded frame
        return A.baddbmm_(frame.transpose(-1, -2), frame, beta=self.scale, alpha=-self.scale)


def _correlate(a: Any, b: Any) -> Any:
    """``Σ_p a[g,c,p] b[g,c',p]`` → ``[G, C, C']`` (a dot product per group for one channel, a 2-d GEMM for one group)."""
    if a.shape[1] == 1:
        return (a * b).sum(-1, keepdim=True)
    if a.shape[0] == 1:
        return (a[0] @ b[0].T)[None]
    return a @ b.transpose(-1, -2)


# lag programs (or None where the general path runs) per (glued network, bound sizes, scale, force): no plans
_PROGRAMS: LRUCache[tuple[LagProgram | None]] = LRUCache(maxsize=256)
register_cache("lags", "KFAC-expand input factors by lag correlations: programs per layer and sizes (no plans)", lambda: _PROGRAMS)


def cached_lag_program(glued: Diagram, sizes: Mapping[str, int], scale: float, force: bool | None = None) -> LagProgram | None:
    """``lag_program``, cached by its arguments."""
    key = (glued, tuple(sorted(sizes.items())), scale, force)
    return _PROGRAMS.get_or_build(key, lambda: (lag_program(glued, sizes, scale, force),))[0]


def lag_program(glued: Diagram, sizes: Mapping[str, int], scale: float, force: bool | None = None) -> LagProgram | None:
    """The lag program of ``glued`` for bound ``sizes`` where it is exact and (unless ``force``) cheaper, else ``None``.

    ``force=True`` returns it wherever it is exact (tests, benchmarks); ``False`` never."""
    if force is False:
        return None
    form = glued_lags(glued)
    if form is None:
        return None
    program = _build(form, sizes, scale)
    if program is None or not (force or program.cost.chosen):
        return None
    return program


def _build(form: GluedLags, sizes: Mapping[str, int], scale: float) -> LagProgram | None:
    n = sizes[form.batch]
    g = sizes[form.group] if form.group else 1
    c = sizes[form.channel]
    inputs = tuple(sizes[d.i] for d in form.dims)
    outputs = tuple(sizes[d.o] for d in form.dims)
    kernel = tuple(sizes[d.k] for d in form.dims)
    dilation = tuple(d.dilation for d in form.dims)
    if min(outputs) < 1 or min(inputs) < 1:
        return None
    pads = tuple((k - 1) * dd for k, dd in zip(kernel, dilation))
    strides = tuple(math.prod(i + p for i, p in zip(inputs[d + 1 :], pads[d + 1 :])) for d in range(len(inputs)))
    every = list(itertools.product(*(range(-(k - 1), k) for k in kernel)))
    positive = [m for m in every if not any(m) or next(v for v in m if v) > 0]
    positive.sort(key=lambda m: any(m))  # lag 0 first
    slot = {m: j for j, m in enumerate(positive)}
    slot.update({tuple(-v for v in m): len(positive) + j - 1 for j, m in enumerate(positive) if any(m)})
    taps = list(itertools.product(*(range(k) for k in kernel)))
    index = tuple(tuple(slot[tuple(b - a for a, b in zip(k, k2))] for k2 in taps) for k in taps)
    shifts = tuple(sum(v * dd * s for v, dd, s in zip(m, dilation, strides)) for m in positive)
    # extended positions o ∈ [P − pad, I + P): window start w = o − P + pad in the input padded by pad
    ext = [(d.pad_left - p, i + d.pad_left) for d, p, i in zip(form.dims, pads, inputs)]
    inner = [(max(0, lo), min(o, hi)) for (lo, hi), o in zip(ext, outputs)]
    slabs = []
    for d in range(len(inputs)):
        lo, hi = ext[d]
        for side in ((lo, min(inner[d][0], hi)), (max(inner[d][1], lo), hi)):
            box = [*inner[:d], side, *ext[d + 1 :]]
            if all(b > a for a, b in box):
                slabs.append(tuple((a - dd.pad_left + p, b - dd.pad_left + p) for (a, b), dd, p in zip(box, form.dims, pads)))
    cost = _cost(n, g, c, inputs, outputs, kernel, pads, len(shifts), slabs)
    return LagProgram(form.name, n, g, c, inputs, kernel, dilation, shifts, index, tuple(slabs), scale, cost)


def _cost(
    n: int, g: int, c: int, inputs: tuple[int, ...], outputs: tuple[int, ...], kernel: tuple[int, ...], pads: tuple[int, ...], lags: int, slabs: list[Any]
) -> LagCost:
    """FLOPs and scores of the lag program and of gather + GEMM (the unfolded half, then its Gram)."""
    d = c * math.prod(kernel)
    positions = n * math.prod(outputs)
    unfold_flops = 2 * g * positions * d * d
    gathered = 0 if d == c else g * positions * d * 2  # a 1×1 kernel's unfolded input is the input itself
    unfold_time = unfold_flops + MOVE_COST * (gathered + 2 * g * positions * d + g * d * d) + 3 * OP_COST
    padded = n * math.prod(i + p for i, p in zip(inputs, pads))
    frame = n * sum(math.prod(b - a for a, b in slab) for slab in slabs)
    flops = lags * 2 * g * c * c * padded + 2 * g * frame * d * d
    moved = g * c * padded * (1 + 2 * lags) + 3 * g * frame * d + 3 * g * d * d + 2 * lags * g * c * c
    calls = lags + 6 + 5 * len(slabs)
    return LagCost(flops, flops + MOVE_COST * moved + OP_COST * calls, unfold_flops, unfold_time, c == 1)


__all__ = ["LagCost", "LagProgram", "cached_lag_program", "lag_program"]
