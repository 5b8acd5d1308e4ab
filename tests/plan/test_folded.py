"""Folded constants: a pattern summed over some of its legs, counted from its entries, equals the brute-force sum."""

from __future__ import annotations

import itertools

import numpy as np
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

from tnderiv.ir import Diagram
from tnderiv.ir.nodes import PaddingMode, PatternParams, pattern
from tnderiv.plan.reference import folded_array


def brute(params: PatternParams, k: int, o: int, i: int) -> np.ndarray:
    """Π by loops, with the padding modes' index maps written out here."""
    out = np.zeros((k, o, i))
    for a, b in itertools.product(range(k), range(o)):
        j = b * params.stride + a * params.dilation - params.pad_left
        if params.mode is PaddingMode.REFLECT:  # mirrored at the first and the last entry
            j = -j if j < 0 else j
            j = 2 * (i - 1) - j if j >= i else j
        elif params.mode is PaddingMode.REPLICATE:
            j = min(max(j, 0), i - 1)
        elif params.mode is PaddingMode.CIRCULAR:
            j %= i
        if 0 <= j < i:
            out[a, b, j] += 1
    return out


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 4),
    o=st.integers(1, 6),
    i=st.integers(2, 9),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 2),
    pad=st.integers(0, 2),
    mode=st.sampled_from(list(PaddingMode)),
    keep=st.sampled_from([("k", "i"), ("o", "i"), ("k", "o"), ("i",), ("k",), ("i", "k")]),
)
def test_pattern_sums_equal_brute_force(k: int, o: int, i: int, stride: int, dilation: int, pad: int, mode: PaddingMode, keep: tuple[str, ...]) -> None:
    params = PatternParams(stride, dilation, pad, mode)
    node = pattern("k", "o", "i", params)
    network = Diagram((node,), keep, {"k": sympy.Integer(k), "o": sympy.Integer(o), "i": sympy.Integer(i)})
    full = brute(params, k, o, i)
    summed = tuple(axis for axis, leg in enumerate("koi") if leg not in keep)
    expected = np.einsum(f"koi->{''.join(keep)}", full) if summed else full
    np.testing.assert_array_equal(folded_array(network), expected)
