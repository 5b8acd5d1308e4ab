"""The module-type registry behind ``spec_of``: a type registered twice is rejected unless replaced."""

from __future__ import annotations

import pytest
import torch

import tnderiv
from tnderiv.ir import DuplicateNameError
from tnderiv.layers import register_module, spec_of
from tnderiv.layers.base import _FROM_MODULE


def test_a_module_type_registered_twice_is_rejected() -> None:
    original = _FROM_MODULE[torch.nn.Linear]
    with pytest.raises(DuplicateNameError, match=r"^module type 'Linear' is already registered; pass replace=True"):
        register_module(torch.nn.Linear)(original)
    with pytest.raises(DuplicateNameError, match="'Conv2d'"):  # nothing is registered when one type is taken
        register_module(torch.nn.Bilinear, torch.nn.Conv2d)(original)
    assert torch.nn.Bilinear not in _FROM_MODULE
    with pytest.raises(TypeError, match=r"register_module\('Linear'\): expected module classes"):
        register_module("Linear")  # type: ignore[arg-type]


def test_replacing_a_converter_forgets_specs_read_by_the_old_one() -> None:
    original = _FROM_MODULE[torch.nn.Linear]
    layer = torch.nn.Linear(3, 2)
    assert spec_of(layer) == tnderiv.Linear(3, 2)
    try:
        register_module(torch.nn.Linear, replace=True)(lambda module: tnderiv.Linear(3, 2, bias=False))
        assert spec_of(layer) == tnderiv.Linear(3, 2, bias=False)
    finally:
        register_module(torch.nn.Linear, replace=True)(original)
    assert spec_of(layer) == tnderiv.Linear(3, 2)


def test_an_unsupported_type_names_the_supported_ones() -> None:
    with pytest.raises(TypeError, match=r"unsupported layer of type Bilinear; supported modules: .*Linear"):
        spec_of(torch.nn.Bilinear(2, 2, 2))
