"""laplace-torch with tnderiv's backend: against laplace's curvlinops backend where that one is right, and against
dense float64 oracles (torch.func Jacobians, the loss Hessian, reflect-padded unfolding) where it is not."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev
from torch.nn import functional as F

laplace = pytest.importorskip("laplace", reason="laplace-torch is an optional peer (the peers extra)")
pytest.importorskip("curvlinops", reason="curvlinops is an optional peer (the peers extra)")
from laplace import Laplace  # noqa: E402
from laplace.curvature import CurvlinopsEF, CurvlinopsGGN  # noqa: E402

from tnderiv.integrations.laplace import TnderivEF, TnderivGGN  # noqa: E402

DT = torch.float64


def _loader(x: torch.Tensor, y: torch.Tensor, batch: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)


def _cnn(padding_mode: str = "zeros", groups: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, padding_mode=padding_mode, groups=groups), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    ).to(DT)


def _data(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(n, 2, 4, 4, dtype=DT), torch.randint(0, 3, (n,))


def _precision(la: object, structure: str) -> torch.Tensor:
    return la.posterior_precision.to_matrix() if structure == "kron" else la.H  # type: ignore[attr-defined]


# laplace's curvlinops backend returns an all-zero EF diagonal for last-layer Laplace (its torch.func gradients
# address the last layer's parameters by names the wrapped model does not have); that case is checked against
# the diagonal of the full EF below instead
CASES = [
    (subset, structure, ours, theirs)
    for subset in ("last_layer", "all")
    for structure in ("diag", "full", "kron")
    for ours, theirs in ((TnderivGGN, CurvlinopsGGN), (TnderivEF, CurvlinopsEF))
    if (subset, structure, ours) != ("last_layer", "diag", TnderivEF)
]


@pytest.mark.parametrize("subset,structure,ours,theirs", CASES, ids=lambda v: getattr(v, "__name__", v))
def test_agrees_with_curvlinops_backend(subset: str, structure: str, ours: type, theirs: type) -> None:
    x, y = _data()
    model = _cnn()
    las = []
    for backend in (ours, theirs):
        la = Laplace(model, "classification", subset_of_weights=subset, hessian_structure=structure, backend=backend)
        la.fit(_loader(x, y, 6))  # one batch: laplace's batch rescaling of KFAC is then the identity
        las.append(la)
    assert torch.allclose(_precision(las[0], structure), _precision(las[1], structure), atol=1e-10)
    assert torch.allclose(las[0].loss, las[1].loss)
    assert torch.allclose(las[0](x[:3]), las[1](x[:3]), atol=1e-10)  # the GLM predictive (jacobians)


def test_last_layer_empirical_fisher_diag_is_the_diagonal_of_the_full_one() -> None:
    x, y = _data()
    model = _cnn()
    diag = Laplace(model, "classification", hessian_structure="diag", backend=TnderivEF)
    full = Laplace(model, "classification", hessian_structure="full", backend=CurvlinopsEF)
    peer = Laplace(model, "classification", hessian_structure="diag", backend=CurvlinopsEF)
    for la in (diag, full, peer):
        la.fit(_loader(x, y, 6))
    assert torch.allclose(diag.H, torch.diagonal(full.H), atol=1e-10)
    assert diag.H.abs().max() > 0 and peer.H.abs().max() == 0  # the peer's last-layer EF diagonal is all zeros


def _dense_ggn(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Σ_n J_nᵀ H_n J_n of the summed cross-entropy, from torch.func Jacobians."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    jac = jacrev(lambda p: functional_call(model, p, (x,)))(params)
    n, c = x.shape[0], 3
    j = torch.cat([jac[k].reshape(n, c, -1) for k in params], 2)
    prob = torch.softmax(model(x).detach(), 1)
    hess = torch.diag_embed(prob) - prob[:, :, None] * prob[:, None, :]
    return torch.einsum("nci,ncd,ndj->ij", j, hess, j)


@pytest.mark.parametrize("padding_mode,groups", [("reflect", 1), ("circular", 2), ("replicate", 2)])
def test_full_and_diag_against_dense_oracle(padding_mode: str, groups: int) -> None:
    x, y = _data()
    model = _cnn(padding_mode, groups)
    oracle = _dense_ggn(model, x)
    for structure, expected in (("full", oracle), ("diag", torch.diagonal(oracle))):
        la = Laplace(model, "classification", subset_of_weights="all", hessian_structure=structure, backend=TnderivGGN)
        la.fit(_loader(x, y, 3))  # two batches: full and diag are sums over batches
        assert torch.allclose(la.H, expected, atol=1e-10)


def test_kron_with_reflect_padding_against_unfolded_oracle() -> None:
    x, y = _data()
    model = _cnn("reflect")
    la = Laplace(model, "classification", subset_of_weights="all", hessian_structure="kron", backend=TnderivGGN)
    la.fit(_loader(x, y, 6))
    conv = model[0]
    # A: the average outer product of reflect-padded patches; B: Σ over S-columns at the conv output
    patches = F.unfold(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3).transpose(1, 2).reshape(-1, 2 * 9)
    a = patches.T @ patches / patches.shape[0]
    out = conv(x)
    logits = model[3](model[2](model[1](out)))
    prob = torch.softmax(logits.detach(), 1)
    r = prob.sqrt()[:, :, None] * (torch.eye(3, dtype=DT)[None] - prob[:, None, :])  # [N, M=C, C]: Σ_m r rᵀ = H_n
    cols = torch.stack([torch.autograd.grad(logits, out, r[:, m], retain_graph=True)[0] for m in range(3)])  # [M, N, 4, 4, 4]
    g = cols.permute(0, 1, 3, 4, 2).reshape(-1, 4)
    b = g.T @ g
    B, A = la.H_facs.kfacs[0]
    assert torch.allclose(A, a, atol=1e-10)
    assert torch.allclose(B, b, atol=1e-10)


def test_grouped_kron_and_subnetworks_raise() -> None:
    x, y = _data()
    la = Laplace(_cnn("zeros", 2), "classification", subset_of_weights="all", hessian_structure="kron", backend=TnderivGGN)
    with pytest.raises(NotImplementedError, match="grouped layer's KFAC"):
        la.fit(_loader(x, y, 6))


def test_regression_and_mc() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(DT)
    x, y = torch.randn(8, 3, dtype=DT), torch.randn(8, 2, dtype=DT)
    ours = Laplace(model, "regression", subset_of_weights="all", hessian_structure="full", backend=TnderivGGN)
    theirs = Laplace(model, "regression", subset_of_weights="all", hessian_structure="full", backend=CurvlinopsGGN)
    ours.fit(_loader(x, y, 4))
    theirs.fit(_loader(x, y, 4))
    assert torch.allclose(ours.H, theirs.H, atol=1e-10)
    mc = Laplace(model, "regression", subset_of_weights="all", hessian_structure="diag", backend=TnderivGGN,
                 backend_kwargs={"stochastic": True})
    mc.fit(_loader(x, y, 8))
    assert mc.H.shape == ours.H.diagonal().shape and torch.isfinite(mc.H).all()
