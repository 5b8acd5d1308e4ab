"""Leg sizes: ints or sympy expressions in positive integer symbols; evaluation names unbound symbols."""

from __future__ import annotations

import pytest
import sympy

from tnderiv.ir import as_size, evaluate, size_symbol


def test_sizes_from_ints_names_and_expressions() -> None:
    n = size_symbol("N")
    assert as_size(3) == sympy.Integer(3) and as_size("N") is n and n.is_integer and n.is_positive
    assert as_size(2 * n + 1) == 2 * n + 1 and as_size(0) == 0


@pytest.mark.parametrize(("value", "error", "match"), [(True, TypeError, "got True"), (-1, ValueError, "non-negative, got -1"), (2.5, TypeError, "got float")])
def test_bad_sizes_raise(value: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        as_size(value)  # type: ignore[arg-type]


def test_evaluate_binds_symbols_and_names_missing_ones() -> None:
    n, o = size_symbol("N"), size_symbol("O")
    assert evaluate(sympy.Integer(4), {}) == 4 and evaluate(2 * n + o, {n: 3, o: 1}) == 7
    with pytest.raises(ValueError, match=r"size 2\*N \+ O needs a value for O"):
        evaluate(2 * n + o, {n: 3})
