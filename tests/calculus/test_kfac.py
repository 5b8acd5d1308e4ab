"""KFAC factors: brute-force unfold definitions, exact GGN blocks where KFAC is exact, operator algebra, peers.

Every reference is computed without tnderiv (``cases/kfac_cases.py``, torch.func, the peers themselves).
"""

from __future__ import annotations

import math

import pytest
import torch
from cases import kfac_cases as ref
from cases.conv_cases import CONV_CASES, conv_configs
from cases.torch_oracles import ConvConfig, conv_oracle
from hypothesis import given, settings
from hypothesis import strategies as st

import tnderiv

DT = torch.float64
APPROX = ("expand", "reduce")
LOSS_AVERAGES = (None, "batch", "batch+positions")


def _spec(cfg: ConvConfig) -> tnderiv.Conv:
    return tnderiv.Conv(cfg.in_channels, cfg.out_channels, cfg.kernel_size, **cfg.spec_kwargs())


def _data(cfg: ConvConfig, seed: int, dtype: torch.dtype = DT) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(cfg.x_shape, generator=gen, dtype=dtype)
    w = torch.randn(cfg.weight_shape, generator=gen, dtype=dtype)
    return x, w, conv_oracle(cfg, x, w, None)


def _close(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-9, atol: float = 1e-10) -> None:
    assert got.shape == want.shape, f"shape {tuple(got.shape)} vs {tuple(want.shape)}"
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


# ----- the unfold oracle itself -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONV_CASES))
def test_unfold_oracle_reproduces_the_convolution(name: str) -> None:
    """Σ_d a[n, o, g, d] W[g, c_out, d] is torch's convolution: the oracle the factors rest on is right."""
    cfg = CONV_CASES[name]
    x, w, y = _data(cfg, 0)
    a = ref.unfold(cfg, x)
    out = torch.einsum("n...gd,gcd->ng...c", a, ref.weight_matrix(cfg, w))
    out = out.movedim(-1, 2).reshape(y.shape[0], -1, *y.shape[2:])  # [N, (g c_out), *O]
    _close(out, y)


# ----- factors vs the unfold definitions: the core sweep ---------------------------------------------


