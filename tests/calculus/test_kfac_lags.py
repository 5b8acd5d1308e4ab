"""KFAC-expand's input factor by lag correlations (plan.lags) against the unfold oracle formed here, in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import tnderiv
import tnderiv.api_kfac as api_kfac
from tnderiv.api import _network
from tnderiv.calculus.kfac import Approx, input_factor
from tnderiv.plan.keys import PlanOptions
from tnderiv.plan.lags import lag_program
from tnderiv.simplify.lags import glued_lags


def unfold_factor(x: torch.Tensor, kernel: int, dilation: int, padding: int, groups: int) -> torch.Tensor:
    """``1/(N·O) Σ_{n,o} a aᵀ`` per group from ``F.unfold`` of the zero-padded input (1-d as ``[.., I, 1]``)."""
    dims = x.dim() - 2
    if dims == 1:
        padded, size, dil = F.pad(x, (padding, padding)).unsqueeze(-1), (kernel, 1), (dilation, 1)
    else:
        padded, size, dil = F.pad(x, (padding,) * 4), (kernel, kernel), (dilation, dilation)
    a = F.unfold(padded, size, dilation=dil)  # [N, C·K.., L] with channels outermost
    n, _, positions = a.shape
    a = a.reshape(n, groups, -1, positions)
    return torch.einsum("ngdl,ngel->gde", a, a) / (n * positions)


def _conv(dims: int, channels: int, kernel: int, dilation: int, padding: int, groups: int) -> torch.nn.Module:
    cls = torch.nn.Conv1d if dims == 1 else torch.nn.Conv2d
    return cls(channels, 2 * groups, kernel, padding=padding, dilation=dilation, groups=groups, bias=False).double()


@pytest.fixture
def forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_kfac, "LAG_STRATEGY", True)


@settings(max_examples=25, deadline=None)
@given(
    dims=st.integers(1, 2),
    kernel=st.integers(1, 4),
    dilation=st.integers(1, 2),
    padding=st.integers(0, 4),
    groups=st.integers(1, 2),
    size=st.integers(1, 9),
    data=st.data(),
)
def test_lag_factor_equals_unfold(dims: int, kernel: int, dilation: int, padding: int, groups: int, size: int, data: st.DataObject) -> None:
    padding = min(padding, kernel)
    if size + 2 * padding - dilation * (kernel - 1) < 1:
        size = dilation * (kernel - 1) - 2 * padding + 1 + data.draw(st.integers(0, 2))
    channels = groups * data.draw(st.integers(1, 2))
    x = torch.randn(2, channels, *(size,) * dims, dtype=torch.float64)
    conv = _conv(dims, channels, kernel, dilation, padding, groups)
    network = _network(conv, {"x": tuple(x.shape)})
    _, factor = input_factor(network, Approx.EXPAND)
    sizes = api_kfac._input_side(network, {"x": x}, Approx.EXPAND, api_kfac.BiasMode.SEPARATE, PlanOptions(), False).plan.sizes
    program = lag_program(factor.glued, sizes, 1.0, force=True)
    assert program is not None, "stride 1 and zeros padding: the lag form must apply"
    positions = x.shape[0] * (size + 2 * padding - dilation * (kernel - 1)) ** dims
    expected = unfold_factor(x, kernel, dilation, padding, groups)
    torch.testing.assert_close(program(x) / positions, expected, rtol=1e-10, atol=1e-12)


def test_public_factor_with_lags(forced: None) -> None:
    """Through tnderiv.kfac_factors_input (scale, bias, grouping and layout as the general path)."""
    conv = torch.nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2).double()
    x = torch.randn(3, 4, 7, 6, dtype=torch.float64)
    A = tnderiv.kfac_factors_input(conv, x)
    padded = F.pad(x, (2, 2, 2, 2))
    a = F.unfold(padded, 3, dilation=2).reshape(3, 2, 18, -1)
    expected = torch.einsum("ngdl,ngel->gde", a, a) / (3 * a.shape[-1])
    torch.testing.assert_close(A, expected, rtol=1e-10, atol=1e-12)


def test_three_dims(forced: None) -> None:
    conv = torch.nn.Conv3d(2, 2, (2, 3, 1), padding=(1, 0, 1), dilation=(1, 2, 1), bias=False).double()
    x = torch.randn(2, 2, 4, 6, 3, dtype=torch.float64)
    A = tnderiv.kfac_factors_input(conv, x)
    windows = F.pad(x, (1, 1, 0, 0, 1, 1)).unfold(2, 2, 1).unfold(3, 5, 1)[..., ::2].unfold(4, 1, 1)  # [N, C, *O, *K]
    a = windows.permute(0, 2, 3, 4, 1, 5, 6, 7).reshape(-1, 2 * 6)
    torch.testing.assert_close(A[0], a.T @ a / a.shape[0], rtol=1e-10, atol=1e-12)


def _chosen(conv: torch.nn.Module, shape: tuple[int, ...]) -> bool:
    x = torch.randn(*shape)
    side = api_kfac._input_side(_network(conv, {"x": shape}), {"x": x}, Approx.EXPAND, api_kfac.BiasMode.SEPARATE, PlanOptions(), False)
    return side.plan.lags is not None


def test_cost_model_chooses_lags_for_large_inputs_and_not_for_1x1() -> None:
    assert _chosen(torch.nn.Conv2d(64, 64, 3, padding=1), (8, 64, 56, 56))
    assert not _chosen(torch.nn.Conv2d(64, 64, 1), (8, 64, 56, 56))


@pytest.mark.parametrize(
    "kwargs", [dict(stride=2), dict(padding=1, padding_mode="reflect"), dict(padding=1, padding_mode="circular")]
)
def test_not_fired_where_not_exact(kwargs: dict[str, object]) -> None:
    conv = torch.nn.Conv2d(3, 4, 3, **kwargs)
    _, factor = input_factor(_network(conv, {"x": (2, 3, 9, 9)}), Approx.EXPAND)
    assert glued_lags(factor.glued) is None


def test_not_fired_for_reduce_or_kept_half() -> None:
    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    x = torch.randn(2, 8, 40, 40)
    network = _network(conv, {"x": tuple(x.shape)})
    for approx, keep in ((Approx.REDUCE, False), (Approx.EXPAND, True)):
        side = api_kfac._input_side(network, {"x": x}, approx, api_kfac.BiasMode.SEPARATE, PlanOptions(), keep)
        assert side.plan.lags is None


def test_asymmetric_same_padding(forced: None) -> None:
    """``padding='same'`` with an even kernel pads 1 left, 2 right: the lag form reads the sizes, not a symmetric P."""
    conv = torch.nn.Conv2d(3, 4, 4, padding="same", bias=False).double()
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    A = tnderiv.kfac_factors_input(conv, x)
    a = F.unfold(F.pad(x, (1, 2, 1, 2)), 4)
    expected = a.transpose(1, 2).reshape(-1, 48).T @ a.transpose(1, 2).reshape(-1, 48) / (2 * 9 * 8)
    torch.testing.assert_close(A[0], expected, rtol=1e-10, atol=1e-12)
