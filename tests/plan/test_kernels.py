"""Structure-aware kernels: steps with index patterns run as torch convolutions or gathers, never as dense GEMMs with a 0/1 matrix.

Oracles: torch.nn.functional / torch.autograd / torch.func (tests/cases/torch_oracles.py) and dense
numpy contractions whose patterns are built by loops (tests/simplify/dense_oracle.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cases.torch_oracles import ConvConfig, conv_oracle, output_grads, per_sample_grads
from hypothesis import given, settings
from hypothesis import strategies as st

import tnderiv
from tnderiv.ir import Diagram, PaddingMode, PatternParams, delta, operand, pattern
from tnderiv.plan.compiled import get_plan

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "simplify"))
from dense_oracle import contract  # noqa: E402

DT = torch.float64
TOL = dict(rtol=1e-9, atol=1e-9)
STRUCTURED = {"conv", "conv_transpose", "conv_weight", "gather", "scatter", "relabel", "folded"}


def assert_patterns_structured(plan: tnderiv.Plan) -> None:
    """No step multiplies data with a dense 0/1 pattern."""
    for step in plan.steps():
        if any(name.startswith("Π") for name in step.inputs):
            assert step.kind in STRUCTURED, f"{step.equation} ran as {step.kind}"


@st.composite
def conv_configs(draw) -> ConvConfig:
    dims = draw(st.integers(1, 3))
    transposed = draw(st.booleans())
    groups = draw(st.sampled_from([1, 2]))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    mode = "zeros" if transposed else draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"]))
    pads = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(dims))
    if transposed:
        pads = tuple((a, a) for a, _ in pads)
        sizes = tuple(draw(st.integers(2, 4)) for _ in range(dims))
        out_pad = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    else:
        sizes = tuple(max(d * (k - 1) + 1 - a - b, max(a, b) + 1, 2) + draw(st.integers(0, 3)) for k, d, (a, b) in zip(kernel, dilation, pads))
        out_pad = ()
    return ConvConfig(dims, c_in, c_out, kernel, stride, dilation, pads, groups, False, mode, transposed, out_pad, 2, sizes)


def _tensors(cfg: ConvConfig, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(cfg.x_shape, generator=gen, dtype=DT)
    w = torch.randn(cfg.weight_shape, generator=gen, dtype=DT)
    y = conv_oracle(cfg, x, w, None)
    return x, w, torch.randn(y.shape, generator=gen, dtype=DT)


@settings(max_examples=30)
@given(cfg=conv_configs())
def test_convolution_quantities_run_structured_and_match_torch(cfg: ConvConfig) -> None:
    if cfg.transposed and any(s < 1 for s in _transposed_sizes(cfg)):
        return  # padding larger than the transposed output: torch rejects it too
    spec = tnderiv.Conv(cfg.in_channels, cfg.out_channels, cfg.kernel_size, **cfg.spec_kwargs())
    x, w, g = _tensors(cfg)
    want_x, want_w = output_grads(lambda a, b: conv_oracle(cfg, a, b, None), (x, w), g)
    checks = {
        "forward": ({"x": x, "weight": w}, conv_oracle(cfg, x, w, None)),
        "vjp_x": ({"weight": w, "grad_out": g}, want_x),
        "vjp_weight": ({"x": x, "grad_out": g}, want_w),
        "per_sample_grad_weight": ({"x": x, "grad_out": g}, per_sample_grads(cfg, x, w, None, g)["weight"]),
    }
    for quantity, (operands, want) in checks.items():
        shapes = {k: tuple(v.shape) for k, v in operands.items()}
        if quantity == "vjp_x":
            shapes["output"] = tuple(x.shape)
        plan = tnderiv.plan(spec, shapes, quantity=quantity, dtype=DT)
        assert_patterns_structured(plan)
        torch.testing.assert_close(plan(operands), want, **TOL, msg=f"{quantity} of {cfg}")


def _transposed_sizes(cfg: ConvConfig) -> tuple[int, ...]:
    return tuple(
        (i - 1) * s - 2 * p + d * (k - 1) + op + 1
        for i, s, (p, _), d, k, op in zip(cfg.input_size, cfg.stride, cfg.pairs(), cfg.dilation, cfg.kernel_size, cfg.output_padding)
    )


@pytest.mark.parametrize(
    ("cfg", "kinds"),
    [
        (ConvConfig(2, 4, 6, (3, 3), (2, 2), (1, 1), 1, 2, False, input_size=(7, 6)), ("conv", "conv_transpose", "conv_weight", "conv_weight")),
        (ConvConfig(1, 2, 3, (3,), (1,), (2,), ((2, 1),), 1, False, "reflect", input_size=(6,)), ("conv", "conv_transpose", "conv_weight", "conv_weight")),
        (ConvConfig(2, 2, 4, (2, 3), (2, 1), (1, 1), 1, 2, False, transposed=True, output_padding=(1, 0), input_size=(3, 4)), ("conv_transpose", "conv", "conv_weight", "conv_weight")),
        # depthwise 5x5: the weight gradient runs as a forward convolution with the output gradient as kernel
        (ConvConfig(2, 2, 2, (5, 5), (2, 1), (1, 1), 2, 2, False, input_size=(9, 8)), ("conv", "conv_transpose", "conv_weight", "conv_weight")),
    ],
    ids=["grouped-strided", "reflect-asymmetric", "transposed", "depthwise-5x5"],
)
def test_each_role_uses_its_torch_kernel(cfg: ConvConfig, kinds: tuple[str, ...]) -> None:
    """A step with every node of the term (an explicit one-step path) runs as the torch kernel of its role."""
    spec = tnderiv.Conv(cfg.in_channels, cfg.out_channels, cfg.kernel_size, **cfg.spec_kwargs())
    x, w, g = _tensors(cfg, seed=1)
    tensors = {"x": x, "weight": w, "grad_out": g}
    want_x, want_w = output_grads(lambda a, b: conv_oracle(cfg, a, b, None), (x, w), g)
    wants = (conv_oracle(cfg, x, w, None), want_x, want_w, per_sample_grads(cfg, x, w, None, g)["weight"])
    for quantity, kind, want in zip(("forward", "vjp_x", "vjp_weight", "per_sample_grad_weight"), kinds, wants):
        d = tnderiv.diagram(spec, quantity)
        need = {k: tuple(v.shape) for k, v in tensors.items() if k in d.operand_names}
        if quantity == "vjp_x":
            need["output"] = tuple(x.shape)
        plan = tnderiv.plan(d, need, optimize=[tuple(range(len(d.nodes)))], dtype=DT)
        assert [s.kind for s in plan.steps()] == [kind], str(plan)
        torch.testing.assert_close(plan({k: tensors[k] for k in d.operand_names}), want, **TOL)


# ----- gathers and scatters with a 0/1 constant ---------------------------------------------------------
SIZES = {"n": 2, "c": 3, "k": 3, "o": 4, "i": 7}


@settings(max_examples=40)
@given(
    keep=st.sampled_from([("k", "o"), ("o", "k"), ("k", "i"), ("o", "i"), ("i",), ("k",), ("o",), ("k", "o", "i")]),
    on_data=st.sampled_from([("i",), ("o",), ("k",), ("k", "o"), ("o", "i")]),
    stride=st.integers(1, 2),
    dilation=st.integers(1, 2),
    pad=st.integers(0, 2),
    mode=st.sampled_from(list(PaddingMode)),
)
def test_data_with_a_pattern_is_a_gather_or_scatter(keep, on_data, stride, dilation, pad, mode) -> None:
    params = PatternParams(stride, dilation, pad, mode)
    d = Diagram((operand("x", "n", "c", *on_data), pattern("k", "o", "i", params)), ("n", "c", *keep), SIZES)
    x = torch.randn(2, 3, *(SIZES[leg] for leg in on_data), dtype=DT)
    plan = get_plan(d, {"x": tuple(x.shape)}, x, simplify=False)
    assert_patterns_structured(plan)
    want = contract(d, {"x": x.numpy()})
    np.testing.assert_allclose(plan(x=x).numpy(), want, rtol=1e-12, atol=1e-12)


def test_unfold_view_for_the_input_leg_and_scatter_for_reflect() -> None:
    x = torch.randn(2, 3, 7, dtype=DT)
    zeros = Diagram((operand("x", "n", "c", "i"), pattern("k", "o", "i", PatternParams(2, 1, 1))), ("n", "c", "k", "o"), SIZES)
    plan = get_plan(zeros, {"x": (2, 3, 7)}, x, simplify=False)
    assert [s.kind for s in plan.steps()] == ["gather"]
    np.testing.assert_allclose(plan(x=x).numpy(), contract(zeros, {"x": x.numpy()}), rtol=1e-12)
    g = torch.randn(2, 3, 4, dtype=DT)
    reflect = Diagram((operand("g", "n", "c", "o"), pattern("k", "o", "i", PatternParams(1, 1, 2, PaddingMode.REFLECT))), ("n", "c", "i"), SIZES)
    plan = get_plan(reflect, {"g": (2, 3, 4)}, g, simplify=False)
    assert [s.kind for s in plan.steps()] == ["scatter"]
    np.testing.assert_allclose(plan(g=g).numpy(), contract(reflect, {"g": g.numpy()}), rtol=1e-12)


def test_copy_tensor_steps_are_relabels() -> None:
    sizes = {"a": 4, "b": 4, "c": 4, "n": 2}
    d = Diagram((operand("x", "n", "a"), delta("a", "b", "c")), ("n", "b", "c"), sizes)
    x = torch.randn(2, 4, dtype=DT)
    plan = get_plan(d, {"x": (2, 4)}, x, simplify=False)
    assert [s.kind for s in plan.steps()] == ["relabel"]
    np.testing.assert_allclose(plan(x=x).numpy(), contract(d, {"x": x.numpy()}), rtol=1e-12)
