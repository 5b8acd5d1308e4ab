"""The ``hadamard_vjp`` quantity against dense float64 Jacobians from ``torch.func.jacrev``: ``Σ_out d[out] J[out, a]²``."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import tnderiv
from tnderiv.api import run_quantity

DT = torch.float64

# (id, module factory, input shape)
CASES = [
    ("linear", lambda: nn.Linear(3, 4), (2, 3)),
    ("linear-shared-legs", lambda: nn.Linear(3, 4, bias=False), (2, 5, 3)),
    ("conv1d-reflect-groups", lambda: nn.Conv1d(4, 6, 3, padding=2, groups=2, padding_mode="reflect"), (2, 4, 7)),
    ("conv1d-replicate", lambda: nn.Conv1d(2, 3, 3, padding=2, padding_mode="replicate"), (2, 2, 5)),
    ("conv1d-circular-dilated", lambda: nn.Conv1d(2, 2, 2, padding=1, dilation=2, padding_mode="circular"), (1, 2, 6)),
    ("conv2d-stride-groups", lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2, stride=2), (2, 4, 5, 6)),
    ("conv2d-same-reflect", lambda: nn.Conv2d(2, 2, (3, 2), padding="same", padding_mode="reflect"), (1, 2, 4, 5)),
    ("conv3d", lambda: nn.Conv3d(2, 2, 2, stride=(1, 2, 1)), (1, 2, 3, 4, 3)),
    ("convT1d-groups", lambda: nn.ConvTranspose1d(4, 2, 3, stride=2, groups=2, output_padding=1), (2, 4, 4)),
    ("convT2d-dilated", lambda: nn.ConvTranspose2d(2, 3, 2, stride=2, padding=1, dilation=2), (1, 2, 3, 3)),
]


def dense(f, arg: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``Σ_out d[out] (∂f[out]/∂arg[a])²`` from the dense Jacobian."""
    jac = torch.func.jacrev(f)(arg).reshape(d.numel(), arg.numel())
    return (d.reshape(-1) @ jac**2).reshape(arg.shape)


@pytest.mark.parametrize("simplify", [True, False])
@pytest.mark.parametrize(("make", "shape"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hadamard_vjp_matches_dense_jacobian(make, shape, simplify: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    module = make().to(DT)
    x = torch.randn(shape, generator=gen, dtype=DT)
    out = module(x).detach()
    d = torch.randn(out.shape, generator=gen, dtype=DT)  # any sign: the identity is linear in d
    params = {name: p.detach() for name, p in module.named_parameters()}
    tensors = {"diag_out": d, "x": x, "x_sq": x**2, **params, **{f"{k}_sq": v**2 for k, v in params.items()}}
    got = run_quantity(module, "hadamard_vjp_x", tensors, output_shape=x.shape, simplify=simplify)
    torch.testing.assert_close(got, dense(lambda t: module(t), x, d), rtol=1e-10, atol=1e-12)
    for name, value in params.items():
        got = run_quantity(module, f"hadamard_vjp_{name}", tensors, output_shape=value.shape, simplify=simplify)
        want = dense(lambda t, name=name: torch.func.functional_call(module, {name: t}, (x,)), value, d)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_zero_padding_collapses_to_squared_weights() -> None:
    """``Π ⊙ Π = Π``: with zero padding the input step reads ``weight_sq`` once (a transposed convolution)."""
    conv = nn.Conv2d(4, 6, 3, padding=1, stride=2, groups=2)
    expr = tnderiv.diagram(conv, "hadamard_vjp_x")
    assert expr.operand_names == ("weight_sq", "diag_out")
    assert sum(node.kind.value == "pattern" for node in expr.nodes) == 2
    param = tnderiv.diagram(conv, "hadamard_vjp_weight")
    assert sorted(param.operand_names) == ["diag_out", "x_sq"]


def test_reflect_padding_keeps_both_patterns() -> None:
    """Reflect padding maps two taps of one output to the same input: ``(Σ_k Π W)² ≠ Σ_k Π W²``, both copies stay."""
    conv = nn.Conv1d(2, 2, 3, padding=1, padding_mode="reflect")
    expr = tnderiv.diagram(conv, "hadamard_vjp_x")
    assert [n.name for n in expr.nodes if n.kind.value == "operand"].count("weight") == 2
    assert sum(node.kind.value == "pattern" for node in expr.nodes) == 2
    # and the squared-weight transposed convolution would be wrong here
    gen = torch.Generator().manual_seed(1)
    conv = conv.to(DT)
    x = torch.randn(1, 2, 4, generator=gen, dtype=DT)
    d = torch.rand(1, 2, 4, generator=gen, dtype=DT)
    exact = dense(lambda t: conv(t), x, d)
    naive = torch.nn.functional.conv_transpose1d(d, conv.weight.detach() ** 2, padding=1)
    assert (exact - naive).abs().max() > 1e-3