def _check_conv(cfg: ConvConfig, seed: int, approx: str, bias: str, loss_average: str | None, sqrt: bool) -> None:
    x, _, y = _data(cfg, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    grad = torch.randn((3, *y.shape) if sqrt else y.shape, generator=gen, dtype=DT)
    k = tnderiv.kfac(_spec(cfg), x, grad, approx=approx, bias=bias, loss_average=loss_average)
    a = ref.unfold(cfg, x)
    append = bias == "append" and cfg.bias
    _close(k.A, ref.input_factor(a, approx, append))
    rows = ref.conv_output_rows(grad, cfg.groups, sqrt)
    G = ref.output_factor(rows, approx, ref.correction(loss_average, x.shape[0], math.prod(y.shape[2:]), sqrt))
    _close(k.G, G)
    if cfg.bias and bias == "separate":
        _close(k.A_bias, torch.ones(cfg.groups, 1, 1, dtype=DT))
        _close(k.G_bias, G)
    else:
        assert k.A_bias is None and k.G_bias is None


@settings(max_examples=30, deadline=None)
@given(
    cfg=conv_configs(),
    seed=st.integers(0, 2**16),
    approx=st.sampled_from(APPROX),
    bias=st.sampled_from(("separate", "append")),
    loss_average=st.sampled_from(LOSS_AVERAGES),
    sqrt=st.booleans(),
)
def test_conv_factors_match_unfold_definitions(cfg, seed, approx, bias, loss_average, sqrt) -> None:
    _check_conv(cfg, seed, approx, bias, loss_average, sqrt)


@pytest.mark.parametrize("approx", APPROX)
@pytest.mark.parametrize("name", sorted(CONV_CASES))
def test_conv_factors_fixed_cases(name: str, approx: str) -> None:
    _check_conv(CONV_CASES[name], 3, approx, "append", "batch", sqrt=False)


@pytest.mark.parametrize("approx", APPROX)
@pytest.mark.parametrize("name", ["2d-depthwise", "2d-T-pad", "3d-reflect", "2d-same-circular"])
def test_unreduced_halves(name: str, approx: str) -> None:
    """``a`` is the unfolded input (reduce: averaged over positions); ``g`` the output rows (reduce: summed)."""
    cfg = CONV_CASES[name]
    x, _, y = _data(cfg, 1)
    grad = torch.randn(2, *y.shape, dtype=DT)
    A, a = tnderiv.kfac_factors_input(_spec(cfg), x, approx, unreduced=True)
    want = ref.unfold(cfg, x)
    if approx == "reduce":
        want = want.reshape(x.shape[0], -1, *want.shape[-2:]).mean(1)
    _close(a, want)
    _close(A, ref.input_factor(ref.unfold(cfg, x), approx))
    G, g = tnderiv.kfac_factors_output(_spec(cfg), grad, approx, unreduced=True)
    rows = ref.conv_output_rows(grad, cfg.groups, sqrt=True)  # [M, N, S, G, c_out]
    if approx == "reduce":
        _close(g, rows.sum(2))
    else:
        _close(g, rows.reshape(*grad.shape[:2], *y.shape[2:], *rows.shape[-2:]))
    _close(G, ref.output_factor(rows, approx, 1.0))


@pytest.mark.parametrize("shared", [0, 1, 2])
@pytest.mark.parametrize("approx", APPROX)
@pytest.mark.parametrize("loss_average", LOSS_AVERAGES)
def test_dense_factors_with_weight_sharing(shared: int, approx: str, loss_average: str | None) -> None:
    gen = torch.Generator().manual_seed(shared)
    lead = (3, *(2 + j for j in range(shared)))
    x = torch.randn(*lead, 4, generator=gen, dtype=DT)
    grad = torch.randn(*lead, 5, generator=gen, dtype=DT)
    sqrt = torch.randn(2, *lead, 5, generator=gen, dtype=DT)
    spec = tnderiv.Linear(4, 5)
    k = tnderiv.kfac(spec, x, grad, approx=approx, bias="append", loss_average=loss_average)
    a = x.reshape(*lead, 1, 4)
    _close(k.A, ref.input_factor(a, approx, append=True))
    positions = math.prod(lead[1:])
    _close(k.G, ref.output_factor(ref.dense_output_rows(grad, False), approx, ref.correction(loss_average, 3, positions, False)))
    G = tnderiv.kfac_factors_output(spec, sqrt, approx, hessian_sqrt=True)
    _close(G, ref.output_factor(ref.dense_output_rows(sqrt, True), approx, 1.0))


def test_float32_and_modules() -> None:
    """A torch module works like its spec; float32 agrees with the float64 reference to float32 accuracy."""
    module = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, padding_mode="reflect")
    cfg = ConvConfig(2, 4, 6, (3, 3), (2, 2), (1, 1), 1, groups=2, padding_mode="reflect", batch=3, input_size=(7, 6))
    x, _, y = _data(cfg, 5)
    grad = torch.randn(y.shape, dtype=DT)
    k = tnderiv.kfac(module, x.float(), grad.float(), approx="reduce")
    _close(k.A.double(), ref.input_factor(ref.unfold(cfg, x), "reduce"), rtol=1e-5, atol=1e-5)
    assert k.A.dtype == torch.float32


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
    got = _group_blocks(tnderiv.kfac(spec, x, S, approx=exact, bias="append").to_dense(), cfg, w_numel)
    for g, (mine, theirs) in enumerate(zip(got, want)):
        torch.testing.assert_close(mine, theirs, rtol=1e-8, atol=1e-9, msg=f"group {g}")
    if cfg.groups == 1:
        # the other approximation is not exact here (the test can fail)
        other = "reduce" if exact == "expand" else "expand"
        assert not torch.allclose(tnderiv.kfac(spec, x, S, approx=other, bias="append").to_dense(), exact_ggn, rtol=1e-3)


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
    k = tnderiv.kfac(_spec(cfg), x, S, approx=approx, bias="append")
    torch.testing.assert_close(k.to_dense(), exact_ggn, rtol=1e-8, atol=1e-10)
    separate = tnderiv.kfac(_spec(cfg), x, S, approx=approx, bias="separate").to_dense()
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
    k = tnderiv.kfac(tnderiv.Linear(dims[1], dims[2]), hidden, S.contiguous(), approx=approx, bias="append")
    torch.testing.assert_close(k.to_dense(), exact, rtol=1e-8, atol=1e-10)


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
    k = tnderiv.kfac(_spec(cfg), x, torch.randn(y.shape, dtype=DT), approx=approx, bias=bias)
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
    factors = tnderiv.kfac(_spec(cfg), x, torch.randn(y.shape, dtype=DT), approx=approx, bias=bias)
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
    k = tnderiv.kfac(_spec(cfg), x, torch.randn(y.shape, dtype=DT), bias="separate")
    w = math.prod(cfg.weight_shape)
    _close(k.to_dense()[:w, :w], torch.kron(k.G[0], k.A[0]))
    _close(k.to_dense()[w:, w:], k.G_bias[0] * k.A_bias[0, 0, 0])


