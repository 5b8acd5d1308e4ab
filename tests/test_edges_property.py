"""Property: a Conv module mutated between calls, and plans reused with random shapes, always agree with torch.

hypothesis draws a sequence of hyperparameter changes (stride, padding, dilation, padding mode, groups,
bias) applied to one ``nn.Conv2d`` between calls, and random input shapes. After every change the
public functions must match the module's own forward and autograd (or raise where torch raises); a
``Plan`` made for one shape must match torch on that shape and refuse every other shape by name.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tnderiv

F64 = torch.float64
MODES = ("zeros", "reflect", "replicate", "circular")


def _mutate(conv: nn.Conv2d, data: st.DataObject) -> None:
    """One change of settings, as a user would make it (torch's own derived fields kept consistent)."""
    what = data.draw(st.sampled_from(["stride", "padding", "dilation", "padding_mode", "groups", "bias"]))
    if what == "stride":
        conv.stride = data.draw(st.tuples(st.integers(1, 2), st.integers(1, 2)))
    elif what == "padding":
        conv.padding = data.draw(st.tuples(st.integers(0, 2), st.integers(0, 2)))
    elif what == "dilation":
        conv.dilation = data.draw(st.tuples(st.integers(1, 2), st.integers(1, 2)))
    elif what == "padding_mode":
        conv.padding_mode = data.draw(st.sampled_from(MODES))
    elif what == "groups":
        groups = data.draw(st.sampled_from([1, 2]))
        conv.groups = groups
        conv.weight = nn.Parameter(torch.randn(4, 2 // groups, *conv.kernel_size, dtype=F64))
    else:
        conv.bias = None if conv.bias is not None else nn.Parameter(torch.randn(4, dtype=F64))
    # torch pads non-zero modes with this field, computed from padding at construction
    conv._reversed_padding_repeated_twice = tuple(p for p in reversed(conv.padding) for _ in range(2))


def _torch(conv: nn.Conv2d, x: torch.Tensor, g_seed: int) -> tuple[torch.Tensor, ...] | None:
    """The module's output, and the input and weight gradients for a random grad_out (None where torch refuses)."""
    x = x.clone().requires_grad_(True)
    try:
        y = conv(x)
    except RuntimeError:
        return None
    g = torch.randn(y.shape, dtype=F64, generator=torch.Generator().manual_seed(g_seed))
    gx, gw = torch.autograd.grad(y, (x, conv.weight), g)
    return y.detach(), g, gx, gw


@settings(max_examples=12)
@given(data=st.data())
def test_mutated_conv_module_always_matches_torch(data):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 4, 3).double()
    for step in range(4):
        if step:
            _mutate(conv, data)
        shape = (data.draw(st.integers(1, 3)), 2, data.draw(st.integers(3, 7)), data.draw(st.integers(3, 7)))
        x = torch.randn(shape, dtype=F64)
        expected = _torch(conv, x, step)
        if expected is None:
            with pytest.raises(ValueError):
                tnderiv.forward(conv, x)
            continue
        y, g, gx, gw = expected
        torch.testing.assert_close(tnderiv.forward(conv, x).detach(), y)
        torch.testing.assert_close(tnderiv.vjp(conv, "x", g, x_shape=x.shape).detach(), gx)
        torch.testing.assert_close(tnderiv.vjp(conv, "weight", g, x=x), gw)


@settings(max_examples=10)
@given(data=st.data())
def test_reused_plan_runs_its_shape_and_refuses_others(data):
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 4, 3).double()
    _mutate(conv, data)
    spec = tnderiv.Conv.from_module(conv)
    size = data.draw(st.integers(3, 7))
    planned = (2, 2, size, size)
    x = torch.randn(planned, dtype=F64)
    if _torch(conv, x, 0) is None:
        return
    shapes = {"x": planned, "weight": tuple(conv.weight.shape)}
    operands = {"weight": conv.weight.detach()}
    if conv.bias is not None:
        shapes["bias"], operands["bias"] = (4,), conv.bias.detach()
    plan = tnderiv.plan(spec, shapes, quantity="forward", dtype=F64)
    for _ in range(3):
        shape = (data.draw(st.integers(1, 3)), 2, data.draw(st.integers(3, 7)), data.draw(st.integers(3, 7)))
        x = torch.randn(shape, dtype=F64)
        if shape == planned:
            with torch.no_grad():
                torch.testing.assert_close(plan(x=x, **operands), conv(x))
        else:
            with pytest.raises(ValueError, match="made for x of shape"):
                plan(x=x, **operands)
