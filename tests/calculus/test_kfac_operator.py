"""The KFAC operator: matvec, dense and inverse against dense float64 linear algebra."""

from __future__ import annotations

import math

import pytest
import torch
from cases.conv_cases import CONV_CASES
from kfac_helpers import APPROX, DT, _close, _data, _spec

import tnderiv

# ----- the operator: matvec, dense, inverse ---------------------------------------------------------------

OPERATOR_LAYERS = {
    "conv-groups-separate": (CONV_CASES["2d-circular-stride"], "separate"),
    "conv-T-append": (CONV_CASES["2d-T-pad"], "append"),
    "conv-no-bias": (CONV_CASES["2d-depthwise"], "separate"),
}


@pytest.mark.parametrize("approx", APPROX)
@pytest.mark.parametrize("name", sorted(OPERATOR_LAYERS))
def test_matvec_dense_and_inverse(name: str, approx: str) -> None:
    cfg, bias = OPERATOR_LAYERS[name]
    x, _, y = _data(cfg, 2)
    k = tnderiv.kfac(_spec(cfg), x, torch.randn(y.shape, dtype=DT), approx=approx, bias_mode=bias)
    dense = k.to_dense()
    assert dense.shape == (k.numel, k.numel)
    torch.testing.assert_close(dense, dense.T)
    v = torch.randn(k.numel, dtype=DT)
    _close(k.matvec(v), dense @ v)
    _close((k @ v), dense @ v)
    w = math.prod(cfg.weight_shape)
    as_dict = {"weight": v[:w].reshape(cfg.weight_shape)}
    if cfg.bias:
        as_dict["bias"] = v[w:]
    out = k.matvec(as_dict)
    _close(torch.cat([t.reshape(-1) for t in out.values()]), dense @ v)
    eye = torch.eye(k.numel, dtype=DT)
    for damping in (0.5, 1e-2):
        _close(k.inverse(damping).to_dense(), torch.linalg.inv(dense + damping * eye), rtol=1e-7, atol=1e-9)
        _close(k.inverse(damping).matvec(v), torch.linalg.solve(dense + damping * eye, v), rtol=1e-7, atol=1e-9)
    root = math.sqrt(0.3)
    factors = tnderiv.kfac(_spec(cfg), x, torch.randn(y.shape, dtype=DT), approx=approx, bias_mode=bias)
    damped = [
        (
            blk.left + root * torch.eye(blk.left.shape[-1], dtype=DT),
            blk.right + root * torch.eye(blk.right.shape[-1], dtype=DT),
        )
        for blk in factors.blocks
    ]
    damped_op = type(factors)(
        tuple(type(blk)(blk.layouts, Gd, Ad) for blk, (Gd, Ad) in zip(factors.blocks, damped)), factors.params
    )
    _close(factors.inverse(0.3, damp="factors").to_dense(), torch.linalg.inv(damped_op.to_dense()), rtol=1e-7, atol=1e-9)


def test_weight_block_is_kron_G_A_in_weight_order() -> None:
    """For one group the weight block of ``to_dense`` is ``torch.kron(G, A)`` on ``weight.flatten()``."""
    cfg = CONV_CASES["2d-stride-pad"]
    x, _, y = _data(cfg, 4)
    k = tnderiv.kfac(_spec(cfg), x, torch.randn(y.shape, dtype=DT), bias_mode="separate")
    w = math.prod(cfg.weight_shape)
    _close(k.to_dense()[:w, :w], torch.kron(k.G[0], k.A[0]))
    _close(k.to_dense()[w:, w:], k.G_bias[0] * k.A_bias[0, 0, 0])
