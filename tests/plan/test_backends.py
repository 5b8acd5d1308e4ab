"""Backends: one object per array library, looked up by name with the registry's error; torch concatenation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tnderiv.ir import UnknownNameError
from tnderiv.plan.backends import BACKEND_NAMES, CUPY, TORCH, Backend, backend_named, backend_of


def test_backends_by_name_and_by_array() -> None:
    assert BACKEND_NAMES == ("torch", "cupy")
    assert backend_named("torch") is TORCH and backend_named("cupy") is CUPY and backend_named(TORCH) is TORCH
    assert TORCH.is_torch and not CUPY.is_torch
    assert backend_of(torch.zeros(2)) is TORCH
    with pytest.raises(UnknownNameError, match=r"^unknown backend 'jax'; valid backends are \['cupy', 'torch'\]$"):
        backend_named("jax")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"name='jax': expected one of \['torch', 'cupy'\]"):
        Backend("jax")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="x must be a torch.Tensor or a cupy.ndarray, got ndarray"):
        backend_of(np.zeros(2), "x")


def test_torch_concatenation_matches_numpy() -> None:
    a, b = np.arange(6.0).reshape(2, 3), np.arange(6.0, 10.0).reshape(2, 2)
    joined = TORCH.concatenate([torch.from_numpy(a), torch.from_numpy(b)], 1)
    np.testing.assert_array_equal(joined.numpy(), np.concatenate([a, b], axis=1))
