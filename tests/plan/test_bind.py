"""Binding size symbols from the user's shapes: values, pinned output sizes, and errors that name the axis."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tnderiv
from tnderiv.ir import size_symbol
from tnderiv.plan.bind import bind_sizes, leg_sizes

STRIDED = tnderiv.Conv(2, 4, 3, stride=2, padding=1, groups=2)


def test_symbols_bound_from_shapes() -> None:
    d = tnderiv.diagram(STRIDED, "forward")
    bindings = bind_sizes(d, {"x": (3, 2, 7, 5), "weight": (4, 1, 3, 3), "bias": (4,)})
    assert bindings.symbols() == {size_symbol("N"): 3, size_symbol("I0"): 7, size_symbol("I1"): 5}
    sizes = leg_sizes(d, bindings)
    for term_sizes in sizes:
        assert term_sizes["o0"] == 4 and term_sizes["o1"] == 3  # floor((7 + 2 - 3) / 2) + 1, floor((5 + 2 - 3) / 2) + 1
        assert term_sizes["g"] == 2 and term_sizes["c_out"] == 2


@pytest.mark.parametrize(
    "spec, oracle",
    [
        (STRIDED, lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, groups=2)),
        (
            tnderiv.Conv(2, 3, 3, stride=2, padding=1, transposed=True, output_padding=1),
            lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1),
        ),
        (tnderiv.Conv(2, 3, (2, 3), dims=2, stride=3, padding_mode="reflect", padding=1), None),
    ],
    ids=["strided", "transposed", "reflect-stride3"],
)
def test_bias_vjp_needs_only_grad_out(spec: tnderiv.Conv, oracle) -> None:
    """o0 depends on I0, yet grad_out alone pins every size the bias VJP uses."""
    x = torch.randn(2, spec.in_channels, 5, 6, dtype=torch.float64)
    shape = (
        (spec.in_channels, spec.out_channels // spec.groups)
        if spec.transposed
        else (spec.out_channels, spec.in_channels // spec.groups)
    )
    w = torch.randn(*shape, *spec.kernel_size, dtype=torch.float64)
    b = torch.randn(spec.out_channels, dtype=torch.float64, requires_grad=True)
    if oracle is None:
        y = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), w, b, stride=3)
    else:
        y = oracle(x, w, b)
    g = torch.randn_like(y)
    (expected,) = torch.autograd.grad(y, b, g)
    torch.testing.assert_close(tnderiv.vjp(spec, "bias", g), expected, rtol=1e-12, atol=1e-12)
    psg = tnderiv.per_sample_grad(spec, x, g, weight=w)
    torch.testing.assert_close(psg["bias"], g.sum(dim=(2, 3)), rtol=1e-12, atol=1e-12)


def test_input_size_is_ambiguous_without_x_shape() -> None:
    g = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    w = torch.randn(4, 1, 3, 3, dtype=torch.float64)
    # with stride 2, input sizes 5 and 6 both give 3 outputs
    with pytest.raises(ValueError, match="I0|i0"):
        tnderiv.vjp(STRIDED, "x", g, weight=w)
    for size in (5, 6):
        gx = tnderiv.vjp(STRIDED, "x", g, weight=w, x_shape=(2, 2, size, size))
        x = torch.zeros(2, 2, size, size, dtype=torch.float64, requires_grad=True)
        (expected,) = torch.autograd.grad(F.conv2d(x, w, stride=2, padding=1, groups=2), x, g)
        torch.testing.assert_close(gx, expected, rtol=1e-12, atol=1e-12)


def test_mismatched_axis_is_named() -> None:
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    g = torch.randn(2, 4, 4, 4, dtype=torch.float64)  # 6 → 3 outputs, not 4
    with pytest.raises(ValueError, match=r"grad_out has shape \(2, 4, 4, 4\).*o0.*expected 3"):
        tnderiv.vjp(STRIDED, "weight", g, x=x)


def test_wrong_number_of_axes_is_named() -> None:
    d = tnderiv.diagram(STRIDED, "forward")
    with pytest.raises(ValueError, match=r"weight has shape \(4, 1, 3\) with 3 axes; expected 4 axes"):
        bind_sizes(d, {"x": (2, 2, 6, 6), "weight": (4, 1, 3)})


def test_empty_axis_and_unknown_operand() -> None:
    d = tnderiv.diagram(STRIDED, "forward")
    with pytest.raises(ValueError, match="empty axis"):
        bind_sizes(d, {"x": (0, 2, 6, 6), "weight": (4, 1, 3, 3)})
    with pytest.raises(ValueError, match="'tangent'"):
        bind_sizes(d, {"x": (2, 2, 6, 6), "tangent": (4, 1, 3, 3)})


def test_output_size_no_input_can_give() -> None:
    """A transposed conv with stride 2, kernel 3, no padding has odd outputs only: 6 is impossible."""
    spec = tnderiv.Conv(2, 3, 3, stride=2, transposed=True)
    g = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    with pytest.raises(ValueError, match="o0|6"):
        tnderiv.vjp(spec, "bias", g)
