"""The harness's torch-only references (unfold formulations, identity-kernel oracle) against torch autograd in float64."""

from __future__ import annotations

import pytest
import torch

from benchmarks import oracles, unfold
from benchmarks.cases import Case, probe_cases
from benchmarks.problem import Problem

PROBES = {case.id: case for case in probe_cases()}


def _tiny(case: Case) -> Problem:
    return Problem(case, torch.float64)


@pytest.mark.parametrize("case_id", sorted(PROBES))
def test_unfold_per_sample_grad_matches_autograd(case_id: str) -> None:
    p = _tiny(PROBES[case_id])
    expected = torch.stack([
        torch.autograd.grad((p.module(p.x[n : n + 1]) * p.grad_out[n : n + 1]).sum(), p.module.weight)[0]
        for n in range(p.x.shape[0])
    ])
    got = unfold.per_sample_grad(p.module, p.x, p.grad_out)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(unfold.weight_vjp(p.module, p.x, p.grad_out), expected.sum(0), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case_id", sorted(PROBES))
def test_unfolded_input_matches_the_weight_jacobian(case_id: str) -> None:
    """``a[n, g, (c_in, k), o] = ∂y[n, c_out, o] / ∂w[c_out, c_in, k]`` for any ``c_out`` of group ``g``."""
    p = _tiny(PROBES[case_id])
    module = p.module
    x = p.x[:1]
    jac = torch.func.jacrev(lambda w: torch.func.functional_call(module, {"weight": w, "bias": module.bias}, (x,)))(
        module.weight.detach()
    )  # [1, C_out, *O, *weight.shape]
    groups = module.groups
    c_out = jac.shape[1]
    spatial = jac.shape[2 : 2 + len(module.kernel_size)]
    jac = jac.reshape(c_out, -1, *module.weight.shape)
    expected = []
    for g in range(groups):
        if module.transposed:
            c_in_g = module.weight.shape[0] // groups
            row = jac[g * (c_out // groups), :, g * c_in_g : (g + 1) * c_in_g, 0]  # [L, c_in_g, *K]
        else:
            row = jac[g * (c_out // groups), :, g * (c_out // groups)]  # [L, c_in_g, *K]
        expected.append(row.reshape(row.shape[0], -1).T)
    expected_a = torch.stack(expected).unsqueeze(0)  # [1, G, d_in, L]
    assert expected_a.shape[-1] == torch.tensor(spatial).prod()
    torch.testing.assert_close(unfold.unfold_input(module, x), expected_a, rtol=0, atol=1e-12)
    torch.testing.assert_close(oracles.input_vectors(module, x), expected_a, rtol=0, atol=1e-12)


@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("case_id", ["probe/reflect", "probe/groups", "probe/transposed", "probe/same-even"])
def test_kfac_factors_are_sums_of_outer_products(case_id: str, approx: str) -> None:
    p = _tiny(PROBES[case_id])
    a = oracles.input_vectors(p.module, p.x)
    g = oracles.output_vectors(p.module, p.grad_out)
    if approx == "reduce":
        a, g = a.sum(-1, keepdim=True), g.sum(-1, keepdim=True)
    for h in range(a.shape[1]):  # every group
        loops_a = sum(torch.outer(a[n, h, :, pos], a[n, h, :, pos]) for n in range(a.shape[0]) for pos in range(a.shape[-1]))
        torch.testing.assert_close(unfold.kfac_input(p.module, p.x, approx)[h], loops_a)
        loops_g = sum(torch.outer(g[n, h, :, pos], g[n, h, :, pos]) for n in range(g.shape[0]) for pos in range(g.shape[-1]))
        torch.testing.assert_close(unfold.kfac_output(p.module, p.grad_out, approx)[h], loops_g)


def test_diag_ggn_reference_sums_squared_per_sample_gradients() -> None:
    p = _tiny(PROBES["probe/circular"])
    expected = oracles.diag_ggn(p)
    torch.testing.assert_close(unfold.diag_ggn(p.module, p.x, p.sqrt_out), expected, rtol=1e-10, atol=1e-10)
    assert p.sqrt_out.shape[:2] == (10, p.x.shape[0])


def test_dense_layer_references() -> None:
    case = Case("dense/tiny", "linear", "linear", (("in_features", 5), ("out_features", 3), ("bias", True)), 2, (4, 5))
    p = _tiny(case)
    expected = torch.stack([
        torch.autograd.grad((p.module(p.x[n]) * p.grad_out[n]).sum(), p.module.weight)[0] for n in range(2)
    ])
    torch.testing.assert_close(unfold.per_sample_grad(p.module, p.x, p.grad_out), expected)
    a = p.x.reshape(-1, 5)
    torch.testing.assert_close(unfold.kfac_input(p.module, p.x, "expand")[0], a.T @ a)
