"""Gradient statistics against per-sample gradients from torch.func.vmap(grad), for every strategy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from cases.conv_cases import CONV_CASES, conv_configs
from cases.torch_oracles import ConvConfig, conv_oracle, per_sample_grads
from hypothesis import given, settings

import tnderiv
from tnderiv.ir import Diagram, operand, size_symbol

DT = torch.float64
TOL = dict(rtol=1e-9, atol=1e-9)
STATS = ("sum_grad_squared", "batch_l2", "variance", "batch_dot")


def rand(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=DT)


def reference(psg: torch.Tensor) -> dict[str, torch.Tensor]:
    """The statistics from per-sample gradients ``[N, *param]`` (BackPACK's variance: sgs/N − (grad/N)²)."""
    n = psg.shape[0]
    flat = psg.reshape(n, -1)
    sgs = (psg**2).sum(0)
    grad = psg.sum(0)
    return {
        "sum_grad_squared": sgs,
        "batch_l2": (flat**2).sum(1),
        "variance": sgs / n - (grad / n) ** 2,
        "batch_dot": flat @ flat.T,
    }


def check(result: tnderiv.GradStats, want: dict[str, torch.Tensor], params: list[str]) -> None:
    assert set(result) == set(STATS)
    for stat in STATS:
        assert set(result[stat]) == set(params)
        for name in params:
            expected = reference(want[name])[stat]
            got = result[stat][name]
            assert got.shape == expected.shape, (stat, name)
            torch.testing.assert_close(got, expected, **TOL, msg=lambda m, s=stat, p=name: f"{s}[{p}]: {m}")


def conv_check(cfg: ConvConfig, strategies: tuple[str, ...] = ("auto", "glued", "materialize")) -> None:
    gen = torch.Generator().manual_seed(0)
    spec = tnderiv.Conv(cfg.in_channels, cfg.out_channels, cfg.kernel_size, **cfg.spec_kwargs())
    x, w = rand(gen, *cfg.x_shape), rand(gen, *cfg.weight_shape)
    b = rand(gen, cfg.out_channels) if cfg.bias else None
    # conv_oracle outside vmap first: per_sample_grads alone fails on a cold cache (see report)
    y = conv_oracle(cfg, x, w, b)
    g = rand(gen, *y.shape)
    want = per_sample_grads(cfg, x, w, b, g)
    for strategy in strategies:
        result = tnderiv.grad_stats(spec, x, g, strategy=strategy)
        check(result, want, list(want))
        if strategy != "auto":
            assert all(result.strategy(s, p) == strategy for s in STATS for p in want)


@pytest.mark.parametrize("key", ["2d-stride-pad", "2d-same-reflect", "2d-circular-stride", "2d-T-pad", "3d-mixed", "2d-depthwise"])
def test_conv_cases(key: str) -> None:
    conv_check(CONV_CASES[key])


@settings(max_examples=20)
@given(conv_configs(dims=(1, 2)))
def test_conv_sweep(cfg: ConvConfig) -> None:
    conv_check(cfg, ("auto", "glued"))


def linear_psg(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    def loss(w_: torch.Tensor, b_: torch.Tensor, xi: torch.Tensor, gi: torch.Tensor) -> torch.Tensor:
        return (F.linear(xi, w_, b_) * gi).sum()

    gw, gb = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1)), in_dims=(None, None, 0, 0))(w, b, x, g)
    return {"weight": gw, "bias": gb}


@pytest.mark.parametrize("shared", [(), (3,), (2, 3)])
@pytest.mark.parametrize("strategy", ["auto", "glued", "materialize"])
def test_linear_with_weight_sharing(shared: tuple[int, ...], strategy: str) -> None:
    gen = torch.Generator().manual_seed(1)
    x, w, b = rand(gen, 4, *shared, 5), rand(gen, 3, 5), rand(gen, 3)
    g = rand(gen, 4, *shared, 3)
    check(tnderiv.grad_stats(tnderiv.Linear(5, 3), x, g, strategy=strategy), linear_psg(x, w, b, g), ["weight", "bias"])


def test_module_and_param_subset() -> None:
    module = torch.nn.Linear(5, 3, dtype=DT)
    gen = torch.Generator().manual_seed(2)
    x, g = rand(gen, 4, 5), rand(gen, 4, 3)
    result = tnderiv.grad_stats(module, x, g, ["batch_l2"], params=["bias"])
    assert list(result) == ["batch_l2"] and list(result["batch_l2"]) == ["bias"]
    torch.testing.assert_close(result["batch_l2"]["bias"], (g**2).sum(1), **TOL)


def test_custom_bilinear_layer() -> None:
    sizes = {"n": size_symbol("N"), "o": 2, "i": 3, "j": 2}
    forward = Diagram((operand("x1", "n", "i"), operand("weight", "o", "i", "j"), operand("x2", "n", "j")), ("n", "o"), sizes)
    layer = tnderiv.DiagramLayer(forward, inputs=("x1", "x2"), params=("weight",))
    gen = torch.Generator().manual_seed(3)
    x1, x2, g = rand(gen, 4, 3), rand(gen, 4, 2), rand(gen, 4, 2)
    want = {"weight": torch.einsum("ni,nj,no->noij", x1, x2, g)}
    for strategy in ("glued", "materialize"):
        check(tnderiv.grad_stats(layer, None, g, x1=x1, x2=x2, strategy=strategy), want, ["weight"])


