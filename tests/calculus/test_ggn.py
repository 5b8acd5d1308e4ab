"""GGN blocks, diagonals, per-sample diagonals and Gram matrices against dense float64 ``Jᵀ H J`` from torch.func."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from cases.conv_cases import CONV_CASES, conv_configs
from cases.torch_oracles import ConvConfig, conv_oracle
from hypothesis import given, settings

import tnderiv
from tnderiv.ir import Diagram, operand, size_symbol

DT = torch.float64
TOL = dict(rtol=1e-9, atol=1e-9)


def rand(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=DT)


def jacobians(f, params: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """``J[name][n, out, p]``: the layer output of sample ``n`` w.r.t. each parameter, flattened (torch.func.jacrev)."""
    names = list(params)
    jac = torch.func.jacrev(lambda *ps: f(dict(zip(names, ps))), argnums=tuple(range(len(names))))(*params.values())
    return {name: j.reshape(n, -1, params[name].numel()) for name, j in zip(names, jac)}


def oracle(jac: torch.Tensor, s: torch.Tensor) -> dict[str, torch.Tensor]:
    """Dense references from per-sample Jacobians ``[N, out, P]`` and square roots ``[M, N, *out]``."""
    m, n = s.shape[:2]
    v = torch.einsum("mno,nop->mnp", s.reshape(m, n, -1), jac)  # V = Jᵀ S per sample and column
    return {
        "block": torch.einsum("mnp,mnq->pq", v, v),
        "diag": (v**2).sum((0, 1)),
        "per_sample_diag": (v**2).sum(0),
        "per_sample_block": torch.einsum("mnp,mnq->npq", v, v),
        "gram": torch.einsum("mnp,kjp->mnkj", v, v),
    }


def check_all(layer, x: torch.Tensor, s: torch.Tensor, param: str, jac: torch.Tensor, shape: tuple[int, ...], **ops) -> None:
    want = oracle(jac, s)
    m, n = s.shape[:2]
    p = int(torch.tensor(shape).prod())
    block = tnderiv.ggn(layer, x, s, params=param, **ops)
    assert block.shape == (*shape, *shape)
    torch.testing.assert_close(block.reshape(p, p), want["block"], **TOL)
    diag = tnderiv.ggn(layer, x, s, params=param, kind="diag", **ops)
    assert diag.shape == shape
    torch.testing.assert_close(diag.reshape(-1), want["diag"], **TOL)
    per = tnderiv.ggn(layer, x, s, params=param, kind="diag", per_sample=True, **ops)
    assert per.shape == (n, *shape)
    torch.testing.assert_close(per.reshape(n, -1), want["per_sample_diag"], **TOL)
    per_block = tnderiv.ggn(layer, x, s, params=param, kind="block", per_sample=True, **ops)
    assert per_block.shape == (n, *shape, *shape)
    torch.testing.assert_close(per_block.reshape(n, p, p), want["per_sample_block"], **TOL)
    gram = tnderiv.ggn(layer, x, s, params=param, kind="gram", **ops)
    assert gram.shape == (m, n, m, n)
    torch.testing.assert_close(gram, want["gram"], **TOL)


def conv_case(cfg: ConvConfig, seed: int = 0, m: int = 2) -> None:
    gen = torch.Generator().manual_seed(seed)
    spec = tnderiv.Conv(cfg.in_channels, cfg.out_channels, cfg.kernel_size, **cfg.spec_kwargs())
    x, w = rand(gen, *cfg.x_shape), rand(gen, *cfg.weight_shape)
    params = {"weight": w} | ({"bias": rand(gen, cfg.out_channels)} if cfg.bias else {})
    y = conv_oracle(cfg, x, w, params.get("bias"))
    s = rand(gen, m, *y.shape)
    jac = jacobians(lambda ps: conv_oracle(cfg, x, ps["weight"], ps.get("bias")), params, cfg.batch)
    for name, value in params.items():
        check_all(spec, x, s, name, jac[name], tuple(value.shape))


@pytest.mark.parametrize("key", ["2d-stride-pad", "2d-asym-pairs", "2d-same-reflect", "2d-circular-stride", "2d-T-pad", "3d-T", "1d-T"])
def test_conv_cases(key: str) -> None:
    conv_case(CONV_CASES[key])


@settings(max_examples=20)
@given(conv_configs(dims=(1, 2)))
def test_conv_sweep(cfg: ConvConfig) -> None:
    conv_case(cfg, m=1 + cfg.batch % 2)


@pytest.mark.parametrize("shared", [(), (3,), (2, 2)])
def test_linear_with_weight_sharing(shared: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(1)
    spec = tnderiv.Linear(3, 4)
    x, w, b = rand(gen, 2, *shared, 3), rand(gen, 4, 3), rand(gen, 4)
    s = rand(gen, 3, 2, *shared, 4)
    jac = jacobians(lambda ps: F.linear(x, ps["weight"], ps["bias"]), {"weight": w, "bias": b}, 2)
    check_all(spec, x, s, "weight", jac["weight"], (4, 3))
    check_all(spec, x, s, "bias", jac["bias"], (4,))


def test_custom_bilinear_layer() -> None:
    """A layer defined only as a diagram gets every GGN quantity: ``y[n, o] = Σ x1[n, i] W[o, i, j] x2[n, j]``."""
    sizes = {"n": size_symbol("N"), "o": 2, "i": 3, "j": 2}
    forward = Diagram((operand("x1", "n", "i"), operand("weight", "o", "i", "j"), operand("x2", "n", "j")), ("n", "o"), sizes)
    layer = tnderiv.DiagramLayer(forward, inputs=("x1", "x2"), params=("weight",))
    gen = torch.Generator().manual_seed(2)
    x1, x2, w = rand(gen, 3, 3), rand(gen, 3, 2), rand(gen, 2, 3, 2)
    s = rand(gen, 2, 3, 2)
    jac = jacobians(lambda ps: torch.einsum("ni,oij,nj->no", x1, ps["weight"], x2), {"weight": w}, 3)
    check_all(layer, None, s, "weight", jac["weight"], (2, 3, 2), x1=x1, x2=x2)


@pytest.mark.parametrize(
    ("loss", "target"),
    [
        ("cross_entropy", lambda gen, y: torch.randint(0, y.shape[1], (y.shape[0], *y.shape[2:]), generator=gen)),
        ("mse", lambda gen, y: rand(gen, *y.shape)),
        ("bce_with_logits", lambda gen, y: torch.rand(y.shape, generator=gen, dtype=DT)),
    ],
)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_exact_ggn_is_the_loss_hessian(loss: str, target, reduction: str) -> None:
    """End to end: the layer is linear in its parameters, so ``Jᵀ H J`` is the Hessian of ``loss(layer(θ))``."""
    module = torch.nn.Conv1d(2, 3, 2, padding=1, padding_mode="reflect", dtype=DT)
    gen = torch.Generator().manual_seed(3)
    x = rand(gen, 2, 2, 3)
    y = module(x).detach()
    t = target(gen, y)
    s = tnderiv.loss_hessian_sqrt(loss, y, t, reduction=reduction)
    fn = {"cross_entropy": F.cross_entropy, "mse": F.mse_loss, "bce_with_logits": F.binary_cross_entropy_with_logits}[loss]
    w, b = module.weight.detach(), module.bias.detach()
    hessian = torch.func.hessian(lambda w_: fn(F.conv1d(F.pad(x, (1, 1), mode="reflect"), w_, b), t, reduction=reduction))(w)
    torch.testing.assert_close(tnderiv.ggn(module, x, s).reshape(w.numel(), -1), hessian.reshape(w.numel(), -1), **TOL)
    hessian_b = torch.func.hessian(lambda b_: fn(F.conv1d(F.pad(x, (1, 1), mode="reflect"), w, b_), t, reduction=reduction))(b)
    torch.testing.assert_close(tnderiv.ggn(module, x, s, params="bias"), hessian_b, **TOL)
    torch.testing.assert_close(tnderiv.ggn(module, x, s, kind="diag"), hessian.reshape(w.numel(), -1).diagonal().reshape(w.shape), **TOL)


def test_diagram_shares_sample_and_column_legs() -> None:
    """The diagonal is the VJP of sqrt_out glued to its copy: two x and two sqrt_out nodes, one hyperedge n."""
    d = tnderiv.diagram(tnderiv.Conv(2, 3, 3, bias=False), "ggn_diag_weight")
    names = [node.name for node in d.nodes if node.name]
    assert sorted(names) == ["sqrt_out", "sqrt_out", "x", "x"]
    assert d.leg_count["n"] == 4 and d.leg_count["m"] == 2
    assert d.open_legs == ("g", "c_out", "c_in", "k0", "k1")


def test_bad_input() -> None:
    spec = tnderiv.Conv(2, 3, 3)
    x = torch.randn(2, 2, 5, 5, dtype=DT)
    s = torch.randn(4, 2, 3, 3, 3, dtype=DT)
    with pytest.raises(ValueError, match="kind='trace'"):
        tnderiv.ggn(spec, x, s, kind="trace")
    with pytest.raises(ValueError, match="per_sample=True is not defined for kind='gram'"):
        tnderiv.ggn(spec, x, s, kind="gram", per_sample=True)
    with pytest.raises(ValueError, match=r"param='x'.*\['weight', 'bias'\]"):
        tnderiv.ggn(spec, x, s, params="x")
    with pytest.raises(ValueError, match="sqrt_out has shape"):
        tnderiv.ggn(spec, x, s[0])  # the column axis M is missing
    with pytest.raises(ValueError, match="sqrt_out has shape"):
        tnderiv.ggn(spec, x, torch.randn(4, 2, 3, 4, 3, dtype=DT))  # wrong output size
    with pytest.raises(TypeError, match="dtype"):
        tnderiv.ggn(spec, x, s.float())
    with pytest.raises(TypeError, match="per_sample"):
        tnderiv.ggn(spec, x, s, per_sample=1)


def test_layer_norm_module() -> None:
    """Parameters of a normalization layer (a network in the derived operand x̂) get the same quantities."""
    module = torch.nn.LayerNorm(4, dtype=DT)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        module.weight.copy_(rand(gen, 4))
        module.bias.copy_(rand(gen, 4))
    x = rand(gen, 3, 2, 4)
    s = rand(gen, 2, 3, 2, 4)
    params = {"weight": module.weight.detach(), "bias": module.bias.detach()}
    jac = jacobians(lambda ps: F.layer_norm(x, (4,), ps["weight"], ps["bias"]), params, 3)
    for name in params:
        check_all(module, x, s, name, jac[name], (4,))
