"""Index patterns that are something simpler: a reshape (dense), a strided view (down-sampling), a small sum, a repeat.

Every rule here removes a pattern node (replacing it by copy tensors or one folded constant) and
adds none, so repeated application terminates. Conditions on sizes must be provable; with symbolic
sizes most of them are not, and they are decided again when a plan binds the sizes.

``dense pattern`` and ``down-sampling`` are plan-stage rules: whether reading an operand through a
reshape or view beats keeping the pattern depends on the kernels (on CPU, torch's convolution
kernels beat a GEMM on a permuted copy for forward passes and input VJPs), so each plan compares
the rewritten and the derived network under the structure-aware cost model. Apply them to a
diagram with ``simplify(d, stage="plan")``.
"""

from __future__ import annotations

from tnderiv.ir import Diagram, Node, NodeKind, delta
from tnderiv.simplify.edits import folded_node, split_leg
from tnderiv.simplify.rule import rule
from tnderiv.simplify.sizes import known_int, provably_equal, provably_le


def _patterns(diagram: Diagram):
    for index, node in enumerate(diagram.nodes):
        if node.kind is NodeKind.PATTERN and node.pattern is not None:
            yield index, node


def _sole_reader(diagram: Diagram, leg: str, pattern_index: int) -> int | None:
    """The index of the only other node carrying ``leg`` if it is an operand and the leg is summed."""
    if leg in diagram.open_legs:
        return None
    others = [j for j in diagram.nodes_with(leg) if j != pattern_index]
    if len(others) != 1 or diagram.nodes[others[0]].kind is not NodeKind.OPERAND:
        return None
    return others[0]


def _unfold_into(diagram: Diagram, index: int, reader: int, steps: tuple[int, int]) -> Diagram | None:
    """Read the pattern's input leg through the reader's legs ``(o', k')`` at ``steps``; the pattern becomes deltas."""
    node = diagram.nodes[index]
    k, o, i = node.legs
    o2 = diagram.fresh_leg(o + "'")
    k2 = diagram.fresh_leg(k + "'", taken=(o2,))
    sizes = diagram.sizes
    split = split_leg(diagram.nodes[reader], i, [(o2, sizes[o]), (k2, sizes[k])], steps, sizes)
    if split is None:
        return None
    nodes = list(diagram.nodes)
    nodes[reader] = split
    nodes[index : index + 1] = [delta(o2, o), delta(k2, k)]
    return diagram.replace(nodes=tuple(nodes), sizes={o2: sizes[o], k2: sizes[k]})


@rule("dense pattern", priority=60, stage="plan")
def dense_pattern(diagram: Diagram) -> Diagram | None:
    """``Π[k, o, i]`` with ``K = S``, ``D = 1`` (or ``K = 1``), ``P = 0`` and ``I = O·K`` is a reshape ``i = o·K + k``.

    Fires on such a pattern whose input leg ``i`` is either summed and read by exactly one operand
    (that operand's ``i`` is un-grouped into ``(o', k')`` through its ``groups``) or open and on the
    pattern only (the result's axis is un-grouped). The pattern becomes ``δ(o', o) δ(k', k)``, which
    delta elimination turns into renamings. 1×1 convolutions are the case ``K = S = 1``.
    """
    sizes = diagram.sizes
    for index, node in _patterns(diagram):
        k, o, i = node.legs
        params = node.pattern
        kernel = sizes[k]
        if params.pad_left != 0 or not provably_equal(kernel, params.stride):
            continue
        if params.dilation != 1 and known_int(kernel) != 1:
            continue
        if not provably_equal(sizes[o] * kernel, sizes[i]):
            continue
        reader = _sole_reader(diagram, i, index)
        if reader is not None:
            result = _unfold_into(diagram, index, reader, (params.stride, 1))
            if result is not None:
                return result
        elif i in diagram.open_legs and diagram.nodes_with(i) == (index,):
            return _unfold_open(diagram, index)
    return None


def _unfold_open(diagram: Diagram, index: int) -> Diagram:
    node = diagram.nodes[index]
    k, o, i = node.legs
    o2 = diagram.fresh_leg(o + "'")
    k2 = diagram.fresh_leg(k + "'", taken=(o2,))
    groups = [list(g) for g in diagram.open_axis_groups]
    for group in groups:
        if i in group:
            position = group.index(i)
            group[position : position + 1] = [o2, k2]
    open_legs = tuple(leg for g in groups for leg in g)
    lengths = tuple(len(g) for g in groups)
    nodes = list(diagram.nodes)
    nodes[index : index + 1] = [delta(o2, o), delta(k2, k)]
    return diagram.replace(
        nodes=tuple(nodes),
        open_legs=open_legs,
        sizes={o2: diagram.sizes[o], k2: diagram.sizes[k]},
        open_groups=None if all(n == 1 for n in lengths) else lengths,
    )


