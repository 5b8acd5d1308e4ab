"""Normalization layers vs torch.nn.functional and torch.func: fixed cases, modules, structure, errors."""

from __future__ import annotations

import pytest
import sympy
import torch
import torch.nn as nn
from cases.norm_cases import CASES, TOL, NormConfig, case_id, check_all_quantities, split_tensors
from torch.func import jacrev

import tnderiv
from tnderiv.ir import DiagramSum, size_symbol, terms_of
from tnderiv.layers import spec_of


@pytest.mark.parametrize("config", CASES, ids=case_id)
def test_quantities_match_torch(config: NormConfig) -> None:
    check_all_quantities(config, seed=0)


@pytest.mark.parametrize("config", [CASES[2], CASES[10], CASES[16], CASES[18], CASES[19]], ids=case_id)
def test_float32(config: NormConfig) -> None:
    check_all_quantities(config, seed=3, dtype=torch.float32, tol=dict(rtol=1e-4, atol=1e-4))


# ----- modules: conversion, own parameters and buffers ---------------------------------------------


@pytest.mark.parametrize("config", CASES, ids=case_id)
def test_module_conversion_and_parameters(config: NormConfig) -> None:
    module = config.module()
    assert spec_of(module) == config.spec()
    tensors = config.tensors(7)
    x, params, stats = split_tensors(tensors)
    with torch.no_grad():
        for name, value in {**params, **stats}.items():
            getattr(module, name).copy_(value)
    expected = config.oracle(x, **params, **stats)
    torch.testing.assert_close(tnderiv.forward(module, x), expected, **TOL)
    grad_out = torch.randn_like(expected)
    xr = x.clone().requires_grad_(True)
    torch.autograd.backward(config.oracle(xr, **dict(module.named_parameters()), **stats), grad_out)
    torch.testing.assert_close(tnderiv.vjp(module, "x", grad_out, x=x), xr.grad, **TOL)
    for name, p in module.named_parameters():
        torch.testing.assert_close(tnderiv.vjp(module, name, grad_out, x=x), p.grad, **TOL)


def test_module_modes_pick_statistics() -> None:
    bn = nn.BatchNorm2d(3)
    assert not spec_of(bn).running_stats and spec_of(bn).dims == 2
    assert spec_of(bn.eval()).running_stats
    untracked = nn.BatchNorm1d(3, track_running_stats=False).eval()
    assert not spec_of(untracked).running_stats  # torch uses batch statistics without buffers
    inst = nn.InstanceNorm2d(3, track_running_stats=True)
    assert not spec_of(inst).running_stats and spec_of(inst.eval()).running_stats
    assert not spec_of(nn.InstanceNorm2d(3).eval()).running_stats
    assert spec_of(nn.RMSNorm(4)).eps is None and spec_of(nn.RMSNorm(4, eps=0.1)).eps == 0.1
    assert not spec_of(nn.LayerNorm(4, bias=False)).bias
    assert not spec_of(nn.GroupNorm(2, 4, affine=False)).affine


def test_batchnorm_eval_module_uses_its_running_statistics() -> None:
    module = nn.BatchNorm2d(3, dtype=torch.float64)
    x = torch.randn(4, 3, 2, 5, dtype=torch.float64)
    module(x * 3 + 1)  # training step: updates running_mean, running_var
    module.eval()
    with torch.no_grad():
        module.weight.normal_()
        module.bias.normal_()
    torch.testing.assert_close(tnderiv.forward(module, x), module(x), **TOL)
    grad_out = torch.randn_like(x)
    per_sample = tnderiv.per_sample_grad(module, x, grad_out)
    torch.testing.assert_close(per_sample["weight"].sum(0), tnderiv.vjp(module, "weight", grad_out, x=x), **TOL)


# ----- structure of the diagrams -------------------------------------------------------------------


