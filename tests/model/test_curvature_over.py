"""``compute_over`` over batches of unequal sizes equals ``compute`` on their concatenation (and the oracles).

With ``reduction="mean"`` each batch divides by its own ``D_b`` (samples, or kept tokens with ``ignore_index``),
the concatenation by ``Σ D_b``; KFAC's input factors average over rows (samples × positions for expand).
"""

from __future__ import annotations

import copy

import pytest
import torch
from curvature_cases import CASES
from curvature_oracles import call

from tnderiv.model import Curvature, ExactCurvature

TOL = {"rtol": 1e-10, "atol": 1e-13}
PARAM_QUANTITIES = ("grad", "per_sample_grad", "sum_grad_squared", "batch_l2", "variance", "ggn_diag", "per_sample_ggn_diag", "ggn_block")


def _split(x, y, sizes):
    out, start = [], 0
    for size in sizes:
        part = slice(start, start + size)
        if isinstance(x, dict):
            xs = {k: v[part] for k, v in x.items()}
        elif isinstance(x, tuple):
            xs = tuple(v[part] for v in x)
        else:
            xs = x[part]
        out.append((xs, y[part]))
        start += size
    return out


def _compare(over, whole, quantities) -> None:
    assert set(over) == set(whole)
    torch.testing.assert_close(over.loss.to(whole.loss.dtype), whole.loss, **TOL)
    for m in whole:
        for q in quantities:
            if q == "kfac":
                a, b = over[m]["kfac"], whole[m]["kfac"]
                assert type(a) is type(b)
                if not isinstance(b, ExactCurvature):
                    torch.testing.assert_close(a.A, b.A, **TOL)
                    torch.testing.assert_close(a.G, b.G, **TOL)
                torch.testing.assert_close(a.to_dense(), b.to_dense(), **TOL)
                continue
            for p, t in whole[m][q].items():
                torch.testing.assert_close(over[m][q][p], t, **TOL)


@pytest.mark.parametrize(
    ("name", "sizes"),
    [("mlp", (2, 5, 1)), ("encoder", (1, 3)), ("ce-sum", (3, 2)), ("mse-mean", (4, 1)), ("tied", (2, 2)), ("dict", (1, 4))],
)
def test_type2_over_unequal_batches_equals_the_concatenation(name: str, sizes) -> None:
    case = CASES[name]
    model, x, y = case.make(n=sum(sizes))
    q = (*PARAM_QUANTITIES, "kfac")
    curv = Curvature(model, case.loss())
    whole = curv.compute(x, y, q, set_grad=False)
    over = curv.compute_over(_split(x, y, sizes), q, set_grad=False)
    _compare(over, whole, q)
    assert over.n == sum(sizes)


@pytest.mark.parametrize(
    ("name", "approx", "loss_average", "sizes"),
    [
        ("mlp", "expand", "batch", (1, 4)),
        ("mlp", "reduce", None, (3, 2)),
        ("encoder", "expand", "batch+positions", (2, 2)),
        ("encoder", "reduce", "batch", (3, 1)),
        ("cnn", "expand", "batch+positions", (1, 3)),
        ("ce-sum", "expand", "batch", (2, 3)),
        ("ce-sum", "reduce", None, (4, 1)),
    ],
)
def test_empirical_kfac_over_unequal_batches(name: str, approx: str, loss_average, sizes) -> None:
    case = CASES[name]
    model, x, y = case.make(n=sum(sizes))
    curv = Curvature(model, case.loss(), fisher="empirical", approx=approx, loss_average=loss_average)
    q = ("kfac", "ggn_diag") if name != "cnn" else ("kfac",)
    whole = curv.compute(x, y, q, set_grad=False)
    over = curv.compute_over(_split(x, y, sizes), q, set_grad=False)
    _compare(over, whole, q)


@pytest.mark.parametrize("fisher", ["forward-only", "mc"])
def test_other_fishers_over_batches(fisher: str) -> None:
    """forward-only: ``A`` is a row-weighted average; mc: with one fixed draw per batch the G sums as type-2's do."""
    case = CASES["mlp"]
    model, x, y = case.make(n=5)
    if fisher == "forward-only":
        curv = Curvature(model, case.loss(), fisher=fisher)
        _compare(curv.compute_over(_split(x, y, (2, 3)), ("kfac",), set_grad=False), curv.compute(x, y, ("kfac",), set_grad=False), ("kfac",))
        return
    # the MC columns of the concatenation are those of the batches when the generator is replayed batch by batch
    gen = torch.Generator().manual_seed(5)
    curv = Curvature(model, case.loss(), fisher="mc", mc_samples=4, generator=gen)
    over = curv.compute_over(_split(x, y, (2, 3)), ("ggn_diag",), set_grad=False)
    parts = []
    gen.manual_seed(5)
    for xb, yb in _split(x, y, (2, 3)):
        res = curv.compute(xb, yb, ("ggn_diag",), set_grad=False)
        parts.append((res["net.0"]["ggn_diag"]["weight"], yb.shape[0]))
    expected = sum(t * nb for t, nb in parts) / 5
    torch.testing.assert_close(over["net.0"]["ggn_diag"]["weight"], expected, **TOL)


def test_compute_over_sets_grad_like_backward_on_the_concatenation() -> None:
    case = CASES["encoder"]
    model, x, y = case.make(n=4)
    ref = copy.deepcopy(model)
    case.loss()(call(ref, x).movedim(-1, 1), y).backward()
    res = Curvature(model, case.loss()).compute_over(_split(x, y, (1, 3)), ("sum_grad_squared",))
    for n, p in ref.named_parameters():
        torch.testing.assert_close(dict(model.named_parameters())[n].grad, p.grad, **TOL)
        module, _, local = n.rpartition(".")
        assert res[module]["sum_grad_squared"][local].shape == p.shape
    assert "grad" not in res["q"]


def test_partial_selection_kfac_over_batches_and_chunks() -> None:
    case = CASES["mlp"]
    model, x, y = case.make(n=5)
    curv = Curvature(model, case.loss(), params=["net.2.bias", "net.0.weight"])
    whole = curv.compute(x, y, ("kfac",), set_grad=False)
    over = curv.compute_over(_split(x, y, (2, 3)), ("kfac",), set_grad=False)
    chunked = Curvature(model, case.loss(), params=["net.2.bias", "net.0.weight"], memory_limit=1).compute(x, y, ("kfac",), set_grad=False)
    for m in whole:
        torch.testing.assert_close(over[m]["kfac"].to_dense(), whole[m]["kfac"].to_dense(), **TOL)
        torch.testing.assert_close(chunked[m]["kfac"].to_dense(), whole[m]["kfac"].to_dense(), **TOL)