@rule("down-sampling", priority=61, stage="plan")
def down_sampling(diagram: Diagram) -> Diagram | None:
    """``Π[k, o, i]`` with ``P = 0`` and windows that do not overlap (``S > (K−1)·D``) only selects inputs.

    Fires where every window lies inside the input (``(O−1)·S + (K−1)·D ≤ I − 1``) and ``i`` is summed
    and read by exactly one operand: that operand's ``i`` is read through a strided view as
    ``(o', k') ↦ o'·S + k'·D`` (the input is narrowed, then dense), and the pattern becomes
    ``δ(o', o) δ(k', k)``. Covers strided 1×1 convolutions and ``K = S`` with an indivisible input.
    """
    sizes = diagram.sizes
    for index, node in _patterns(diagram):
        k, o, i = node.legs
        params = node.pattern
        kernel = sizes[k]
        if params.pad_left != 0 or not provably_le((kernel - 1) * params.dilation + 1, params.stride):
            continue
        if not provably_le((sizes[o] - 1) * params.stride + (kernel - 1) * params.dilation, sizes[i] - 1):
            continue
        reader = _sole_reader(diagram, i, index)
        if reader is None:
            continue
        result = _unfold_into(diagram, index, reader, (params.stride, params.dilation))
        if result is not None:
            return result
    return None


@rule("pattern sum", priority=62)
def pattern_sum(diagram: Diagram) -> Diagram | None:
    """A pattern (or folded constant) summed over a leg no other node carries is the small constant ``Π̄``.

    Fires on a pattern or folded node with a summed leg that is on no other node and not open
    (``Σ_o Π[k, o, i] = Π̄[k, i]``, ``Σ_i Π[k, o, i]`` = the valid-position mask); the node becomes one
    folded constant without that leg. Terminates: the number of pattern legs strictly decreases.
    """
    counts = diagram.leg_count
    open_legs = set(diagram.open_legs)
    for index, node in enumerate(diagram.nodes):
        if node.kind not in (NodeKind.PATTERN, NodeKind.FOLDED):
            continue
        for leg in node.legs:
            if counts[leg] == 1 and leg not in open_legs:
                keep = tuple(x for x in node.legs if x != leg)
                folded = folded_node((node,), keep, diagram.sizes)
                return diagram.replace(nodes=diagram.nodes[:index] + (folded,) + diagram.nodes[index + 1 :])
    return None


@rule("pattern product", priority=55)
def pattern_product(diagram: Diagram) -> Diagram | None:
    """``Π ⊙ Π = Π``: two equal 0/1 constants on the same legs are one; patterns sharing enough legs become a delta.

    Fires on two patterns with equal hyperparameters that share ``(k, o)`` (any padding mode), or
    ``(k, i)`` or ``(o, i)`` (zero padding, where the third index is then unique), with equal sizes of
    the third legs: the second becomes a delta between the third legs (dropped if they are the same
    leg). Also on two copy tensors or two ones nodes on the same set of legs. Removes a node.
    """
    nodes = diagram.nodes
    sizes = diagram.sizes
    for a in range(len(nodes)):
        for b in range(a + 1, len(nodes)):
            p, q = nodes[a], nodes[b]
            if p.kind is not q.kind:
                continue
            if p.kind in (NodeKind.DELTA, NodeKind.ONES) and set(p.legs) == set(q.legs):
                return diagram.replace(nodes=nodes[:b] + nodes[b + 1 :])
            if p.kind is not NodeKind.PATTERN or p.pattern != q.pattern:
                continue
            roles = [(0, 1, 2)]
            if p.pattern.mode.value == "zeros":
                roles += [(0, 2, 1), (1, 2, 0)]
            for first, second, third in roles:
                if p.legs[first] != q.legs[first] or p.legs[second] != q.legs[second]:
                    continue
                x, y = p.legs[third], q.legs[third]
                if x == y:
                    return diagram.replace(nodes=nodes[:b] + nodes[b + 1 :])
                if provably_equal(sizes[x], sizes[y]):
                    return diagram.replace(nodes=nodes[:b] + (delta(x, y),) + nodes[b + 1 :])
    return None


__all__ = ["dense_pattern", "down_sampling", "pattern_product", "pattern_sum", "Node"]
