"""Where KFAC is exact (Eschenhagen et al., 2023): KFAC equals GGN blocks computed with torch.func."""

from __future__ import annotations

import math

import pytest
import torch
from cases import kfac_cases as ref
from cases.conv_cases import CONV_CASES
from cases.torch_oracles import ConvConfig, conv_oracle
from kfac_helpers import APPROX, DT, _data, _spec

import tnderiv

# ----- where KFAC is exact (Eschenhagen et al., 2023) -----------------------------------------------------


def _conv_params(cfg: ConvConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(cfg.weight_shape, generator=gen, dtype=DT), torch.randn(cfg.out_channels, generator=gen, dtype=DT)


def _group_blocks(dense: torch.Tensor, cfg: ConvConfig, w_numel: int) -> list[torch.Tensor]:
    """Per group, the [weight rows | bias entries] diagonal block (KFAC has no cross-group blocks)."""
    g = cfg.groups
    per = w_numel // g
    cout = cfg.out_channels // g
    blocks = []
    for j in range(g):
        if cfg.transposed:
            index = torch.arange(w_numel).reshape(g, cfg.in_channels // g, -1)[j].reshape(-1)
        else:
            index = torch.arange(j * per, (j + 1) * per)
        index = torch.cat([index, w_numel + torch.arange(j * cout, (j + 1) * cout)])
        blocks.append(dense[index][:, index])
    return blocks


def _exact_case(cfg: ConvConfig, setting: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, sqrt_out at the layer output, exact GGN of (weight, bias)) for conv → 1×1 mixing V → loss.

    ``per-position``: MSE on every position (expand is exact); ``pooled``: MSE on the position
    mean (reduce is exact); ``single``: N = 1, one position, cross-entropy over channels (both exact).
    """
    x, _, y = _data(cfg, seed)
    w, b = _conv_params(cfg, seed + 1)
    gen = torch.Generator().manual_seed(seed + 2)
    c2, cout = 3, cfg.out_channels
    V = torch.randn(c2, cout, generator=gen, dtype=DT)
    n, positions = y.shape[0], math.prod(y.shape[2:])

    def layer(theta: torch.Tensor) -> torch.Tensor:
        return conv_oracle(cfg, x, theta[: w.numel()].reshape(w.shape), theta[w.numel() :])

    theta = torch.cat([w.reshape(-1), b])
    if setting == "single":
        assert n == 1 and positions == 1
        out = layer(theta).reshape(-1)
        target = torch.tensor(1)
        H = torch.func.hessian(lambda z: torch.nn.functional.cross_entropy(z[None], target[None]))(out)
        S = ref.hessian_sqrt(H)  # [M, C_out]
        return x, S.reshape(S.shape[0], 1, cout, *y.shape[2:]), ref.ggn(lambda t: layer(t).reshape(-1), theta, H)
    if setting == "per-position":

        def model(t: torch.Tensor) -> torch.Tensor:
            return torch.einsum("dc,nc...->nd...", V, layer(t)).reshape(-1)

        # MSE (sum) per entry: H = 2 I; its root 2^½ I pulled back through V, one column per (c2, position)
        eye = torch.eye(positions, dtype=DT)
        S = math.sqrt(2) * torch.einsum("dc,pq->dpcq", V, eye).reshape(c2 * positions, 1, cout, *y.shape[2:])
        S = S.expand(-1, n, *S.shape[2:])
    else:

        def model(t: torch.Tensor) -> torch.Tensor:
            return torch.einsum("dc,nc->nd", V, layer(t).reshape(n, cout, -1).mean(-1)).reshape(-1)

        S = (math.sqrt(2) / positions) * V.reshape(c2, 1, cout, *([1] * len(y.shape[2:])))
        S = S.expand(c2, n, cout, *y.shape[2:])
    H = 2 * torch.eye(model(theta).numel(), dtype=DT)
    return x, S.contiguous(), ref.ggn(model, theta, H)


EXACT_CASES = {
    "2d-stride-pad": CONV_CASES["2d-stride-pad"],
    "2d-reflect": CONV_CASES["2d-reflect"],
    "2d-same-circular": CONV_CASES["2d-same-circular"],
    "2d-T-asym": CONV_CASES["2d-T-asym"],
    "2d-circular-stride-groups": CONV_CASES["2d-circular-stride"],
    "3d-mixed": CONV_CASES["3d-mixed"],
}


@pytest.mark.parametrize(("setting", "exact"), [("per-position", "expand"), ("pooled", "reduce")])
@pytest.mark.parametrize("name", sorted(EXACT_CASES))
def test_kfac_equals_ggn_where_exact(name: str, setting: str, exact: str) -> None:
    """Conv → per-position linear → MSE: expand is the GGN; with the positions averaged first: reduce is."""
    cfg = EXACT_CASES[name]
    x, S, exact_ggn = _exact_case(cfg, setting)
    spec = _spec(cfg)
    w_numel = math.prod(cfg.weight_shape)
    want = _group_blocks(exact_ggn, cfg, w_numel)
    got = _group_blocks(tnderiv.kfac(spec, x, S, approx=exact, bias_mode="append").to_dense(), cfg, w_numel)
    for g, (mine, theirs) in enumerate(zip(got, want)):
        torch.testing.assert_close(mine, theirs, rtol=1e-8, atol=1e-9, msg=f"group {g}")
    if cfg.groups == 1:
        # the other approximation is not exact here (the test can fail)
        other = "reduce" if exact == "expand" else "expand"
        assert not torch.allclose(tnderiv.kfac(spec, x, S, approx=other, bias_mode="append").to_dense(), exact_ggn, rtol=1e-3)


SINGLE_POSITION = {
    "1d-reflect": ConvConfig(1, 2, 3, (3,), (1,), (1,), ((1, 0),), padding_mode="reflect", batch=1, input_size=(2,)),
    "2d-kernel-covers-input": ConvConfig(2, 2, 3, (2, 3), (1, 1), (1, 1), 0, batch=1, input_size=(2, 3)),
    "2d-replicate-dilated": ConvConfig(2, 1, 2, (2, 2), (2, 2), (2, 1), ((2, 0), (0, 1)), padding_mode="replicate", batch=1, input_size=(1, 1)),
}


@pytest.mark.parametrize("approx", APPROX)
@pytest.mark.parametrize("name", sorted(SINGLE_POSITION))
def test_kfac_exact_for_one_sample_and_one_position(name: str, approx: str) -> None:
    cfg = SINGLE_POSITION[name]
    x, S, exact_ggn = _exact_case(cfg, "single")
    k = tnderiv.kfac(_spec(cfg), x, S, approx=approx, bias_mode="append")
    torch.testing.assert_close(k.to_dense(), exact_ggn, rtol=1e-8, atol=1e-10)
    separate = tnderiv.kfac(_spec(cfg), x, S, approx=approx, bias_mode="separate").to_dense()
    w = math.prod(cfg.weight_shape)
    torch.testing.assert_close(separate[:w, :w], exact_ggn[:w, :w], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(separate[w:, w:], exact_ggn[w:, w:], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(("pooled", "approx"), [(False, "expand"), (True, "reduce")])
def test_deep_linear_network_with_weight_sharing(pooled: bool, approx: str) -> None:
    """Three dense layers on [N, S, D] inputs, MSE per position (expand exact) or on the position mean
    (reduce exact): KFAC of the middle layer is its GGN block."""
    gen = torch.Generator().manual_seed(7)
    n, s, dims = 3, 4, (3, 4, 2, 3)
    x = torch.randn(n, s, dims[0], generator=gen, dtype=DT)
    ws = [torch.randn(dims[i + 1], dims[i], generator=gen, dtype=DT) for i in range(3)]
    bs = [torch.randn(dims[i + 1], generator=gen, dtype=DT) for i in range(3)]
    hidden = x @ ws[0].T + bs[0]

    def model(theta: torch.Tensor) -> torch.Tensor:
        w1 = theta[: ws[1].numel()].reshape(ws[1].shape)
        out = (hidden @ w1.T + theta[ws[1].numel() :]) @ ws[2].T + bs[2]
        return (out.mean(1) if pooled else out).reshape(-1)

    theta = torch.cat([ws[1].reshape(-1), bs[1]])
    exact = ref.ggn(model, theta, 2 * torch.eye(model(theta).numel(), dtype=DT))
    # the loss-Hessian root pulled back to the middle layer's output [M, N, S, D2]
    root = math.sqrt(2) * ws[2].T  # [D2, D3] → columns per output feature
    if pooled:
        S = (root.T / s)[:, None, None, :].expand(dims[3], n, s, dims[2])
    else:
        S = torch.einsum("ed,pq->epqd", root.T, torch.eye(s, dtype=DT)).reshape(dims[3] * s, 1, s, dims[2])
        S = S.expand(-1, n, s, dims[2])
    k = tnderiv.kfac(tnderiv.Linear(dims[1], dims[2]), hidden, S.contiguous(), approx=approx, bias_mode="append")
    torch.testing.assert_close(k.to_dense(), exact, rtol=1e-8, atol=1e-10)
