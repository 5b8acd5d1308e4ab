"""laplace-torch's linearized predictive variance from Kronecker quadratic forms (``kron_functional_variance``) against
laplace's own ``la.functional_variance(Js)`` with ``Js`` from ``torch.func.jacrev`` in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

pytest.importorskip("laplace", reason="laplace-torch is an optional peer (the peers extra)")
pytest.importorskip("curvlinops", reason="curvlinops is an optional peer (the peers extra)")
from laplace import KronLaplace, Laplace  # noqa: E402
from laplace.curvature import CurvlinopsGGN  # noqa: E402

from tnderiv.integrations.laplace import (  # noqa: E402
    TnderivGGN,
    TnderivKronLaplace,
    TnderivKronLLLaplace,
    kron_functional_variance,
)

DT = torch.float64


def _loader(x: torch.Tensor, y: torch.Tensor, batch: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).to(DT)


class _Sequence(nn.Module):
    """A Linear on ``[N, T, 4]`` (weight sharing over ``T``), averaged over ``T``, then a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.inner, self.out = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.inner(x)).mean(1))


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect"), nn.ReLU(), nn.Conv2d(4, 3, 3, stride=2), nn.Flatten(), nn.Linear(3, 3)
    ).to(DT)


def _jacobians(model: nn.Module, names: list[str], x: torch.Tensor) -> torch.Tensor:
    """``[N, C, P]`` by torch.func over the parameters ``names`` (laplace's order), the others held fixed."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    rest = {k: v for k, v in params.items() if k not in names}
    jac = jacrev(lambda p: functional_call(model, {**rest, **p}, (x,)))({k: params[k] for k in names})
    return torch.cat([jac[k].reshape(x.shape[0], 3, -1) for k in names], 2)


def _fitted(model: nn.Module, subset: str, x: torch.Tensor, y: torch.Tensor, **kwargs: object) -> KronLaplace:
    la = Laplace(model, "classification", subset_of_weights=subset, hessian_structure="kron", backend=TnderivGGN, **kwargs)
    la.fit(_loader(x, y, 4))
    return la


@pytest.mark.parametrize("subset", ["all", "last_layer"])
@pytest.mark.parametrize("damping", [False, True])
def test_mlp_equals_laplaces_jacobian_based_variance(subset: str, damping: bool) -> None:
    model = _mlp()
    torch.manual_seed(1)
    x, y = torch.randn(8, 4, dtype=DT), torch.randint(0, 3, (8,))
    names = [k for k, _ in model.named_parameters()] if subset == "all" else ["4.weight", "4.bias"]
    prior = torch.linspace(0.5, 2.0, len(names), dtype=DT)  # per-layer prior precisions δ
    la = _fitted(model, subset, x, y, damping=damping, prior_precision=prior)
    expected = la.functional_variance(_jacobians(model, names, x))
    got = kron_functional_variance(la, x)
    assert got.shape == (8, 3, 3)
    assert torch.allclose(got, expected, atol=1e-10)


@pytest.mark.parametrize("make,shape", [(_cnn, (6, 2, 4, 4)), (_Sequence, (6, 7, 4))], ids=["cnn_reflect", "sequence_linear"])
def test_weight_sharing_equals_laplaces_jacobian_based_variance(make: type, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = make().to(DT)
    torch.manual_seed(2)
    x, y = torch.randn(*shape, dtype=DT), torch.randint(0, 3, (shape[0],))
    names = [k for k, _ in model.named_parameters()]
    la = _fitted(model, "all", x, y, prior_precision=0.3)
    expected = la.functional_variance(_jacobians(model, names, x))
    assert torch.allclose(kron_functional_variance(la, x), expected, atol=1e-10)


def test_subclasses_give_laplaces_predictive() -> None:
    model = _cnn()
    torch.manual_seed(3)
    x, y = torch.randn(6, 2, 4, 4, dtype=DT), torch.randint(0, 3, (6,))
    ours = TnderivKronLaplace(model, "classification", prior_precision=0.5)
    theirs = Laplace(model, "classification", subset_of_weights="all", hessian_structure="kron", backend=TnderivGGN, prior_precision=0.5)
    for la in (ours, theirs):
        la.fit(_loader(x, y, 6))
    assert torch.allclose(ours(x), theirs(x), atol=1e-10)  # probit GLM predictive; theirs forms the Jacobians
    mlp = _mlp()
    xr, yr = torch.randn(8, 4, dtype=DT), torch.randn(8, 3, dtype=DT)
    ours_ll = TnderivKronLLLaplace(mlp, "regression")
    theirs_ll = Laplace(mlp, "regression", hessian_structure="kron", backend=TnderivGGN)
    for la in (ours_ll, theirs_ll):
        la.fit(_loader(xr, yr, 4))
    (mu, var), (mu_ref, var_ref) = ours_ll(xr), theirs_ll(xr)
    assert torch.allclose(mu, mu_ref, atol=1e-12) and torch.allclose(var, var_ref, atol=1e-10)
    # laplace's factory keeps its own classes
    assert type(Laplace(mlp, "classification", subset_of_weights="all", hessian_structure="kron")) is KronLaplace


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.tanh(self.lin(x)))


def test_errors() -> None:
    model = _mlp()
    x = torch.randn(4, 4, dtype=DT)
    diag = Laplace(model, "classification", subset_of_weights="all", hessian_structure="diag", backend=TnderivGGN)
    with pytest.raises(TypeError, match="needs a KronLaplace"):
        kron_functional_variance(diag, x)
    peer = Laplace(model, "classification", subset_of_weights="all", hessian_structure="kron", backend=CurvlinopsGGN)
    with pytest.raises(TypeError, match="backend=TnderivGGN or TnderivEF, got CurvlinopsGGN"):
        kron_functional_variance(peer, x)
    unfitted = Laplace(model, "classification", subset_of_weights="all", hessian_structure="kron", backend=TnderivGGN)
    with pytest.raises(ValueError, match="not fitted"):
        kron_functional_variance(unfitted, x)
    with pytest.raises(TypeError, match="needs backend=TnderivGGN or TnderivEF"):
        TnderivKronLaplace(model, "classification", backend=CurvlinopsGGN)
    grouped = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten(), nn.Linear(16, 3)).to(DT)
    la = Laplace(grouped, "classification", subset_of_weights="all", hessian_structure="kron", backend=TnderivGGN)
    with pytest.raises(NotImplementedError, match=r"module 0 \(Conv2d with groups=2\) is not supported"):
        la.backend.kron_pieces(torch.randn(2, 2, 4, 4, dtype=DT))
    twice = Laplace(_Twice().to(DT), "classification", subset_of_weights="all", hessian_structure="kron", backend=TnderivGGN)
    with pytest.raises(NotImplementedError, match="module lin is called 2 times"):
        twice.backend.kron_pieces(torch.randn(2, 3, dtype=DT))


def test_doc_example_on_laplace_page() -> None:
    """docs/laplace.md's example: its f_var equals laplace's Jacobian-based variance, its fast predictive laplace's."""
    import re
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "docs" / "laplace.md"
    (block,) = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    scope: dict = {}
    torch.manual_seed(0)
    exec(compile(block, str(doc), "exec"), scope)  # noqa: S102  (our own documentation)
    model, la, x = scope["model"], scope["la"], scope["x"][:4]
    js = _jacobians(model, [k for k, _ in model.named_parameters()], x)  # the example's Laplace is over all weights
    assert torch.allclose(scope["f_var"], la.functional_variance(js), rtol=1e-4, atol=1e-5)
    assert torch.allclose(scope["probs_fast"], scope["probs"], atol=1e-5)



