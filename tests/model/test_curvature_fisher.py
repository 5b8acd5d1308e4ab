"""Fisher types and KFAC options of ``Curvature`` against oracles formed in the test.

- ``empirical``: GGN quantities of the columns ``√D·g`` equal reductions of ``vmap(grad)`` per-sample gradients;
  KFAC's ``G`` is ``c Σ g gᵀ`` of autograd output gradients with ``c`` from ``loss_average``.
- ``mc``: a statistical test. ``K`` independent calls (seeds) of ``mc_samples`` columns each give ``K`` iid
  unbiased estimates; their mean must lie within ``5`` standard errors (plus ``1e-12``) of the exact value, entry
  by entry (Student t with 19 degrees of freedom: a false alarm per entry has probability ~1e-4; the seeds are
  fixed, so the test is deterministic). Observed: at most 3.1 standard errors, 1-2 % relative error in norm.
- ``forward-only``: ``G = I``; ``kfac_bias="append"``; ``precondition`` against a dense solve.
"""

from __future__ import annotations

import pytest
import torch
from curvature_cases import CASES
from curvature_oracles import Oracle, kfac_oracle, psd_inverse_apply

from tnderiv.model import Curvature

TOL = {"rtol": 1e-9, "atol": 1e-11}


def _value(res, canonical: str, q: str) -> torch.Tensor:
    module, _, local = canonical.rpartition(".")
    return res[module][q][local]


@pytest.mark.parametrize("name", ["mlp", "encoder", "mse-mean", "ce-sum", "fallback"])
def test_empirical_ggn_quantities_are_per_sample_gradient_products(name: str) -> None:
    """EF = (1/D) Σ_n ∇ℓ_n ∇ℓ_nᵀ: with psg_n = ∇ℓ_n / D the columns are √D·psg_n."""
    case = CASES[name]
    model, x, y = case.make()
    q = ("ggn_diag", "per_sample_ggn_diag", "ggn_block", "ggn_gram")
    res = Curvature(model, case.loss(), fisher="empirical").compute(x, y, q, set_grad=False)
    oracle = Oracle(model, case.loss(), x, y, classes_last=case.classes_last)
    psg, d, n = oracle.psg(), oracle.D, y.shape[0]
    gram = 0
    for p in oracle.names:
        s = psg[p].reshape(n, -1)
        shape = oracle.shapes[p]
        torch.testing.assert_close(_value(res, p, "ggn_diag"), d * (psg[p] ** 2).sum(0), **TOL)
        torch.testing.assert_close(_value(res, p, "per_sample_ggn_diag"), d * psg[p] ** 2, **TOL)
        torch.testing.assert_close(_value(res, p, "ggn_block"), (d * s.T @ s).reshape(*shape, *shape), **TOL)
        torch.testing.assert_close(_value(res, p, "ggn_gram"), (d * s @ s.T).reshape(1, n, 1, n), **TOL)
        gram = gram + d * s @ s.T
    torch.testing.assert_close(res.ggn_gram, gram.reshape(1, n, 1, n), **TOL)


@pytest.mark.parametrize(
    ("name", "approx", "loss_average"),
    [
        ("mlp", "expand", "batch"),
        ("mlp", "expand", None),
        ("cnn", "expand", "batch"),
        ("cnn", "reduce", "batch+positions"),
        ("encoder", "expand", "batch+positions"),
        ("encoder", "reduce", "batch"),
        ("ce-sum", "expand", None),
    ],
)
def test_empirical_kfac(name: str, approx: str, loss_average: str | None) -> None:
    case = CASES[name]
    model, x, y = case.make()
    curv = Curvature(model, case.loss(), fisher="empirical", approx=approx, loss_average=loss_average)
    res = curv.compute(x, y, ("kfac",), set_grad=False)
    oracle = Oracle(model, case.loss(), x, y, classes_last=case.classes_last)
    modules = dict(model.named_modules())
    cols = oracle.layer_columns({m: modules[m] for m in case.kfac}, kind="empirical")
    n = y.shape[0]
    for m in case.kfac:
        out = cols[m][1]
        positions = out[0, 0].numel() // res[m]["kfac"].G.shape[0] // res[m]["kfac"].G.shape[-1]
        c = {None: 1.0, "batch": n, "batch+positions": n * positions}[loss_average]
        expected = kfac_oracle(modules[m], *cols[m], approx=approx, scale=c)
        torch.testing.assert_close(res[m]["kfac"].to_dense(), expected.dense, **TOL)


def _mc_mean_and_error(case_name: str, q: str, seeds: int, samples: int):
    case = CASES[case_name]
    model, x, y = case.make()
    draws = []
    for seed in range(seeds):
        gen = torch.Generator().manual_seed(1000 + seed)
        curv = Curvature(model, case.loss(), fisher="mc", mc_samples=samples, generator=gen)
        res = curv.compute(x, y, (q,), set_grad=False)
        if q == "kfac":
            draws.append(torch.cat([res[m]["kfac"].G.reshape(-1) for m in case.kfac]))
        else:
            draws.append(torch.cat([_value(res, p, q).reshape(-1) for p, _ in model.named_parameters()]))
    stacked = torch.stack(draws)
    return model, x, y, case, stacked.mean(0), stacked.std(0) / seeds**0.5


