"""Structured Grams (SINGD, IF-Shampoo) against singd's own structures and dense float64 products."""

from __future__ import annotations

import pytest
import torch

import tnderiv
from tnderiv.api_structured import mode_gram, mode_product, structured_gram
from tnderiv.calculus import structured as st

STRUCTURES = ["dense", "diagonal", "block_diagonal:3", "hierarchical:2,3", "tril_toeplitz", "triu_toeplitz"]


def _singd_class(structure: str) -> type:
    from singd.structures import blockdiagonal, dense, diagonal, hierarchical, triltoeplitz, triutoeplitz

    return {
        "dense": dense.DenseMatrix,
        "diagonal": diagonal.DiagonalMatrix,
        "block_diagonal:3": type("B3", (blockdiagonal.BlockDiagonalMatrixTemplate,), {"BLOCK_DIM": 3}),
        "hierarchical:2,3": type("H23", (hierarchical.HierarchicalMatrixTemplate,), {"MAX_K1": 2, "MAX_K2": 3}),
        "tril_toeplitz": triltoeplitz.TrilToeplitzMatrix,
        "triu_toeplitz": triutoeplitz.TriuToeplitzMatrix,
    }[structure]


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("d", [1, 4, 7, 12])
def test_equals_singd_from_mat_inner_and_from_inner(structure: str, d: int) -> None:
    pytest.importorskip("singd", reason="singd is an optional peer (the peers extra)")
    cls = _singd_class(structure)
    torch.manual_seed(d)
    x = torch.randn(d, 9)  # singd's structures compute in float32 (float64 matmuls are refused)
    ours = structured_gram(x, structure)
    theirs = cls.from_mat_inner(x)
    assert torch.allclose(ours.to_dense(), theirs.to_dense(), rtol=1e-5, atol=1e-5)
    assert torch.allclose(ours.to_singd().to_dense(), theirs.to_dense(), rtol=1e-5, atol=1e-5)
    k = cls.from_dense(torch.randn(d, d) + d * torch.eye(d))  # a structured left factor K
    ours_k = structured_gram(x, structure, K=k)
    assert torch.allclose(ours_k.to_dense(), k.from_inner(x).to_dense(), rtol=1e-4, atol=1e-4)


PROJECTIONS = {
    "dense": lambda m: m,
    "diagonal": lambda m: torch.diag(torch.diagonal(m)),
}


@pytest.mark.parametrize("structure", ["dense", "diagonal"])
def test_dense_k_in_float64(structure: str) -> None:
    torch.manual_seed(0)
    x, k = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 6, dtype=torch.float64)
    expected = PROJECTIONS[structure](k.T @ x @ x.T @ k)
    assert torch.allclose(structured_gram(x, structure, K=k).to_dense(), expected, atol=1e-12)


def test_toeplitz_is_singds_projection() -> None:
    """singd's projection: the main diagonal's mean, and for lag δ ≥ 1 the sum of both δ-diagonals over d − δ."""
    torch.manual_seed(0)
    x = torch.randn(5, 7, dtype=torch.float64)
    m = x @ x.T
    got = structured_gram(x, "tril_toeplitz").parts["diags"]
    assert got[0].item() == pytest.approx(torch.diagonal(m).mean().item(), rel=1e-12)
    for lag in range(1, 5):
        both = torch.diagonal(m, lag).sum() + torch.diagonal(m, -lag).sum()
        assert got[lag].item() == pytest.approx(both.item() / (5 - lag), rel=1e-12)


@pytest.mark.parametrize("structure", ["diagonal", "block_diagonal:8", "tril_toeplitz", "hierarchical:8,8"])
def test_bfloat16_without_decompositions(structure: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(96, 32)
    ours = structured_gram(x.to(torch.bfloat16), structure)
    ref = structured_gram(x.double(), structure).to_dense()
    assert all(p.dtype == torch.bfloat16 for p in ours.parts.values())
    assert ((ours.to_dense().double() - ref).abs().max() / ref.abs().max()) < 2e-2


@pytest.mark.parametrize(
    "name,diagram,bound",
    [
        ("diagonal", st.diagonal("X", 512, 16), 512),
        ("block_diagonal:8", st.blocks("X", 64, 8, 16), 512 * 8),
        ("toeplitz", st.diagonal_sums("X", 512, 16), 512),
    ],
)
def test_memory_stays_linear_in_d(name: str, diagram: object, bound: int) -> None:
    """The plan's largest intermediate is O(d·k): never the d × d = 262,144-element Gram."""
    plan = tnderiv.plan(diagram, {"X": (512, 16)})
    assert plan.peak_size <= bound, (name, plan.peak_size)


def test_mode_product_and_mode_gram() -> None:
    torch.manual_seed(0)
    t = torch.randn(3, 4, 5, dtype=torch.float64)
    m = torch.randn(6, 4, dtype=torch.float64)
    expected = torch.tensordot(m, t, dims=([1], [1])).movedim(0, 1)
    assert torch.allclose(mode_product(t, m, 1), expected, atol=1e-12)
    last = torch.randn(2, 5, dtype=torch.float64)
    assert torch.allclose(mode_product(t, last, -1), t @ last.T, atol=1e-12)
    unfolded = t.movedim(2, 0).reshape(5, -1)
    assert torch.allclose(mode_gram(t, 2).to_dense(), unfolded @ unfolded.T, atol=1e-12)
    assert torch.allclose(mode_gram(t, 0, "diagonal").parts["diag"], (t * t).sum((1, 2)), atol=1e-12)


def test_errors() -> None:
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="structure='banded' is not supported"):
        structured_gram(x, "banded")
    with pytest.raises(ValueError, match="'block_diagonal:k'"):
        structured_gram(x, "block_diagonal")
    with pytest.raises(ValueError, match="K has shape"):
        structured_gram(x, "dense", K=torch.eye(3))
    with pytest.raises(ValueError, match="X must be a floating-point"):
        structured_gram(torch.ones(4, dtype=torch.int64), "dense")
    with pytest.raises(ValueError, match="mode=3 is out of range"):
        mode_product(torch.randn(2, 3), torch.randn(2, 2), 3)