def test_jacobian_terms_and_symbolic_coefficients() -> None:
    n, i0, i1 = size_symbol("N"), size_symbol("I0"), size_symbol("I1")
    bn = tnderiv.diagram(tnderiv.BatchNorm(3), "jvp_x", shapes={"x": (2, 3, 4, 5)})
    assert isinstance(bn, DiagramSum) and len(bn.terms) == 3
    coefficients = sorted((t.coefficient for t in bn.terms), key=str)
    assert sympy.simplify(coefficients[0] + 1 / (n * i0 * i1)) == 0 and coefficients[-1] == 1
    gn = tnderiv.diagram(tnderiv.GroupNorm(2, 6), "jvp_x", shapes={"x": (2, 6, 4)})
    assert {sympy.simplify(t.coefficient * 3 * i0) for t in terms_of(gn)} == {3 * i0, -1}
    rms = tnderiv.diagram(tnderiv.RMSNorm((2, 3)), "jvp_x", shapes={"x": (2, 2, 3)})
    assert len(terms_of(rms)) == 2 and {t.coefficient for t in terms_of(rms)} == {1, sympy.Rational(-1, 6)}
    eval_bn = tnderiv.diagram(tnderiv.BatchNorm(3, running_stats=True), "jvp_x", shapes={"x": (2, 3, 4)})
    assert len(terms_of(eval_bn)) == 1 and set(eval_bn.operand_names) == {"weight", "inv_std", "tangent"}
    # the VJP is the transposed linearization: also three terms for batch norm in training mode
    assert len(terms_of(tnderiv.diagram(tnderiv.BatchNorm(3), "vjp_x", shapes={"x": (2, 3, 4)}))) == 3


def test_parameter_diagrams_are_networks_in_x_hat() -> None:
    ln = tnderiv.LayerNorm((4,))
    vjp_weight = tnderiv.diagram(ln, "vjp_weight", shapes={"x": (2, 3, 4)})
    assert set(vjp_weight.operand_names) == {"x_hat", "grad_out"} and vjp_weight.open_legs == ("d0",)
    psg = tnderiv.diagram(ln, "per_sample_grad_weight", shapes={"x": (2, 3, 4)})
    assert psg.open_legs == ("n", "d0")
    net = tnderiv.GroupNorm(2, 4).network({"x": (2, 4, 3, 3)})
    assert net.shared_legs == ("i0", "i1") and net.derived == ("x_hat", "inv_std")
    assert spec_of(tnderiv.LayerNorm(4)).network({"x": (2, 5, 6, 4)}).shared_legs == ("s0", "s1")


@pytest.mark.parametrize(
    "config",
    [CASES[1], CASES[7], CASES[10], CASES[16], CASES[19], CASES[4]],
    ids=case_id,
)
def test_dense_jacobian_and_its_transpose(config: NormConfig) -> None:
    """Columns ``J e_j`` from our JVP and rows ``e_iᵀ J`` from our VJP (the transposed linearization) against jacrev.

    With affine parameters on the normalized legs (group, layer, RMS norm) ``J`` is not symmetric, so a
    VJP that forgot to transpose would fail here.
    """
    spec = config.spec()
    x, params, stats = split_tensors(config.tensors(11))
    dense = jacrev(lambda x: config.oracle(x, **params, **stats))(x).reshape(x.numel(), x.numel())
    basis = torch.eye(x.numel(), dtype=x.dtype).reshape(x.numel(), *x.shape)
    columns = torch.stack([tnderiv.jvp(spec, "x", e, x=x, **params, **stats).reshape(-1) for e in basis], dim=1)
    rows = torch.stack([tnderiv.vjp(spec, "x", e, x=x, **params, **stats).reshape(-1) for e in basis], dim=0)
    torch.testing.assert_close(columns, dense, **TOL)
    torch.testing.assert_close(rows, dense, **TOL)
    if config.family in ("group", "layer", "rms"):
        assert not torch.allclose(dense, dense.T)


# ----- batch norm in training mode couples samples --------------------------------------------------


