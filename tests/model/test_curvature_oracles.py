"""``Curvature.compute`` on every model of the zoo against dense float64 oracles (torch.func, torch.autograd).

One call per model computes every quantity (they share one forward and backward); each test compares one
group of quantities: per-sample gradients and their statistics against ``vmap(grad)``, the GGN quantities
against ``Jᵀ H J`` from ``jacrev`` and ``hessian``, KFAC (type-2, expand and reduce) against factors formed
here from square-root columns backpropagated with ``torch.autograd``.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
from curvature_cases import CASES
from curvature_oracles import Oracle, kfac_oracle

from tnderiv.model import Curvature, ExactCurvature

ALL = (
    "grad",
    "per_sample_grad",
    "sum_grad_squared",
    "batch_l2",
    "variance",
    "batch_dot",
    "kfac",
    "ggn_diag",
    "per_sample_ggn_diag",
    "ggn_block",
    "ggn_gram",
)
TOL = {"rtol": 1e-9, "atol": 1e-11}


@functools.cache
def computed(name: str, approx: str = "expand") -> tuple[Any, Any, Any, Oracle]:
    """``(model, result, oracle)`` for a case: all quantities in one call."""
    case = CASES[name]
    model, x, y = case.make()
    res = Curvature(model, case.loss(), approx=approx).compute(x, y, ALL if approx == "expand" else ("kfac",), set_grad=False)
    return case, model, res, Oracle(model, case.loss(), x, y, classes_last=case.classes_last)


def value(res: Any, canonical: str, q: str) -> torch.Tensor:
    module, _, local = canonical.rpartition(".")
    return res[module][q][local]


@pytest.mark.parametrize("name", list(CASES))
def test_first_order(name: str) -> None:
    case, model, res, oracle = computed(name)
    torch.testing.assert_close(res.loss, oracle.loss(oracle.theta).detach(), **TOL)
    psg, g = oracle.psg(), oracle.grad()
    n = oracle.y.shape[0]
    for p in oracle.names:
        s = psg[p]
        flat = s.reshape(n, -1)
        torch.testing.assert_close(value(res, p, "grad"), g[p], **TOL)
        torch.testing.assert_close(res.grads[p], g[p], **TOL)
        torch.testing.assert_close(value(res, p, "per_sample_grad"), s, **TOL)
        torch.testing.assert_close(value(res, p, "sum_grad_squared"), (s**2).sum(0), **TOL)
        torch.testing.assert_close(value(res, p, "batch_l2"), (flat**2).sum(1), **TOL)
        torch.testing.assert_close(value(res, p, "variance"), (s**2).mean(0) - s.mean(0) ** 2, **TOL)
        torch.testing.assert_close(value(res, p, "batch_dot"), flat @ flat.T, **TOL)


@pytest.mark.parametrize("name", list(CASES))
def test_ggn(name: str) -> None:
    case, model, res, oracle = computed(name)
    for p in oracle.names:
        torch.testing.assert_close(value(res, p, "ggn_diag"), oracle.ggn_diag(p), **TOL)
        torch.testing.assert_close(value(res, p, "ggn_block"), oracle.ggn_block(p), **TOL)
        torch.testing.assert_close(value(res, p, "per_sample_ggn_diag"), oracle.per_sample_ggn_diag(p), **TOL)


def _spectrum(matrix: torch.Tensor, k: int) -> torch.Tensor:
    lam = torch.linalg.eigvalsh(matrix).flip(0)
    return torch.cat([lam, lam.new_zeros(max(0, k - lam.numel()))])[:k]


@pytest.mark.parametrize("name", list(CASES))
def test_ggn_gram(name: str) -> None:
    """The Gram ``Cᵀ C`` of the backpropagated columns has the nonzero spectrum of ``C Cᵀ`` = the GGN (any square root)."""
    case, model, res, oracle = computed(name)
    gram = res.ggn_gram
    m, n = gram.shape[0], gram.shape[1]
    assert gram.shape == (m, n, m, n) and n == oracle.y.shape[0]
    flat = gram.reshape(m * n, m * n)
    torch.testing.assert_close(flat, flat.T, **TOL)
    k = min(flat.shape[0], oracle.ggn().shape[0])
    torch.testing.assert_close(_spectrum(flat, k), _spectrum(oracle.ggn(), k), rtol=1e-8, atol=1e-10)
    summed = sum(value(res, p, "ggn_gram") for p in oracle.names)
    torch.testing.assert_close(summed, gram, **TOL)
    for p in oracle.names[:2]:
        part = value(res, p, "ggn_gram").reshape(m * n, m * n)
        block = oracle.ggn_block(p).reshape(oracle.slice(p).stop - oracle.slice(p).start, -1)
        kk = min(part.shape[0], block.shape[0])
        torch.testing.assert_close(_spectrum(part, kk), _spectrum(block, kk), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", ["mse-mean", "mse-sum"])
def test_ggn_gram_mse_exact(name: str) -> None:
    """MSE's loss Hessian is ``(2/D) I``: its square root is ``√(2/D) I`` and the Gram is ``(2/D) J Jᵀ`` entry by entry."""
    case, model, res, oracle = computed(name)
    j = oracle.jacobian()  # [N·F, P], rows (n, f)
    n = oracle.y.shape[0]
    f = j.shape[0] // n
    expected = (2.0 / oracle.D) * (j @ j.T).reshape(n, f, n, f).permute(1, 0, 3, 2)
    torch.testing.assert_close(res.ggn_gram, expected, **TOL)


def _check_kfac(name: str, approx: str) -> None:
    case, model, res, oracle = computed(name, approx)
    modules = dict(model.named_modules())
    cols = oracle.layer_columns({m: modules[m] for m in case.kfac})
    for m in case.kfac:
        k = res[m]["kfac"]
        expected = kfac_oracle(modules[m], *cols[m], approx=approx)
        torch.testing.assert_close(k.to_dense(), expected.dense, **TOL)
        if not isinstance(modules[m], torch.nn.modules.conv._ConvTransposeNd):  # rows in weight order
            torch.testing.assert_close(k.A, expected.A, **TOL)
            torch.testing.assert_close(k.G, expected.G, **TOL)


@pytest.mark.parametrize("name", list(CASES))
def test_kfac_type2_expand(name: str) -> None:
    _check_kfac(name, "expand")


@pytest.mark.parametrize("name", ["cnn", "encoder", "residual"])
def test_kfac_type2_reduce(name: str) -> None:
    _check_kfac(name, "reduce")


@pytest.mark.parametrize("name", list(CASES))
def test_exact_curvature_where_no_kfac(name: str) -> None:
    """Modules without KFAC (fallbacks, tied or repeated parameters) get their exact joint GGN block."""
    case, model, res, oracle = computed(name)
    exact = {m: res[m]["kfac"] for m in res if isinstance(res[m].get("kfac"), ExactCurvature)}
    assert set(exact) == set(res) - set(case.kfac)
    for m, curv in exact.items():
        names = [f"{m}.{p}" if m else p for p in curv.names]
        assert curv.kind == "ggn_block"
        torch.testing.assert_close(curv.to_dense(), oracle.joint_block(names), **TOL)
