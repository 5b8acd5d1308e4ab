"""The Hadamard-sum kernel: two inputs on the same legs, multiplied and summed (not a batch of 1×K·K×1 GEMMs)."""

from __future__ import annotations

import numpy as np
import torch

import tnderiv
from tnderiv.ir import Diagram, operand, size_symbol


def test_hadamard_sum_runs_as_one_multiply_and_sum() -> None:
    sizes = {"n": size_symbol("N"), "p": size_symbol("P"), "q": size_symbol("Q")}
    expr = Diagram((operand("a", "n", "p", "q"), operand("b", "q", "n", "p")), ("p", "q"), sizes)
    plan = tnderiv.plan(expr, {"a": (5, 3, 4), "b": (4, 5, 3)}, dtype=torch.float64)
    assert [step.kind for step in plan.steps()] == ["Hadamard sum"]
    a, b = torch.randn(5, 3, 4, dtype=torch.float64), torch.randn(4, 5, 3, dtype=torch.float64)
    expected = np.einsum("npq,qnp->pq", a.numpy(), b.numpy())
    np.testing.assert_allclose(plan(a=a, b=b).numpy(), expected, rtol=1e-12)


def test_sum_of_squared_per_sample_gradients_uses_it() -> None:
    """grad_stats' materialized sum_grad_squared: Σ_n g[n]² against torch.func per-sample gradients."""
    conv = torch.nn.Conv2d(3, 4, 3).double()
    x, g = torch.randn(6, 3, 7, 7, dtype=torch.float64), torch.randn(6, 4, 5, 5, dtype=torch.float64)
    stats = tnderiv.grad_stats(conv, x, g, ["sum_grad_squared"], params=["weight"], strategy="materialize")
    kinds = [step.kind for plan in stats.choices["sum_grad_squared"]["weight"].plans for step in plan.steps()]
    assert kinds[-1] == "Hadamard sum"

    def one(xn: torch.Tensor, gn: torch.Tensor) -> torch.Tensor:
        w = conv.weight.detach().requires_grad_(True)
        out = torch.nn.functional.conv2d(xn[None], w, conv.bias)
        return torch.autograd.grad((out * gn[None]).sum(), w)[0]

    expected = sum(one(x[n], g[n]) ** 2 for n in range(6))
    torch.testing.assert_close(stats["sum_grad_squared"]["weight"], expected, rtol=1e-10, atol=1e-12)


def test_strided_inputs_are_reduced_in_memory_order() -> None:
    """An intermediate laid out as a permuted view (as a plan's half often is) gives the same sums."""
    from tnderiv.plan.kernels import HadamardKernel, StepInput

    base = torch.randn(4, 3, 5, 6, dtype=torch.float64)  # memory order [n, p, m, q]
    view = base.permute(2, 0, 1, 3)  # legs [m, n, p, q]
    legs = ("m", "n", "p", "q")
    kernel = HadamardKernel(StepInput(legs, False), StepInput(legs, False), {"p", "q"}, dict(zip(legs, view.shape)))
    assert kernel.out_legs == ("p", "q")
    expected = np.einsum("mnpq,mnpq->pq", view.numpy(), view.numpy())
    np.testing.assert_allclose(kernel(view, view).numpy(), expected, rtol=1e-12)
    other = HadamardKernel(StepInput(legs, False), StepInput(legs, False), {"m", "q"}, dict(zip(legs, view.shape)))
    np.testing.assert_allclose(other(view, view).numpy(), np.einsum("mnpq,mnpq->mq", view.numpy(), view.numpy()), rtol=1e-12)