@pytest.mark.parametrize("name", ["mlp", "mse-mean", "bce-sum", "tied"])
def test_mc_ggn_diag_is_unbiased(name: str) -> None:
    model, x, y, case, mean, err = _mc_mean_and_error(name, "ggn_diag", seeds=20, samples=50)
    oracle = Oracle(model, case.loss(), x, y, classes_last=case.classes_last)
    exact = torch.cat([oracle.ggn_diag(p).reshape(-1) for p in oracle.names])
    assert (err > 0).any()
    assert ((mean - exact).abs() <= 5 * err + 1e-12).all(), (mean - exact).abs() / (err + 1e-300)
    # and the estimate is not trivially loose: 20·50 columns are within 10 % of the exact diagonal in norm
    assert float((mean - exact).norm() / exact.norm()) < 0.1


def test_mc_kfac_output_factor_is_unbiased() -> None:
    model, x, y, case, mean, err = _mc_mean_and_error("mlp", "kfac", seeds=20, samples=50)
    oracle = Oracle(model, case.loss(), x, y)
    modules = dict(model.named_modules())
    cols = oracle.layer_columns({m: modules[m] for m in case.kfac})
    exact = torch.cat([kfac_oracle(modules[m], *cols[m], approx="expand").G.reshape(-1) for m in case.kfac])
    assert ((mean - exact).abs() <= 5 * err + 1e-12).all()


def test_mc_is_seeded_and_sampled() -> None:
    case = CASES["mlp"]
    model, x, y = case.make()

    def run(seed: int) -> torch.Tensor:
        curv = Curvature(model, case.loss(), fisher="mc", mc_samples=3, generator=torch.Generator().manual_seed(seed))
        return curv.compute(x, y, ("ggn_gram",), set_grad=False).ggn_gram

    a, b, c = run(1), run(1), run(2)
    assert a.shape == (3, 4, 3, 4)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize(("name", "approx"), [("mlp", "expand"), ("cnn", "reduce"), ("encoder", "expand")])
def test_forward_only_kfac_has_identity_output_factor(name: str, approx: str) -> None:
    case = CASES[name]
    model, x, y = case.make()
    res = Curvature(model, case.loss(), fisher="forward-only", approx=approx).compute(x, y, ("kfac",), set_grad=False)
    oracle = Oracle(model, case.loss(), x, y, classes_last=case.classes_last)
    modules = dict(model.named_modules())
    cols = oracle.layer_columns({m: modules[m] for m in case.kfac}, kind="empirical")
    for m in case.kfac:
        expected = kfac_oracle(modules[m], *cols[m], approx=approx, g_identity=True)
        torch.testing.assert_close(res[m]["kfac"].to_dense(), expected.dense, **TOL)


@pytest.mark.parametrize(("name", "approx"), [("mlp", "expand"), ("cnn", "expand"), ("cnn", "reduce"), ("encoder", "reduce")])
def test_kfac_bias_append(name: str, approx: str) -> None:
    case = CASES[name]
    model, x, y = case.make()
    res = Curvature(model, case.loss(), approx=approx, kfac_bias="append").compute(x, y, ("kfac",), set_grad=False)
    oracle = Oracle(model, case.loss(), x, y, classes_last=case.classes_last)
    modules = dict(model.named_modules())
    layers = [m for m in case.kfac if not isinstance(modules[m], torch.nn.LayerNorm)]
    cols = oracle.layer_columns({m: modules[m] for m in layers})
    for m in layers:
        expected = kfac_oracle(modules[m], *cols[m], approx=approx, bias="append")
        torch.testing.assert_close(res[m]["kfac"].to_dense(), expected.dense, **TOL)


@pytest.mark.parametrize(("name", "bias"), [("cnn", "separate"), ("fallback", "separate"), ("tied", "separate"), ("cnn", "append")])
def test_precondition_is_damped_dense_solve(name: str, bias: str) -> None:
    """``precondition(δ)`` = ``(C + δI)⁻¹ g`` per module, ``C`` the KFAC (or exact GGN block) formed densely here."""
    case = CASES[name]
    model, x, y = case.make()
    res = Curvature(model, case.loss(), kfac_bias=bias).compute(x, y, ("grad", "kfac"), set_grad=False)
    oracle = Oracle(model, case.loss(), x, y, classes_last=case.classes_last)
    modules = dict(model.named_modules())
    cols = oracle.layer_columns({m: modules[m] for m in case.kfac})
    g = oracle.grad()
    damping = 0.3
    step = res.precondition(damping)
    assert set(step) == set(oracle.names)
    done = set()
    for m in res:
        if m in case.kfac:
            dense = kfac_oracle(modules[m], *cols[m], approx="expand", bias=bias).dense
            names = [f"{m}.{p}" for p, _ in modules[m].named_parameters(recurse=False)]
        else:
            names = [f"{m}.{p}" if m else p for p in res[m]["kfac"].names]
            dense = oracle.joint_block(names)
        v = torch.cat([g[p].reshape(-1) for p in names])
        expected = psd_inverse_apply(dense, damping, v)
        got = torch.cat([step[p].reshape(-1) for p in names])
        torch.testing.assert_close(got, expected, **TOL)
        done.update(names)
    assert done == set(oracle.names)
