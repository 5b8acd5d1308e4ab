"""Solving a size for its symbol: the linear fast path gives what ``sympy.solve`` gives, and binding still checks."""

from __future__ import annotations

import pytest
import sympy
import torch

import tnderiv
from tnderiv.ir import size_symbol
from tnderiv.plan.bind import Bindings, _linear, _solve_symbols

I0, I1, N = size_symbol("I0"), size_symbol("I1"), size_symbol("N")


@pytest.mark.parametrize(
    "expr",
    [I0 - 4, 2 * I0 + 1, 2 * (I0 + 1), I0 / 2 - 3, 3 * I0, I0**2, I0**3 - 3 * I0**2 + 3 * I0, sympy.floor(I0 / 2) + 1, I0 * I1],
    ids=str,
)
@pytest.mark.parametrize("value", [1, 6, 12, 13])
def test_solved_symbol_matches_sympy_solve(expr: sympy.Expr, value: int) -> None:
    """The bindings are those of the reference (sympy.solve on every expression, floor/ceiling excluded as before)."""
    bindings = Bindings({expr: value})
    _solve_symbols(bindings)
    expected = {expr: value}
    free = expr.free_symbols
    if len(free) == 1 and not expr.has(sympy.floor, sympy.ceiling):
        symbol = next(iter(free))
        roots = [r for r in sympy.solve(sympy.Eq(expr, value), symbol) if r.is_Integer and r >= 1]
        if len(roots) == 1:
            expected[symbol] = int(roots[0])
    assert dict(bindings) == expected


def test_linear_recognizes_lines_only() -> None:
    assert _linear(I0 - 4, I0) == (1, -4)
    assert _linear(2 * (I0 + 1), I0) == (2, 2)
    assert _linear(I0 / 2 - 3, I0) == (sympy.Rational(1, 2), -3)
    for not_a_line in (I0**2, I0**3 - 3 * I0**2 + 3 * I0, sympy.floor(I0 / 2), sympy.Integer(5), I0 * I1):
        assert _linear(not_a_line, I0) is None


def test_input_size_from_output_of_unstrided_conv_matches_autograd() -> None:
    """``o = I − 4`` (kernel 5, no padding): grad_out pins I, and the input VJP matches torch.autograd (float64)."""
    conv = torch.nn.Conv2d(2, 3, 5).double()
    x = torch.randn(2, 2, 9, 11, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    (expected,) = torch.autograd.grad(conv(x), x, g)
    got = tnderiv.vjp(conv, "x", g, weight=conv.weight.detach())
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="grad_out"):
        tnderiv.vjp(conv, "x", torch.randn(2, 3, 5, 7, 1, dtype=torch.float64), weight=conv.weight.detach())