# ----- the derivation ---------------------------------------------------------------------------------------


def test_reduce_never_unfolds_the_input() -> None:
    """KFAC-reduce sums the positions inside each half first: no intermediate as large as the unfolded input."""
    cfg = ConvConfig(2, 8, 4, (3, 3), (1, 1), (1, 1), 1, batch=4, input_size=(16, 16))
    x, _, y = _data(cfg, 0)
    k = tnderiv.kfac(_spec(cfg), x, torch.randn(y.shape, dtype=DT), approx="reduce")
    unfolded = x.shape[0] * math.prod(y.shape[2:]) * cfg.in_channels * 9
    largest = max(step.size for plan in k.plans["A"] for step in plan.steps())
    assert largest < unfolded / 10, f"largest intermediate {largest} vs unfolded input {unfolded}"
    d = tnderiv.diagram(_spec(cfg), "kfac_input_reduce")
    copies = [set(n.legs) for n in d.nodes if n.name == "x"]
    assert len(copies) == 2 and not (copies[0] & copies[1]) - {"n", "g"}, str(d)


def test_layer_given_only_by_its_diagram() -> None:
    """A dense layer written as a diagram: with its sharing leg declared, KFAC matches the unfold-free
    definition; undeclared, the VJP does not split and the error names the joining leg."""
    from tnderiv.ir import Diagram, operand, size_symbol

    sizes = {"n": size_symbol("N"), "t": size_symbol("T"), "c_in": 3, "c_out": 2}
    forward = Diagram((operand("x", "n", "t", "c_in"), operand("weight", "c_out", "c_in")), ("n", "t", "c_out"), sizes)
    x = torch.randn(4, 5, 3, dtype=DT)
    grad = torch.randn(4, 5, 2, dtype=DT)
    declared = tnderiv.DiagramLayer(forward, ("x",), ("weight",), shared_legs=("t",))
    for approx in APPROX:
        k = tnderiv.kfac(declared, x, grad, approx=approx, loss_average=None)
        _close(k.A, ref.input_factor(x[:, :, None], approx))
        _close(k.G, ref.output_factor(ref.dense_output_rows(grad, False), approx, 1.0))
    undeclared = tnderiv.DiagramLayer(forward, ("x",), ("weight",))
    with pytest.raises(ValueError, match=r"legs \['t'\] join \['x'\] to grad_out"):
        tnderiv.kfac(undeclared, x, grad)


