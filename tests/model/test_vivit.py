"""ViViT on tnderiv: GGN eigenpairs, directional derivatives and Newton steps against dense float64 oracles
(torch.func Jacobians and the loss Hessian) and against vivit-for-pytorch itself."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

import tnderiv

DT = torch.float64
N, C = 5, 4


class Mixed(nn.Module):
    """A circular-padded conv (derived), tanh, a dense head (derived), and an embedding's weight read directly
    by the model (a fallback through the model itself)."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv1d(2, 3, 3, padding=1, padding_mode="circular")
        self.e = nn.Embedding(5, 2)
        self.l = nn.Linear(3 * 4, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l(torch.tanh(self.c(x + self.e.weight[:, :1].sum())).flatten(1))


def _dense(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Parameter names, per-sample gradients [N, P], per-sample GGNs [N, P, P] of the mean cross-entropy."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    names = list(params)
    jac = jacrev(lambda p: functional_call(model, p, (x,)))(params)
    jf = torch.cat([jac[k].reshape(N, C, -1) for k in names], 2)
    prob = torch.softmax(functional_call(model, params, (x,)), 1)
    hess = (torch.diag_embed(prob) - prob[:, :, None] * prob[:, None, :]) / N
    ggn_n = torch.einsum("nci,ncd,ndj->nij", jf, hess, jf)

    def loss_n(p: dict, xn: torch.Tensor, yn: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(functional_call(model, p, (xn[None],)), yn[None], reduction="sum") / N

    psg = vmap(grad(loss_n), in_dims=(None, 0, 0))(params, x, y)
    return names, torch.cat([psg[k].reshape(N, -1) for k in names], 1), ggn_n, prob


@pytest.fixture(scope="module")
def case() -> tuple:
    torch.manual_seed(0)
    model = Mixed().to(DT)
    x, y = torch.randn(N, 2, 4, dtype=DT), torch.randint(0, C, (N,))
    return model, x, y, tnderiv.Curvature(model, nn.CrossEntropyLoss()), *_dense(model, x, y)


def _flat(vectors: dict, names: list[str], k: int) -> torch.Tensor:
    return torch.cat([vectors[n].reshape(k, -1) for n in names], 1)


def test_eigenpairs_match_the_dense_ggn(case: tuple) -> None:
    model, x, y, curv, names, _, ggn_n, _ = case
    ggn = ggn_n.sum(0)
    eig = curv.ggn_eigen(x, y, k=3)
    assert torch.allclose(eig.eigenvalues, torch.linalg.eigvalsh(ggn).flip(0)[:3], atol=1e-10)
    e = _flat(eig.eigenvectors, names, 3)
    assert torch.allclose(e @ ggn, eig.eigenvalues[:, None] * e, atol=1e-10)
    assert torch.allclose(e @ e.T, torch.eye(3, dtype=DT), atol=1e-10)
    everything = curv.ggn_eigen(x, y)  # all non-zero eigenvalues: the rank is at most (C - 1)·N
    nonzero = torch.linalg.eigvalsh(ggn).flip(0)
    assert everything.eigenvalues.numel() <= (C - 1) * N
    assert torch.allclose(everything.eigenvalues, nonzero[: everything.eigenvalues.numel()], atol=1e-10)
    assert nonzero[everything.eigenvalues.numel() :].abs().max() < 1e-10
    # k ≥ M: the eigenvectors come from materialized columns (k < M above: from weighted VJPs)
    k = everything.eigenvalues.numel()
    e = _flat(everything.eigenvectors, names, k)
    assert k >= C and torch.allclose(e @ ggn, everything.eigenvalues[:, None] * e, atol=1e-10)
    assert torch.allclose(e @ e.T, torch.eye(k, dtype=DT), atol=1e-9)


def test_block_and_subsampling(case: tuple) -> None:
    model, x, y, curv, names, _, ggn_n, _ = case
    sizes = [p.numel() for p in model.parameters()]
    start = sum(sizes[: names.index("l.weight")])
    block = ggn_n.sum(0)[start : start + sizes[names.index("l.weight")], :][:, start : start + sizes[names.index("l.weight")]]
    eig = curv.ggn_eigen(x, y, k=2, params=["l.weight"])
    assert set(eig.eigenvectors) == {"l.weight"}
    assert torch.allclose(eig.eigenvalues, torch.linalg.eigvalsh(block).flip(0)[:2], atol=1e-10)
    sub = curv.ggn_eigen(x, y, k=2, subsampling=[0, 2])
    estimate = ggn_n[[0, 2]].sum(0) * N / 2  # ViViT's rescaling of a sub-sampled GGN
    assert torch.allclose(sub.eigenvalues, torch.linalg.eigvalsh(estimate).flip(0)[:2], atol=1e-10)


def test_directional_derivatives_and_newton_step(case: tuple) -> None:
    model, x, y, curv, names, psg, ggn_n, _ = case
    eig = curv.ggn_eigen(x, y, k=3)
    e = _flat(eig.eigenvectors, names, 3)
    dd = curv.directional_derivatives(x, y, eig.eigenvectors)
    assert torch.allclose(dd.gammas, psg @ e.T, atol=1e-12)
    assert torch.allclose(dd.lambdas, torch.einsum("ki,nij,kj->nk", e, ggn_n, e), atol=1e-12)
    step = curv.newton_step(x, y, 3, damping=0.1)
    g = psg.sum(0)
    expected = -sum((g @ e[k]) / (eig.eigenvalues[k] + 0.1) * e[k] for k in range(3))
    assert torch.allclose(_flat({n: step[n][None] for n in names}, names, 1)[0], expected, atol=1e-12)


def test_errors() -> None:
    model = nn.Sequential(nn.Linear(3, 2)).to(DT)
    x, y = torch.randn(4, 3, dtype=DT), torch.randint(0, 2, (4,))
    curv = tnderiv.Curvature(model, nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="k=0"):
        curv.ggn_eigen(x, y, k=0)
    with pytest.raises(ValueError, match="subsampling"):
        curv.ggn_eigen(x, y, subsampling=[0, 9])
    with pytest.raises(ValueError, match="not among the selected"):
        curv.ggn_eigen(x, y, params=["nope"])
    with pytest.raises(ValueError, match=r"directions\['0.weight'\] has shape"):
        curv.directional_derivatives(x, y, {"0.weight": torch.zeros(2, 5, dtype=DT)})
    with pytest.raises(ValueError, match="forward-only"):
        tnderiv.Curvature(model, nn.CrossEntropyLoss(), fisher="forward-only").ggn_eigen(x, y)


def _symeig(self: torch.Tensor, eigenvectors: bool = False, upper: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``Tensor.symeig`` (removed from torch in 1.13), which vivit-for-pytorch 1.0 still calls."""
    evals, evecs = torch.linalg.eigh(self, UPLO="U" if upper else "L")
    return evals, evecs if eigenvectors else evecs.new_empty(0)


def test_against_vivit(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("vivit", reason="vivit-for-pytorch is an optional peer (the peers extra)")
    backpack = pytest.importorskip("backpack")
    from vivit.linalg.eigh import EighComputation

    monkeypatch.setattr(torch.Tensor, "symeig", _symeig, raising=False)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).to(DT)
    x, y = torch.randn(6, 4, dtype=DT), torch.randint(0, 3, (6,))
    params = list(model.parameters())
    computation = EighComputation()
    group = {"params": params, "criterion": lambda evals: [evals.numel() - 1, evals.numel() - 2]}
    ext_model, loss_fn = backpack.extend(model), backpack.extend(nn.CrossEntropyLoss())
    with backpack.backpack(computation.get_extension(), extension_hook=computation.get_extension_hook([group])):
        loss_fn(ext_model(x), y).backward()
    evals, evecs = computation.get_result(group)
    ours = tnderiv.Curvature(model, nn.CrossEntropyLoss()).ggn_eigen(x, y, k=2)
    assert torch.allclose(ours.eigenvalues, evals, atol=1e-10)  # the criterion picked the largest first
    names = [n for n, _ in model.named_parameters()]
    for k in range(2):  # eigenvectors agree up to sign
        theirs = torch.cat([v[k].reshape(-1) for v in evecs])
        mine = torch.cat([ours.eigenvectors[n][k].reshape(-1) for n in names])
        assert torch.allclose(mine.abs(), theirs.abs(), atol=1e-8)
        assert abs(float(mine @ theirs)) == pytest.approx(1.0, abs=1e-8)
