"""Bad input to KFAC raises naming the argument, before any work."""

from __future__ import annotations

import pytest
import torch
from kfac_helpers import DT

import tnderiv

# ----- bad input --------------------------------------------------------------------------------------------


def test_bad_arguments_raise_naming_them() -> None:
    spec = tnderiv.Conv(2, 4, 3, padding=1)
    x = torch.randn(2, 2, 5, 5, dtype=DT)
    g = torch.randn(2, 4, 5, 5, dtype=DT)
    with pytest.raises(ValueError, match="approx='expanded'"):
        tnderiv.kfac(spec, x, g, approx="expanded")
    with pytest.raises(ValueError, match="bias_mode='joint'"):
        tnderiv.kfac(spec, x, g, bias_mode="joint")
    with pytest.raises(ValueError, match="loss_average='mean'"):
        tnderiv.kfac(spec, x, g, loss_average="mean")
    with pytest.raises(ValueError, match=r"grad_out has shape \(2, 4, 5\)"):
        tnderiv.kfac(spec, x, g[..., 0])
    with pytest.raises(ValueError, match="leg n has size 2 from x but 3 from grad_out"):
        tnderiv.kfac(spec, x, torch.randn(3, 4, 5, 5, dtype=DT))
    with pytest.raises(ValueError, match="o1 has size 5 from x but 4 from grad_out"):
        tnderiv.kfac(spec, x, torch.randn(2, 4, 5, 4, dtype=DT))
    with pytest.raises(TypeError, match="dtype"):
        tnderiv.kfac(spec, x, g.float())
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        tnderiv.kfac(spec, x.numpy(), g)
    with pytest.raises(TypeError, match="unreduced=1"):
        tnderiv.kfac_factors_input(spec, x, unreduced=1)
    with pytest.raises(ValueError, match="hessian_sqrt=True or False"):
        tnderiv.kfac_factors_output(tnderiv.Linear(3, 4), torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match="damping=-1"):
        tnderiv.kfac(spec, x, g).inverse(-1)
    with pytest.raises(ValueError, match=r"expected a flat vector \[76\]"):
        tnderiv.kfac(spec, x, g).matvec(torch.randn(3))


def test_layer_coupling_the_batch_is_rejected() -> None:
    with pytest.raises(ValueError, match="couples the samples"):
        tnderiv.kfac_factors_input(tnderiv.BatchNorm(3), torch.randn(4, 3, 2, dtype=DT))
