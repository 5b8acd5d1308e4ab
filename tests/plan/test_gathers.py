"""Fused gathers: one data tensor read through several index patterns in one step (one im2col).

Oracles: the unfolded input from torch's own convolution with an identity kernel after ``F.pad`` in the
layer's padding mode (KFAC-expand ``A = Σ a aᵀ / (N·L)``), ``torch.nn.functional.conv*d`` (forward)
and ``torch.func.vmap(grad)`` (per-sample gradients) — never tnderiv itself.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from cases.torch_oracles import CONV, TORCH_PAD_MODE, ConvConfig, conv_oracle, per_sample_grads
from hypothesis import given, settings
from hypothesis import strategies as st

import tnderiv
from tnderiv.ir import Diagram, PaddingMode, PatternParams, operand, pattern
from tnderiv.plan.compiled import get_plan
from tnderiv.plan.kernels import StepInput
from tnderiv.plan.program import step_cost

gathers = importlib.import_module("tnderiv.plan.gathers")

DT = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)


def unfolded(cfg: ConvConfig, x: torch.Tensor) -> torch.Tensor:
    """``a[n, g, d, L]``: ``x`` padded by ``F.pad`` in the layer's mode, read by an identity-kernel convolution."""
    pairs = cfg.pairs()
    flat = [v for pair in reversed(pairs) for v in pair]
    xp = F.pad(x, flat) if cfg.padding_mode == "zeros" else F.pad(x, flat, mode=TORCH_PAD_MODE[cfg.padding_mode])
    taps = math.prod(cfg.kernel_size)
    eye = torch.eye(taps, dtype=x.dtype).reshape(taps, 1, *cfg.kernel_size).repeat(cfg.in_channels, 1, *(1,) * cfg.dims)
    cols = CONV[cfg.dims](xp, eye, stride=cfg.stride, dilation=cfg.dilation, groups=cfg.in_channels)  # [n, c·K, *O]
    n = x.shape[0]
    return cols.reshape(n, cfg.groups, (cfg.in_channels // cfg.groups) * taps, -1)


def kfac_expand_oracle(cfg: ConvConfig, x: torch.Tensor) -> torch.Tensor:
    a = unfolded(cfg, x)
    rows = a.permute(1, 2, 0, 3).reshape(a.shape[1], a.shape[2], -1)
    return rows @ rows.transpose(1, 2) / rows.shape[-1]


@st.composite
def grouped_configs(draw) -> ConvConfig:
    """Depthwise or grouped, non-transposed convolutions with strides, dilations and every padding mode."""
    dims = draw(st.integers(1, 3))
    depthwise = draw(st.booleans())
    groups = draw(st.integers(2, 3))
    c_in = groups if depthwise else 2 * groups
    c_out = groups * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"]))
    pads = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(dims))
    sizes = tuple(max(d * (k - 1) + 1 - a - b, max(a, b) + 1, 2) + draw(st.integers(0, 3)) for k, d, (a, b) in zip(kernel, dilation, pads))
    return ConvConfig(dims, c_in, c_out, kernel, stride, dilation, pads, groups, False, mode, batch=2, input_size=sizes)


def _kfac_half_plan(spec: tnderiv.Conv, x: torch.Tensor) -> tnderiv.Plan:
    from tnderiv.api import _network
    from tnderiv.calculus.kfac import Approx, input_factor

    _, factor = input_factor(_network(spec, {"x": tuple(x.shape)}), Approx.EXPAND)
    return get_plan(factor.half, {"x": tuple(x.shape)}, x)


@settings(max_examples=25)
@given(cfg=grouped_configs())
def test_grouped_layers_match_torch_with_fused_gathers(cfg: ConvConfig) -> None:
    spec = tnderiv.Conv(cfg.in_channels, cfg.out_channels, cfg.kernel_size, **cfg.spec_kwargs())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.x_shape, generator=gen, dtype=DT)
    w = torch.randn(cfg.weight_shape, generator=gen, dtype=DT)
    y = conv_oracle(cfg, x, w, None)
    g = torch.randn(y.shape, generator=gen, dtype=DT)
    torch.testing.assert_close(tnderiv.kfac_factors_input(spec, x, "expand"), kfac_expand_oracle(cfg, x), **TOL)
    torch.testing.assert_close(tnderiv.forward(spec, x, weight=w), y, **TOL)
    got = tnderiv.per_sample_grad(spec, x, g, params=["weight"])["weight"]
    torch.testing.assert_close(got, per_sample_grads(cfg, x, w, None, g)["weight"], **TOL)
    half = _kfac_half_plan(spec, x)
    reading = [step for step in half.steps() if any(name.startswith("Π") for name in step.inputs)]
    assert sum(step.kind == "gather" for step in reading) <= 1, str(half)  # never one gather pass per pattern


