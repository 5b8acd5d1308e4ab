"""Sums of diagrams: one set of open legs, equality as multisets of terms, the empty sum is ``None``."""

from __future__ import annotations

import numpy as np
import pytest
from dense_ir import evaluate

from tnderiv.ir import Diagram, DiagramSum, make_sum, operand, terms_of

X, W, B = np.arange(6.0).reshape(2, 3), np.arange(12.0).reshape(3, 4), np.arange(4.0)
LINEAR = Diagram((operand("x", "n", "a"), operand("w", "a", "o")), ("n", "o"), {"n": 2, "a": 3, "o": 4})
BIAS = Diagram((operand("b", "o"), operand("x", "n", "a")), ("n", "o"), {"n": 2, "a": 3, "o": 4})  # b·Σ_a x: a second term


def test_a_sum_evaluates_term_by_term() -> None:
    s = DiagramSum((LINEAR, BIAS))
    total = sum(evaluate(t, {"x": X, "w": W, "b": B}) for t in terms_of(s))
    np.testing.assert_allclose(total, X @ W + np.outer(X.sum(axis=1), B))
    assert s.open_legs == ("n", "o") and s.operand_names == ("x", "w", "b") and dict(s.sizes) == {"n": 2, "o": 4}
    assert s.to_einsum() == f"{LINEAR.to_einsum()} + {BIAS.to_einsum()}"


def test_sum_validation() -> None:
    with pytest.raises(ValueError, match="a sum needs at least one term"):
        DiagramSum(())
    other = Diagram((operand("x", "n", "a"),), ("n",), {"n": 2, "a": 3})
    with pytest.raises(ValueError, match=r"terms of a sum must share open legs: \('n', 'o'\) vs \('n',\)"):
        DiagramSum((LINEAR, other))


def test_equality_ignores_term_order_and_summed_names_but_counts_terms() -> None:
    s = DiagramSum((LINEAR, BIAS))
    assert s == DiagramSum((BIAS.rename({"a": "k"}), LINEAR)) and hash(s) == hash(DiagramSum((BIAS, LINEAR)))
    assert s != DiagramSum((LINEAR, LINEAR)) and s != DiagramSum((LINEAR, BIAS, BIAS))
    assert DiagramSum((LINEAR, LINEAR, BIAS)) != DiagramSum((LINEAR, BIAS, BIAS))


def test_make_sum_and_terms_of() -> None:
    assert make_sum([]) is None and make_sum([LINEAR]) is LINEAR
    assert make_sum([LINEAR, BIAS]) == DiagramSum((LINEAR, BIAS))
    assert terms_of(LINEAR) == (LINEAR,) and terms_of(DiagramSum((LINEAR, BIAS))) == (LINEAR, BIAS)
