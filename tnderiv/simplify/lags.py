"""Lag structure of a glued pair of index patterns: ``Σ_o Π[k,o,i] Π[k',o,i']`` as per-lag correlations.

For stride 1 and zeros padding, ``Π[k,o,i] = 1 iff i = o + k·D − P`` (``0 ≤ o < O``, ``0 ≤ i < I``), so
the glued pair is non-zero only where ``i' − i = (k' − k)·D`` and ``i ∈ [k·D − P, k·D − P + O) ∩ [0, I)``.
A network ``x[n,(g),c,i..] Π.. x[n,(g),c',i'..] Π'..`` whose patterns pair up on ``o`` is therefore the
Gram of the unfolded input, computable from the lag correlations ``C[m][c,c'] = Σ_{n,i} x[c,i] x[c',i+m·D]``
(``2K − 1`` lags per dimension, half of them by symmetry) minus the border terms where the window
leaves ``[k·D − P, k·D − P + O)``. ``glued_lags`` recognizes that structure on a diagram (it does not
evaluate anything); it returns ``None`` wherever the lag form is not exact (strides, other padding
modes, patterns that do not pair up, other operands), so callers keep the general path there.
"""

from __future__ import annotations

from dataclasses import dataclass

from tnderiv.ir import Diagram, NodeKind
from tnderiv.ir.nodes import Node, PaddingMode


@dataclass(frozen=True)
class LagDim:
    """One spatial dimension of a glued pattern pair: legs ``i`` (input), ``o`` (shared), ``k``, ``k'``."""

    i: str
    o: str
    k: str
    k_copy: str
    dilation: int
    pad_left: int


@dataclass(frozen=True)
class GluedLags:
    """A glued input Gram in lag form: operand ``name`` ``[N, G·C, *I]`` (legs ``batch, (group), channel, *i``).

    Its value is ``coefficient · Σ_{n,o} a[n,o,g,(c,k)] a[n,o,g,(c',k')]`` with open legs
    ``(group), channel, *k, channel', *k'``.
    """

    name: str
    batch: str
    group: str | None
    channel: str
    channel_copy: str
    dims: tuple[LagDim, ...]


def glued_lags(glued: Diagram) -> GluedLags | None:
    """The lag form of ``glued`` (two copies of one operand, their stride-1 zeros patterns paired on ``o``), or ``None``."""
    operands = [n for n in glued.nodes if n.kind is NodeKind.OPERAND]
    patterns = [n for n in glued.nodes if n.kind is NodeKind.PATTERN]
    if len(operands) != 2 or len(patterns) + 2 != len(glued.nodes) or not patterns or len(patterns) % 2:
        return None
    first, second = operands
    if first.name != second.name or first.view is not None or second.view is not None:
        return None
    spatial = len(patterns) // 2
    layout = _layout(first, spatial)
    copy = _layout(second, spatial)
    if layout is None or copy is None:
        return None
    batch, group, channel, ins = layout
    batch2, group2, channel2, ins2 = copy
    if batch != batch2 or group != group2 or channel == channel2:
        return None
    by_i = {p.legs[2]: p for p in patterns}
    if len(by_i) != len(patterns):
        return None
    dims = []
    for i, i2 in zip(ins, ins2):
        p, q = by_i.get(i), by_i.get(i2)
        if p is None or q is None or p.pattern != q.pattern or p.legs[1] != q.legs[1]:
            return None
        params = p.pattern
        assert params is not None
        if params.stride != 1 or params.mode is not PaddingMode.ZEROS:
            return None
        dims.append(LagDim(i, p.legs[1], p.legs[0], q.legs[0], params.dilation, params.pad_left))
    open_expected = ((group,) if group else ()) + (channel, *(d.k for d in dims), channel2, *(d.k_copy for d in dims))
    if glued.open_legs != open_expected:
        return None
    summed = {batch, *(d.o for d in dims)}
    legs = {leg for n in glued.nodes for leg in n.legs}
    if legs - set(open_expected) - summed - set(ins) - set(ins2):
        return None
    return GluedLags(first.name, batch, group, channel, channel2, tuple(dims))


def _layout(node: Node, spatial: int) -> tuple[str, str | None, str, tuple[str, ...]] | None:
    """``(batch, group, channel, spatial legs)`` of an operand ``[N, (G·)C, *I]``, or ``None``."""
    legs = node.legs
    groups = node.groups or (1,) * len(legs)
    if len(legs) == spatial + 3 and groups == (1, 2, *(1,) * spatial):
        return legs[0], legs[1], legs[2], legs[3:]
    if len(legs) == spatial + 2 and groups == (1,) * len(legs):
        return legs[0], None, legs[1], legs[2:]
    return None


__all__ = ["GluedLags", "LagDim", "glued_lags"]