def _unfold_diagram(params: list[PatternParams], sizes: dict[str, int], out: list[str]) -> Diagram:
    dims = len(params)
    x = operand("x", "n", "c", *(f"i{j}" for j in range(dims)))
    pats = [pattern(f"k{j}", f"o{j}", f"i{j}", params[j]) for j in range(dims)]
    return Diagram((x, *pats), tuple(out), sizes)


@pytest.fixture(params=[False, True], ids=["windows", "rows"])
def copy_kind(request: pytest.FixtureRequest):
    """Both ways the last step copies: strided windows, or one index_select of rows."""
    tnderiv.clear_caches()
    gathers.ROWS = request.param
    yield request.param
    gathers.ROWS = None
    tnderiv.clear_caches()


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("order", [["n", "o0", "o1", "c", "k0", "k1"], ["c", "k0", "k1", "n", "o0", "o1"], ["k1", "o0", "n", "k0", "o1", "c"]])
@pytest.mark.parametrize("stride", [(2, 1), (1, 1)])
def test_one_gather_step_for_two_patterns_in_any_output_order(mode: str, order: list[str], stride: tuple[int, int], copy_kind: bool) -> None:
    cfg = ConvConfig(2, 3, 3, (3, 2), stride, (1, 2), ((1, 2), (2, 0)), 3, False, mode, batch=2, input_size=(7, 6))
    params = [PatternParams(s, d, left, PaddingMode(mode)) for s, d, (left, _) in zip(cfg.stride, cfg.dilation, cfg.pairs())]
    x = torch.randn(cfg.x_shape, dtype=DT)
    a = unfolded(cfg, x)  # [n, g=3, d=(1·3·2), L]
    outs = [(i + a_ + b - d * (k - 1) - 1) // s + 1 for i, (a_, b), k, s, d in zip(cfg.input_size, cfg.pairs(), cfg.kernel_size, cfg.stride, cfg.dilation)]
    sizes = {"n": 2, "c": 3, "i0": 7, "i1": 6, "k0": 3, "k1": 2, "o0": outs[0], "o1": outs[1]}
    plan = get_plan(_unfold_diagram(params, sizes, order), {"x": tuple(x.shape)}, x)
    (step,) = plan.steps()
    assert step.kind == "gather", str(plan)
    want = a.reshape(2, 3, 3, 2, *outs).permute(0, 4, 5, 1, 2, 3)  # [n, o0, o1, c, k0, k1]
    legs = ["n", "o0", "o1", "c", "k0", "k1"]
    torch.testing.assert_close(plan(x=x), want.permute(*(legs.index(leg) for leg in order)), **TOL)


def test_the_built_kernel_costs_what_the_ranking_priced() -> None:
    x = torch.randn(2, 4, 9, 8, dtype=DT)
    params = [PatternParams(2, 1, 1), PatternParams(1, 1, 1)]
    sizes = {"n": 2, "c": 4, "i0": 9, "i1": 8, "k0": 3, "k1": 3, "o0": 5, "o1": 8}
    diagram = _unfold_diagram(params, sizes, ["c", "n", "o0", "o1", "k0", "k1"])
    plan = get_plan(diagram, {"x": tuple(x.shape)}, x)
    (kernel,) = plan.term_plans[0].program.kernels
    inputs = [StepInput(n.legs, n.is_constant, n if n.is_constant else None) for n in diagram.nodes]
    assert kernel.cost == step_cost(inputs, ["c", "n", "o0", "o1", "k0", "k1"], sizes, "torch")
    assert kernel.cost.moved < sum(c.moved for c in _separate_costs(inputs, sizes))


def _separate_costs(inputs: list[StepInput], sizes: dict[str, int]) -> list:
    first = step_cost([inputs[0], inputs[1]], ["n", "c", "i1", "k0", "o0"], sizes, "torch")
    middle = StepInput(("n", "c", "i1", "k0", "o0"), False)
    return [first, step_cost([middle, inputs[2]], ["c", "n", "o0", "o1", "k0", "k1"], sizes, "torch")]


def test_switching_fused_gathers_off_plans_one_gather_per_pattern() -> None:
    cfg = ConvConfig(2, 4, 4, (3, 3), (2, 2), (1, 1), 1, 4, False, batch=2, input_size=(8, 8))
    spec = tnderiv.Conv(4, 4, 3, **cfg.spec_kwargs())
    x = torch.randn(cfg.x_shape, dtype=DT)
    fused = _kfac_half_plan(spec, x)
    tnderiv.clear_caches()
    gathers.FUSED_GATHERS = False
    try:
        separate = _kfac_half_plan(spec, x)
        torch.testing.assert_close(tnderiv.kfac_factors_input(spec, x, "expand"), kfac_expand_oracle(cfg, x), **TOL)
    finally:
        gathers.FUSED_GATHERS = True
        tnderiv.clear_caches()
    assert [s.kind for s in fused.steps()] == ["gather"]
    assert [s.kind for s in separate.steps()] == ["gather", "gather"]
    torch.testing.assert_close(fused(x=x), separate(x=x), rtol=0, atol=0)