def test_planner_choice_is_visible_and_follows_flops() -> None:
    """Wide dense layer: norms from the glued network (Σ_n (x·x)(g·g)) beat materializing [N, 64, 64];
    convolution with many output positions: glued costs grow with positions², so it materializes."""
    gen = torch.Generator().manual_seed(4)
    x, g = rand(gen, 8, 64), rand(gen, 8, 64)
    result = tnderiv.grad_stats(tnderiv.Linear(64, 64, bias=False), x, g, ["batch_l2", "batch_dot"])
    for stat in ("batch_l2", "batch_dot"):
        choice = result.choices[stat]["weight"]
        assert choice.strategy == "glued"
        assert choice.glued_cost < choice.materialize_cost
        assert len(choice.plans) == 1 and "per_sample_grad" not in str(choice.plans[0].expr)
    assert "batch_l2[weight]: glued" in result.report()

    spec = tnderiv.Conv(3, 4, 3, padding=1, bias=False)
    x = rand(gen, 2, 3, 8, 8)
    g = rand(gen, 2, 4, 8, 8)
    result = tnderiv.grad_stats(spec, x, g, ["sum_grad_squared"])
    choice = result.choices["sum_grad_squared"]["weight"]
    assert choice.strategy == "materialize" and choice.materialize_cost < choice.glued_cost
    assert [p.expr.operand_names for p in choice.plans] == [("x", "grad_out"), ("per_sample_grad",)]
    assert "materialize cost=" in result.report(plans=True) and "flops=" in result.report(plans=True)


def test_quantities_are_registered() -> None:
    spec = tnderiv.Conv(2, 3, 3)
    for stat in STATS:
        assert stat in tnderiv.QUANTITIES
        d = tnderiv.diagram(spec, f"{stat}_weight")
        assert "x" in d.operand_names and "grad_out" in d.operand_names


def test_bad_input() -> None:
    spec = tnderiv.Conv(2, 3, 3)
    x = torch.randn(2, 2, 5, 5, dtype=DT)
    g = torch.randn(2, 3, 3, 3, dtype=DT)
    with pytest.raises(ValueError, match=r"unknown statistic 'mean'; valid statistics are \['batch_dot'"):
        tnderiv.grad_stats(spec, x, g, ["mean"])
    with pytest.raises(TypeError, match="stats='batch_l2'"):
        tnderiv.grad_stats(spec, x, g, "batch_l2")
    with pytest.raises(ValueError, match="repeats"):
        tnderiv.grad_stats(spec, x, g, ["batch_l2", "batch_l2"])
    with pytest.raises(ValueError, match="strategy='fast'"):
        tnderiv.grad_stats(spec, x, g, strategy="fast")
    with pytest.raises(TypeError, match="params='weight'"):
        tnderiv.grad_stats(spec, x, g, params="weight")
    with pytest.raises(ValueError, match=r"param='gamma'.*\['weight', 'bias'\]"):
        tnderiv.grad_stats(spec, x, g, params=["gamma"])
    with pytest.raises(ValueError, match="grad_out has shape"):
        tnderiv.grad_stats(spec, x, torch.randn(2, 3, 4, 3, dtype=DT))
    with pytest.raises(TypeError, match="dtype"):
        tnderiv.grad_stats(spec, x, g.float())
    with pytest.raises(KeyError, match="was not computed"):
        tnderiv.grad_stats(spec, x, g, ["batch_l2"])["variance"]


def test_layer_norm_module() -> None:
    module = torch.nn.LayerNorm(4, dtype=DT)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        module.weight.copy_(rand(gen, 4))
        module.bias.copy_(rand(gen, 4))
    x, g = rand(gen, 3, 2, 4), rand(gen, 3, 2, 4)

    def loss(w: torch.Tensor, b: torch.Tensor, xi: torch.Tensor, gi: torch.Tensor) -> torch.Tensor:
        return (F.layer_norm(xi, (4,), w, b) * gi).sum()

    gw, gb = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1)), in_dims=(None, None, 0, 0))(
        module.weight.detach(), module.bias.detach(), x, g
    )
    for strategy in ("glued", "materialize"):
        check(tnderiv.grad_stats(module, x, g, strategy=strategy), {"weight": gw, "bias": gb}, ["weight", "bias"])


def test_layer_coupling_the_batch_raises() -> None:
    module = torch.nn.BatchNorm2d(3, dtype=DT)
    x = torch.randn(4, 3, 2, 2, dtype=DT)
    with pytest.raises(ValueError, match="couples the samples"):
        tnderiv.grad_stats(module, x, torch.randn_like(x))
