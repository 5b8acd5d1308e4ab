"""Canonical form: equality and hashing ignore summed-leg names and node order, never anything that changes the value."""

from __future__ import annotations

import numpy as np
import pytest
from dense_ir import evaluate

from tnderiv.ir import Diagram, delta, operand
from tnderiv.ir.canonical import diagram_hash, isomorphic

RNG = np.random.default_rng(0)
X, W = RNG.standard_normal((2, 3)), RNG.standard_normal((3, 3))


def _matmul(summed: str = "a", order: int = 1, w_axes: tuple[str, str] = ("a", "b")) -> Diagram:
    nodes = (operand("x", "n", "a"), operand("w", *w_axes))
    nodes = nodes if order == 1 else nodes[::-1]
    d = Diagram(nodes, ("n", "b"), {"n": 2, "a": 3, "b": 3})
    return d.rename({"a": summed}) if summed != "a" else d


@pytest.mark.parametrize("summed", ["a", "k", "zz_1"])
@pytest.mark.parametrize("order", [1, -1])
def test_renaming_summed_legs_and_reordering_nodes_keep_the_value_and_the_identity(summed: str, order: int) -> None:
    base, other = _matmul(), _matmul(summed, order)
    assert other == base and hash(other) == hash(base) and other.canonical_hash == base.canonical_hash
    assert isomorphic(base, other)
    np.testing.assert_allclose(evaluate(other, {"x": X, "w": W}), evaluate(base, {"x": X, "w": W}))
    np.testing.assert_allclose(evaluate(base, {"x": X, "w": W}), X @ W)


def test_what_changes_the_value_changes_the_identity() -> None:
    base = _matmul()
    transposed = _matmul(w_axes=("b", "a"))  # x @ wᵀ
    renamed_open = base.rename({"b": "c"})  # the result's legs are its interface
    scaled = base.scaled(2)
    for other in (transposed, renamed_open, scaled):
        assert other != base and other.canonical_hash != base.canonical_hash
    assert not np.allclose(evaluate(transposed, {"x": X, "w": W}), evaluate(base, {"x": X, "w": W}))
    np.testing.assert_allclose(evaluate(scaled, {"x": X, "w": W}), 2 * X @ W)


def test_copy_tensors_are_symmetric_in_their_legs() -> None:
    a = Diagram((operand("x", "n", "i"), delta("i", "j")), ("n", "j"), {"n": 2, "i": 3, "j": 3})
    b = Diagram((operand("x", "n", "i"), delta("j", "i")), ("n", "j"), {"n": 2, "i": 3, "j": 3})
    assert a == b and a.canonical_hash == b.canonical_hash
    np.testing.assert_allclose(evaluate(a, {"x": X}), X)


def _ring(cycles: tuple[int, ...]) -> Diagram:
    """Trace products of one matrix ``A``: a ring of operands per cycle length (all legs summed)."""
    nodes, legs = [], []
    for c, length in enumerate(cycles):
        ring = [f"l{c}_{i}" for i in range(length)]
        legs += ring
        nodes += [operand("A", ring[i], ring[(i + 1) % length]) for i in range(length)]
    return Diagram(tuple(nodes), (), dict.fromkeys(legs, 3))


def test_the_hash_is_confirmed_by_an_exact_isomorphism_check() -> None:
    # tr(A⁶) and tr(A³)²: the Weisfeiler–Lehman hash cannot tell these regular graphs apart; equality must
    one_ring, two_rings = _ring((6,)), _ring((3, 3))
    assert diagram_hash(one_ring) == diagram_hash(two_rings)
    assert not isomorphic(one_ring, two_rings) and one_ring != two_rings
    a = RNG.standard_normal((3, 3))
    np.testing.assert_allclose(evaluate(one_ring, {"A": a}), np.trace(np.linalg.matrix_power(a, 6)))
    np.testing.assert_allclose(evaluate(two_rings, {"A": a}), np.trace(np.linalg.matrix_power(a, 3)) ** 2)
    assert _ring((3, 3)) == _ring((3, 3)).rename({"l0_0": "q", "l1_2": "r"})


def test_diagrams_key_dictionaries_by_value() -> None:
    cache = {_matmul(): "x @ w"}
    assert cache[_matmul("k", -1)] == "x @ w"
    assert _matmul(w_axes=("b", "a")) not in cache
