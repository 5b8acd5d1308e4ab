"""KFAC factors against brute-force unfold definitions (``cases/kfac_cases.py``, computed without tnderiv):
the unfold oracle itself, the core sweep, unreduced halves, weight sharing, float32 and modules."""

from __future__ import annotations

import math

import pytest
import torch
from cases import kfac_cases as ref
from cases.conv_cases import CONV_CASES, conv_configs
from cases.torch_oracles import ConvConfig
from hypothesis import given, settings
from hypothesis import strategies as st
from kfac_helpers import APPROX, DT, LOSS_AVERAGES, _close, _data, _spec

import tnderiv

# ----- the unfold oracle itself -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONV_CASES))
def test_unfold_oracle_reproduces_the_convolution(name: str) -> None:
    """Σ_d a[n, o, g, d] W[g, c_out, d] is torch's convolution: the oracle the factors rest on is right."""
    cfg = CONV_CASES[name]
    x, w, y = _data(cfg, 0)
    a = ref.unfold(cfg, x)
    out = torch.einsum("n...gd,gcd->ng...c", a, ref.weight_matrix(cfg, w))
    out = out.movedim(-1, 2).reshape(y.shape[0], -1, *y.shape[2:])  # [N, (g c_out), *O]
    _close(out, y)


# ----- factors vs the unfold definitions: the core sweep ---------------------------------------------


def _check_conv(cfg: ConvConfig, seed: int, approx: str, bias: str, loss_average: str | None, sqrt: bool) -> None:
    x, _, y = _data(cfg, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    grad = torch.randn((3, *y.shape) if sqrt else y.shape, generator=gen, dtype=DT)
    k = tnderiv.kfac(_spec(cfg), x, grad, approx=approx, bias_mode=bias, loss_average=loss_average)
    a = ref.unfold(cfg, x)
    append = bias == "append" and cfg.bias
    _close(k.A, ref.input_factor(a, approx, append))
    rows = ref.conv_output_rows(grad, cfg.groups, sqrt)
    G = ref.output_factor(rows, approx, ref.correction(loss_average, x.shape[0], math.prod(y.shape[2:]), sqrt))
    _close(k.G, G)
    if cfg.bias and bias == "separate":
        _close(k.A_bias, torch.ones(cfg.groups, 1, 1, dtype=DT))
        _close(k.G_bias, G)
    else:
        assert k.A_bias is None and k.G_bias is None


@settings(max_examples=30, deadline=None)
@given(
    cfg=conv_configs(),
    seed=st.integers(0, 2**16),
    approx=st.sampled_from(APPROX),
    bias=st.sampled_from(("separate", "append")),
    loss_average=st.sampled_from(LOSS_AVERAGES),
    sqrt=st.booleans(),
)
def test_conv_factors_match_unfold_definitions(cfg, seed, approx, bias, loss_average, sqrt) -> None:
    _check_conv(cfg, seed, approx, bias, loss_average, sqrt)


@pytest.mark.parametrize("approx", APPROX)
@pytest.mark.parametrize("name", sorted(CONV_CASES))
def test_conv_factors_fixed_cases(name: str, approx: str) -> None:
    _check_conv(CONV_CASES[name], 3, approx, "append", "batch", sqrt=False)


@pytest.mark.parametrize("approx", APPROX)
@pytest.mark.parametrize("name", ["2d-depthwise", "2d-T-pad", "3d-reflect", "2d-same-circular"])
def test_unreduced_halves(name: str, approx: str) -> None:
    """``a`` is the unfolded input (reduce: averaged over positions); ``g`` the output rows (reduce: summed)."""
    cfg = CONV_CASES[name]
    x, _, y = _data(cfg, 1)
    grad = torch.randn(2, *y.shape, dtype=DT)
    A, a = tnderiv.kfac_factors_input(_spec(cfg), x, approx, unreduced=True)
    want = ref.unfold(cfg, x)
    if approx == "reduce":
        want = want.reshape(x.shape[0], -1, *want.shape[-2:]).mean(1)
    _close(a, want)
    _close(A, ref.input_factor(ref.unfold(cfg, x), approx))
    G, g = tnderiv.kfac_factors_output(_spec(cfg), grad, approx, unreduced=True)
    rows = ref.conv_output_rows(grad, cfg.groups, sqrt=True)  # [M, N, S, G, c_out]
    if approx == "reduce":
        _close(g, rows.sum(2))
    else:
        _close(g, rows.reshape(*grad.shape[:2], *y.shape[2:], *rows.shape[-2:]))
    _close(G, ref.output_factor(rows, approx, 1.0))


@pytest.mark.parametrize("shared", [0, 1, 2])
@pytest.mark.parametrize("approx", APPROX)
@pytest.mark.parametrize("loss_average", LOSS_AVERAGES)
def test_dense_factors_with_weight_sharing(shared: int, approx: str, loss_average: str | None) -> None:
    gen = torch.Generator().manual_seed(shared)
    lead = (3, *(2 + j for j in range(shared)))
    x = torch.randn(*lead, 4, generator=gen, dtype=DT)
    grad = torch.randn(*lead, 5, generator=gen, dtype=DT)
    sqrt = torch.randn(2, *lead, 5, generator=gen, dtype=DT)
    spec = tnderiv.Linear(4, 5)
    k = tnderiv.kfac(spec, x, grad, approx=approx, bias_mode="append", loss_average=loss_average)
    a = x.reshape(*lead, 1, 4)
    _close(k.A, ref.input_factor(a, approx, append=True))
    positions = math.prod(lead[1:])
    _close(k.G, ref.output_factor(ref.dense_output_rows(grad, False), approx, ref.correction(loss_average, 3, positions, False)))
    G = tnderiv.kfac_factors_output(spec, sqrt, approx, hessian_sqrt=True)
    _close(G, ref.output_factor(ref.dense_output_rows(sqrt, True), approx, 1.0))


def test_float32_and_modules() -> None:
    """A torch module works like its spec; float32 agrees with the float64 reference to float32 accuracy."""
    module = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, padding_mode="reflect")
    cfg = ConvConfig(2, 4, 6, (3, 3), (2, 2), (1, 1), 1, groups=2, padding_mode="reflect", batch=3, input_size=(7, 6))
    x, _, y = _data(cfg, 5)
    grad = torch.randn(y.shape, dtype=DT)
    k = tnderiv.kfac(module, x.float(), grad.float(), approx="reduce")
    _close(k.A.double(), ref.input_factor(ref.unfold(cfg, x), "reduce"), rtol=1e-5, atol=1e-5)
    assert k.A.dtype == torch.float32
