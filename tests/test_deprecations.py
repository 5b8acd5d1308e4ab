"""Old public spellings keep working for a release, with a DeprecationWarning that names the new one."""

from __future__ import annotations

import pytest
import torch

import tnderiv
from tnderiv import api_kfac


def _conv_data() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    conv = torch.nn.Conv2d(2, 3, 3, padding=1).double()
    return conv, torch.randn(4, 2, 5, 5, dtype=torch.float64), torch.randn(4, 3, 5, 5, dtype=torch.float64)


def test_kfac_bias_string_is_bias_mode() -> None:
    conv, x, g = _conv_data()
    new = tnderiv.kfac(conv, x, g, bias_mode="append")
    with pytest.warns(DeprecationWarning, match="bias_mode='append'"):
        old = tnderiv.kfac(conv, x, g, bias="append")
    torch.testing.assert_close(old.to_dense(), new.to_dense())
    with pytest.warns(DeprecationWarning, match="bias_mode"):
        A = tnderiv.kfac_factors_input(conv, x, bias="append")
    torch.testing.assert_close(A, new.A)
    with pytest.warns(DeprecationWarning, match="KFAC.bias_mode"):
        assert new.bias == "append"
    with pytest.raises(TypeError, match="bias_mode="):
        tnderiv.kfac(conv, x, g, bias=conv.bias)


def test_approx_is_positional_or_keyword_everywhere() -> None:
    conv, x, g = _conv_data()
    a = tnderiv.kfac(conv, x, g, "reduce")
    b = tnderiv.kfac(conv, x, g, approx="reduce")
    torch.testing.assert_close(a.A, b.A)
    torch.testing.assert_close(tnderiv.kfac_factors_input(conv, x, "reduce"), tnderiv.kfac_factors_input(conv, x, approx="reduce"))


def test_clear_kfac_cache_clears_everything() -> None:
    conv, x, g = _conv_data()
    tnderiv.kfac(conv, x, g)
    with pytest.warns(DeprecationWarning, match="clear_caches"):
        api_kfac.clear_kfac_cache()
    assert tnderiv.cache_info()["calls"].size == 0 and tnderiv.cache_info()["plans"].size == 0


def test_ggn_param_is_params() -> None:
    conv, x, _ = _conv_data()
    s = torch.randn(2, 4, 3, 5, 5, dtype=torch.float64)
    new = tnderiv.ggn(conv, x, s, params="bias", kind="diag")
    with pytest.warns(DeprecationWarning, match="params="):
        old = tnderiv.ggn(conv, x, s, param="bias", kind="diag")
    torch.testing.assert_close(old, new)
    both = tnderiv.ggn(conv, x, s, params=["weight", "bias"], kind="diag")
    assert set(both) == {"weight", "bias"}
    torch.testing.assert_close(both["bias"], new)