def test_last_layer_form_stays_below_the_jacobian(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without weight sharing the plan's largest intermediate is far below the layer's Jacobian ``N·C·d_out·d_in``."""
    import tnderiv.integrations.laplace as integration

    plans = []
    real = integration.plan
    monkeypatch.setattr(integration, "plan", lambda *a, **k: plans.append(real(*a, **k)) or plans[-1])
    c, n, d_out, d_in = 10, 32, 10, 256
    torch.manual_seed(4)
    d, a = torch.randn(c, n, 1, d_out, dtype=DT), torch.randn(n, 1, d_in, dtype=DT)
    q_out, q_in = torch.linalg.qr(torch.randn(d_out, d_out, dtype=DT))[0], torch.linalg.qr(torch.randn(d_in, d_in, dtype=DT))[0]
    w = torch.rand(d_out, d_in, dtype=DT) + 0.1
    got = integration._quadratic_form(d, q_out, w, a, q_in)
    jac = torch.einsum("cni,nj->ncij", (q_out.T @ d[:, :, 0].unsqueeze(-1)).squeeze(-1), a[:, 0] @ q_in)  # test-side oracle
    expected = torch.einsum("ncij,neij,ij->nce", jac, jac, w)
    assert torch.allclose(got, expected, atol=1e-10)
    assert plans[-1].peak_size * 50 < n * c * d_out * d_in