def test_training_batchnorm_per_sample_quantities_raise_and_batch_quantities_work() -> None:
    spec = tnderiv.BatchNorm(3)
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    grad_out = torch.randn_like(x)
    with pytest.raises(ValueError, match="per-sample gradients are undefined.*couples the samples"):
        tnderiv.per_sample_grad(spec, x, grad_out)
    with pytest.raises(ValueError, match="couples the samples"):
        tnderiv.diagram(spec, "per_sample_grad_bias")
    with pytest.raises(ValueError, match="couples the samples"):
        tnderiv.per_sample_grad(nn.BatchNorm1d(3).double(), x, grad_out)
    assert spec.network({"x": x.shape}).couples_batch
    assert not tnderiv.BatchNorm(3, running_stats=True).network({}).couples_batch
    expected = torch.func.grad(
        lambda w: (torch.nn.functional.batch_norm(x, None, None, w, None, True) * grad_out).sum()
    )(torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(tnderiv.vjp(spec, "weight", grad_out, x=x), expected, **TOL)


# ----- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: tnderiv.BatchNorm(0), "num_features=0"),
        (lambda: tnderiv.BatchNorm(3, eps=-1.0), "eps=-1.0"),
        (lambda: tnderiv.BatchNorm(3, dims=4), "dims=4"),
        (lambda: tnderiv.BatchNorm(3, affine="yes"), "affine='yes'"),
        (lambda: tnderiv.GroupNorm(4, 6), "num_channels=6 is not divisible by num_groups=4"),
        (lambda: tnderiv.LayerNorm(()), "normalized_shape=()"),
        (lambda: tnderiv.LayerNorm((3, 0)), r"normalized_shape=\(3, 0\)"),
        (lambda: tnderiv.RMSNorm(3, eps="small"), "eps='small'"),
        (lambda: tnderiv.InstanceNorm(2.5), "num_features=2.5"),
    ],
)
def test_bad_hyperparameters(build, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_tensors_raise_naming_the_argument() -> None:
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    g = torch.randn_like(x)
    with pytest.raises(ValueError, match=r"x has shape \(2, 3, 4\): axis 1 \(c\) is 3, expected num_features=5"):
        tnderiv.forward(tnderiv.BatchNorm(5), x)
    with pytest.raises(ValueError, match="BatchNorm2d expects 4 axes"):
        tnderiv.forward(tnderiv.BatchNorm(3, dims=2), x)
    with pytest.raises(ValueError, match="InstanceNorm expects at least 3 axes"):
        tnderiv.forward(tnderiv.InstanceNorm(3), x[:, :, 0])
    with pytest.raises(ValueError, match=r"axis 1 \(g c\) is 3, expected num_channels=4"):
        tnderiv.forward(tnderiv.GroupNorm(2, 4), x)
    with pytest.raises(ValueError, match=r"normalized_shape=\(3,\) expects \[N, \*S, 3\]"):
        tnderiv.forward(tnderiv.LayerNorm(3), x)
    with pytest.raises(ValueError, match=r"grad_out has shape \(2, 3, 4\); RMSNorm"):
        tnderiv.vjp(tnderiv.RMSNorm(5), "weight", g, x=torch.randn(2, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="needs x=.*statistics are computed from x"):
        tnderiv.vjp(tnderiv.LayerNorm(4), "x", g, x_shape=g.shape)
    with pytest.raises(ValueError, match="needs running_mean=... and running_var="):
        tnderiv.forward(tnderiv.BatchNorm(3, running_stats=True), x)
    bad = dict(running_mean=torch.zeros(4, dtype=torch.float64), running_var=torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"running_mean has shape \(4,\); expected \(3,\)"):
        tnderiv.forward(tnderiv.BatchNorm(3, running_stats=True), x, **bad)
    with pytest.raises(ValueError, match="more than one value per channel"):
        tnderiv.forward(tnderiv.BatchNorm(3), x[:1, :, :1])
    with pytest.raises(ValueError, match="more than one spatial element"):
        tnderiv.forward(tnderiv.InstanceNorm(3), x[:, :, :1])
    with pytest.raises(ValueError, match=r"weight has shape \(4,\)"):
        tnderiv.forward(tnderiv.BatchNorm(3, bias=False), x, torch.ones(4, dtype=torch.float64))
    with pytest.raises(TypeError, match="dtype"):
        tnderiv.forward(tnderiv.BatchNorm(3), x, torch.ones(3, dtype=torch.float32))
    with pytest.raises(ValueError, match="unknown parameter 'bias'"):
        tnderiv.per_sample_grad(tnderiv.RMSNorm(4), x[:, :1, :], x[:, :1, :], params=["bias"])
    with pytest.raises(TypeError, match="BatchNorm.from_module expects"):
        tnderiv.BatchNorm.from_module(nn.LayerNorm(3))


def test_instance_norm_without_affine_takes_any_channel_count() -> None:
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    torch.testing.assert_close(tnderiv.forward(tnderiv.InstanceNorm(3), x), torch.nn.functional.instance_norm(x), **TOL)


def test_group_norm_single_element_groups() -> None:
    """One element per statistic: x̂ = 0, the output is the bias and the Jacobian vanishes (torch agrees for N ≥ 2)."""
    x = torch.randn(3, 4, dtype=torch.float64)
    weight, bias = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    spec = tnderiv.GroupNorm(4, 4)
    torch.testing.assert_close(
        tnderiv.forward(spec, x, weight, bias), torch.nn.functional.group_norm(x, 4, weight, bias), **TOL
    )
    torch.testing.assert_close(tnderiv.forward(spec, x[:1], weight, bias), bias[None], **TOL)
    dense = jacrev(lambda x: torch.nn.functional.group_norm(x, 4, weight, bias))(x)
    assert dense.abs().max() == 0
    torch.testing.assert_close(
        tnderiv.vjp(spec, "x", torch.randn_like(x), x=x, weight=weight), torch.zeros_like(x), **TOL
    )
