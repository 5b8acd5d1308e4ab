"""torch.nn convolution modules: ``Conv.from_module`` round trips and modules passed where specs go."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tnderiv

MODULES = {
    "conv1d": lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2),
    "conv1d-circular": lambda: nn.Conv1d(2, 3, 3, padding=2, padding_mode="circular", bias=False),
    "conv2d": lambda: nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
    "conv2d-same-reflect": lambda: nn.Conv2d(2, 2, 4, padding="same", padding_mode="reflect"),
    "conv2d-valid-replicate": lambda: nn.Conv2d(2, 4, 3, padding="valid", padding_mode="replicate", groups=2),
    "conv3d": lambda: nn.Conv3d(2, 2, (1, 2, 2), stride=(1, 2, 1), padding=(0, 1, 1)),
    "convT1d": lambda: nn.ConvTranspose1d(4, 2, 3, stride=2, padding=1, output_padding=1, groups=2),
    "convT2d": lambda: nn.ConvTranspose2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), bias=False),
    "convT3d": lambda: nn.ConvTranspose3d(2, 2, 2, stride=2, output_padding=(1, 0, 1)),
}
SPATIAL = {1: (7,), 2: (6, 5), 3: (3, 4, 4)}


def make(key: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    module = MODULES[key]().double()
    dims = len(module.kernel_size)
    x = torch.randn(2, module.in_channels, *SPATIAL[dims], dtype=torch.float64)
    return module, x


@pytest.mark.parametrize("key", list(MODULES))
def test_from_module_round_trip(key: str) -> None:
    module, x = make(key)
    spec = tnderiv.Conv.from_module(module)
    assert isinstance(spec, tnderiv.Conv)
    assert (spec.in_channels, spec.out_channels, spec.groups) == (
        module.in_channels,
        module.out_channels,
        module.groups,
    )
    assert spec.dims == len(module.kernel_size)
    assert spec.kernel_size == tuple(module.kernel_size)
    assert spec.stride == tuple(module.stride)
    assert spec.dilation == tuple(module.dilation)
    assert spec.bias == (module.bias is not None)
    assert spec.transposed == module.transposed
    assert spec.padding_mode.value == module.padding_mode
    assert spec.output_padding == tuple(module.output_padding)
    if not isinstance(module.padding, str):
        assert spec.padding == tuple((p, p) for p in module.padding)
    # the spec rebuilt from its own fields is the same layer
    rebuilt = tnderiv.Conv(
        spec.in_channels,
        spec.out_channels,
        spec.kernel_size,
        dims=spec.dims,
        stride=spec.stride,
        padding=spec.padding,
        dilation=spec.dilation,
        groups=spec.groups,
        bias=spec.bias,
        padding_mode=spec.padding_mode.value,
        transposed=spec.transposed,
        output_padding=spec.output_padding,
    )
    assert rebuilt == spec
    bias = None if module.bias is None else module.bias.detach()
    with torch.no_grad():
        expected = module(x)
    torch.testing.assert_close(tnderiv.forward(spec, x, module.weight.detach(), bias), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("key", list(MODULES))
def test_module_uses_its_own_parameters(key: str) -> None:
    module, x = make(key)
    x = x.requires_grad_(True)
    y = module(x)
    g = torch.randn_like(y)
    y.backward(g)
    tol = dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(tnderiv.forward(module, x.detach()), y.detach(), **tol)
    torch.testing.assert_close(tnderiv.vjp(module, "weight", g, x=x.detach()), module.weight.grad, **tol)
    torch.testing.assert_close(tnderiv.vjp(module, "x", g, x_shape=x.shape), x.grad, **tol)
    if module.bias is not None:
        torch.testing.assert_close(tnderiv.vjp(module, "bias", g), module.bias.grad, **tol)
    psg = tnderiv.per_sample_grad(module, x.detach(), g)
    assert set(psg) == ({"weight"} if module.bias is None else {"weight", "bias"})
    torch.testing.assert_close(psg["weight"].sum(0), module.weight.grad, **tol)
    tangent = torch.randn_like(x)
    _, expected_jvp = torch.func.jvp(
        lambda inp: torch.func.functional_call(module, dict(module.named_parameters()), (inp,)),
        (x.detach(),),
        (tangent,),
    )
    torch.testing.assert_close(tnderiv.jvp(module, "x", tangent), expected_jvp.detach(), **tol)


def test_explicit_weight_overrides_the_modules() -> None:
    module, x = make("conv2d")
    other = torch.randn_like(module.weight)
    with torch.no_grad():
        expected = nn.functional.conv2d(
            x, other, module.bias, stride=module.stride, padding=module.padding, dilation=module.dilation
        )
    torch.testing.assert_close(tnderiv.forward(module, x, other), expected, rtol=1e-10, atol=1e-10)


def test_module_parameters_are_read_at_call_time() -> None:
    """A module trained between calls is seen with its new weights (parameters are never cached)."""
    module, x = make("conv1d")
    first = tnderiv.forward(module, x)
    with torch.no_grad():
        module.weight.mul_(2.0)
        expected = module(x)
    second = tnderiv.forward(module, x)
    torch.testing.assert_close(second, expected, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(first, second)


def test_equivalent_spellings_are_one_spec() -> None:
    """Hyperparameters are normalized, so equal layers share derivations and cached plans."""
    a = tnderiv.Conv(2, 2, 3, padding=1)
    assert a == tnderiv.Conv(2, 2, (3, 3), padding=((1, 1), (1, 1))) == tnderiv.Conv(2, 2, [3, 3], padding=[1, 1])
    assert hash(a) == hash(tnderiv.Conv(2, 2, (3, 3), padding=(1, 1), stride=(1, 1), dilation=1))
    assert tnderiv.Conv(2, 2, 3, padding="valid") == tnderiv.Conv(2, 2, 3, padding=0)
    assert tnderiv.Conv(2, 2, 3, padding="same") == tnderiv.Conv(2, 2, 3, padding=1)
    assert tnderiv.Conv(2, 2, 3) != tnderiv.Conv(2, 2, 3, padding_mode="reflect")
