"""Size decisions: the shortcuts for numbers and identical expressions agree with the symbolic reference."""

from __future__ import annotations

import itertools

import sympy

from tnderiv.ir import size_symbol
from tnderiv.simplify.sizes import known_int, provably_equal, provably_le

N, I0 = size_symbol("N"), size_symbol("I0")
VALUES = [0, 1, 3, sympy.Integer(3), sympy.Integer(4), sympy.Rational(3, 1), sympy.Rational(7, 2), N, 2 * N, N + N, I0 - 1, sympy.floor((I0 - 1) / 2) + 1]


def _equal_reference(a: object, b: object) -> bool:
    return sympy.expand(sympy.sympify(a) - sympy.sympify(b)) == 0


def _le_reference(a: object, b: object) -> bool:
    return bool(sympy.expand(sympy.sympify(b) - sympy.sympify(a)).is_nonnegative)


def test_equal_and_le_match_the_symbolic_reference() -> None:
    for a, b in itertools.product(VALUES, repeat=2):
        assert provably_equal(a, b) == _equal_reference(a, b), (a, b)
        assert provably_le(a, b) == _le_reference(a, b), (a, b)


def test_known_int() -> None:
    assert known_int(3) == 3 and known_int(sympy.Integer(5)) == 5 and isinstance(known_int(sympy.Integer(5)), int)
    assert known_int(N) is None and known_int(sympy.Rational(7, 2)) is None