def test_registered_diagrams() -> None:
    spec = tnderiv.Linear(3, 2)
    for quantity in ("kfac_input_expand", "kfac_input_reduce", "kfac_output_expand", "kfac_output_reduce"):
        assert quantity in tnderiv.QUANTITIES
        d = tnderiv.diagram(spec, quantity)
        assert sorted(d.operand_names) in (["x"], ["grad_out"])


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
        k = tnderiv.kfac(conv, x, tensor.detach(), approx=approx, bias=bias, loss_average="batch")
        _close(op._input_covariances["0"], k.A[0])
        _close(op._gradient_covariances["0"], k.G[0])


@pytest.mark.parametrize("approx", APPROX)
@pytest.mark.parametrize("loss_average", [None, "batch", "batch+positions"])
def test_singd_table(approx: str, loss_average: str | None) -> None:
    """SINGD's Gram matrices ``(K, C)`` are our ``A`` with ``bias="append"`` and our ``G`` with the same
    ``loss_average`` (``"batch+sequence"`` is ``"batch+positions"``), for ungrouped convolutions."""
    conv, _, x = _peer_model(2)
    grad_out = torch.randn(conv(x).shape, dtype=DT)
    peer_average = "batch+sequence" if loss_average == "batch+positions" else loss_average
    K, C = ref.singd_conv2d(x, grad_out, conv, approx, peer_average)
    k = tnderiv.kfac(conv, x, grad_out, approx=approx, bias="append", loss_average=loss_average)
    _close(K, k.A[0])
    _close(C, k.G[0])


# ----- bad input --------------------------------------------------------------------------------------------


def test_bad_arguments_raise_naming_them() -> None:
    spec = tnderiv.Conv(2, 4, 3, padding=1)
    x = torch.randn(2, 2, 5, 5, dtype=DT)
    g = torch.randn(2, 4, 5, 5, dtype=DT)
    with pytest.raises(ValueError, match="approx='expanded'"):
        tnderiv.kfac(spec, x, g, approx="expanded")
    with pytest.raises(ValueError, match="bias='joint'"):
        tnderiv.kfac(spec, x, g, bias="joint")
    with pytest.raises(ValueError, match="loss_average='mean'"):
        tnderiv.kfac(spec, x, g, loss_average="mean")
    with pytest.raises(ValueError, match=r"grad_out has shape \(2, 4, 5\)"):
        tnderiv.kfac(spec, x, g[..., 0])
    with pytest.raises(ValueError, match="leg n has size 2 from x but 3 from grad_out"):
        tnderiv.kfac(spec, x, torch.randn(3, 4, 5, 5, dtype=DT))
    with pytest.raises(ValueError, match="o1 has size 5 from x but 4 from grad_out"):
        tnderiv.kfac(spec, x, torch.randn(2, 4, 5, 4, dtype=DT))
    with pytest.raises(TypeError, match="dtype"):
        tnderiv.kfac(spec, x, g.float())
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        tnderiv.kfac(spec, x.numpy(), g)
    with pytest.raises(TypeError, match="unreduced=1"):
        tnderiv.kfac_factors_input(spec, x, unreduced=1)
    with pytest.raises(ValueError, match="hessian_sqrt=True or False"):
        tnderiv.kfac_factors_output(tnderiv.Linear(3, 4), torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match="damping=-1"):
        tnderiv.kfac(spec, x, g).inverse(-1)
    with pytest.raises(ValueError, match=r"expected a flat vector \[76\]"):
        tnderiv.kfac(spec, x, g).matvec(torch.randn(3))


def test_layer_coupling_the_batch_is_rejected() -> None:
    with pytest.raises(ValueError, match="couples the samples"):
        tnderiv.kfac_factors_input(tnderiv.BatchNorm(3), torch.randn(4, 3, 2, dtype=DT))
