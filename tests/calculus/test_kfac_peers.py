"""The conversion table to peers (docs/conventions.md): einconv, BackPACK, curvlinops and SINGD, each with its own numbers."""

from __future__ import annotations

import math

import pytest
import torch
from cases import kfac_cases as ref
from cases.torch_oracles import ConvConfig
from kfac_helpers import APPROX, DT, _close, _data, _spec

import tnderiv

# ----- the conversion table to peers (docs/conventions.md) -------------------------------------------------

PEER_CFG = ConvConfig(2, 3, 4, (3, 2), (1, 1), (1, 1), 1, batch=3, input_size=(5, 4))


def _peer_model(seed: int = 0, classes: int = 3) -> tuple[torch.nn.Conv2d, torch.nn.Linear, torch.Tensor]:
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(3, 4, (3, 2), padding=1).double()
    out = conv(torch.zeros(1, 3, 5, 4, dtype=DT))
    lin = torch.nn.Linear(out[0].numel(), classes).double()
    return conv, lin, torch.randn(PEER_CFG.x_shape, dtype=DT)


def _mse_sum_root(conv: torch.nn.Conv2d, lin: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The root of MSE(sum)'s Hessian (2^½ I) pulled back through the linear layer: ``[C, N, *conv output]``."""
    shape = conv(x).shape
    return (math.sqrt(2) * lin.weight.reshape(-1, *shape[1:]))[:, None].expand(-1, shape[0], *shape[1:]).contiguous()


def test_einconv_expressions_and_table() -> None:
    """einconv's KFC (= our expand ``A`` times S) and KFAC-reduce (= our reduce ``A``), ``[G, d, d]`` both."""
    pytest.importorskip("einconv")
    from einconv.expressions import convNd_kfac_reduce, convNd_kfc

    cfg = ConvConfig(2, 4, 4, (3, 3), (2, 2), (1, 1), 1, groups=2, batch=3, input_size=(6, 5))
    x, _, y = _data(cfg, 0)
    a = ref.unfold(cfg, x)
    positions = math.prod(y.shape[2:])
    ours = {approx: tnderiv.kfac_factors_input(_spec(cfg), x, approx) for approx in APPROX}
    for module, formula, mine in (
        (convNd_kfc, ref.einconv_kfc(a), positions * ours["expand"]),
        (convNd_kfac_reduce, ref.einconv_kfac_reduce(a), ours["reduce"]),
    ):
        equation, operands, shape = module.einsum_expression(x, cfg.kernel_size, stride=cfg.stride, padding=1, groups=cfg.groups)
        theirs = torch.einsum(equation, *operands).reshape(shape)
        # einconv builds its scale as a float32 tensor
        _close(theirs, formula, rtol=1e-6)
        _close(theirs, mine, rtol=1e-6)


def test_backpack_kflr_and_table() -> None:
    """BackPACK's conv KFLR: ``[G, A]`` with ``G`` = our reduce ``G`` and ``A`` = S · our expand ``A``."""
    pytest.importorskip("backpack")
    from backpack import backpack, extend
    from backpack.extensions import KFLR

    conv, lin, x = _peer_model()
    model = extend(torch.nn.Sequential(conv, torch.nn.Flatten(), lin))
    loss = extend(torch.nn.MSELoss(reduction="sum"))
    with backpack(KFLR()):
        loss(model(x), torch.randn(x.shape[0], 3, dtype=DT)).backward()
    G_bp, A_bp = conv.weight.kflr
    S = _mse_sum_root(conv, lin, x)
    a = ref.unfold(PEER_CFG, x)
    formula_G, formula_A = ref.backpack_kflr_conv(a, ref.conv_output_rows(S, 1, sqrt=True))
    _close(G_bp, formula_G)
    _close(A_bp, formula_A)
    positions = math.prod(S.shape[3:])
    _close(G_bp, tnderiv.kfac(conv, x, S, approx="reduce").G[0])
    _close(A_bp, positions * tnderiv.kfac(conv, x, S, approx="expand").A[0])
    _close(conv.bias.kflr[0], tnderiv.kfac(conv, x, S, approx="reduce").G_bias[0])


@pytest.mark.parametrize("approx", APPROX)
@pytest.mark.parametrize("separate", [True, False])
def test_curvlinops_and_table(approx: str, separate: bool) -> None:
    """curvlinops ``KFACLinearOperator`` on a mean-reduced loss: type-2 = our factors from the root of the
    mean loss's Hessian, empirical = ours from its gradient with ``loss_average="batch"``."""
    pytest.importorskip("curvlinops")
    from curvlinops import KFACLinearOperator

    conv, lin, x = _peer_model(1)
    model = torch.nn.Sequential(conv, torch.nn.Flatten(), lin)
    target = torch.tensor([0, 2, 1])
    n = x.shape[0]
    logits = model(x).detach()
    # the mean loss's Hessian per sample, (diag p − p pᵀ)/N, its root pulled back through the linear layer
    roots = []
    for j in range(n):
        H = torch.func.hessian(lambda z, j=j: torch.nn.functional.cross_entropy(z[None], target[j : j + 1]))(logits[j]) / n
        roots.append(ref.hessian_sqrt(H) @ lin.weight)
    S = torch.stack(roots, dim=1).reshape(-1, n, *conv(x).shape[1:]).detach()
    out = conv(x)
    grad_out = torch.autograd.grad(torch.nn.functional.cross_entropy(lin(out.flatten(1)), target), out)[0]
    bias = "separate" if separate else "append"
    for fisher, tensor in (("type-2", S), ("empirical", grad_out)):
        op = KFACLinearOperator(
            model,
            torch.nn.CrossEntropyLoss(),
            list(model.parameters()),
            [(x, target)],
            fisher_type=fisher,
            kfac_approx=approx,
            separate_weight_and_bias=separate,
            check_deterministic=False,
        )
        op.compute_kronecker_factors()
        k = tnderiv.kfac(conv, x, tensor.detach(), approx=approx, bias_mode=bias, loss_average="batch")
        _close(op._input_covariances["0"], k.A[0])
        _close(op._gradient_covariances["0"], k.G[0])


@pytest.mark.parametrize("approx", APPROX)
@pytest.mark.parametrize("loss_average", [None, "batch", "batch+positions"])
def test_singd_table(approx: str, loss_average: str | None) -> None:
    """SINGD's Gram matrices ``(K, C)`` are our ``A`` with ``bias_mode="append"`` and our ``G`` with the same
    ``loss_average`` (``"batch+sequence"`` is ``"batch+positions"``), for ungrouped convolutions."""
    conv, _, x = _peer_model(2)
    grad_out = torch.randn(conv(x).shape, dtype=DT)
    peer_average = "batch+sequence" if loss_average == "batch+positions" else loss_average
    K, C = ref.singd_conv2d(x, grad_out, conv, approx, peer_average)
    k = tnderiv.kfac(conv, x, grad_out, approx=approx, bias_mode="append", loss_average=loss_average)
    _close(K, k.A[0])
    _close(C, k.G[0])
