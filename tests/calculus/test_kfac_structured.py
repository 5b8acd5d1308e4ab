"""Structured KFAC factors (``structure=``, ``K=`` on ``kfac_factors_input`` / ``kfac_factors_output``) against singd's
projections applied to the dense factor formed in the test from unfolded inputs (F.unfold after F.pad for reflect
padding) and from the output gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import tnderiv

pytest.importorskip("singd", reason="singd is an optional peer (the peers extra)")
from singd.structures import blockdiagonal, dense, diagonal, hierarchical, triltoeplitz, triutoeplitz  # noqa: E402

SINGD = {
    "diagonal": diagonal.DiagonalMatrix,
    "block_diagonal:3": type("B3", (blockdiagonal.BlockDiagonalMatrixTemplate,), {"BLOCK_DIM": 3}),
    "hierarchical:2,3": type("H23", (hierarchical.HierarchicalMatrixTemplate,), {"MAX_K1": 2, "MAX_K2": 3}),
    "tril_toeplitz": triltoeplitz.TrilToeplitzMatrix,
    "triu_toeplitz": triutoeplitz.TriuToeplitzMatrix,
    "dense": dense.DenseMatrix,
}


def _conv() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect", groups=2)
    return conv, torch.randn(3, 4, 5, 5), torch.randn(3, 6, 5, 5)


def _linear() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return nn.Linear(5, 7), torch.randn(3, 4, 5), torch.randn(3, 4, 7)


def _conv_rows(x: torch.Tensor, g: torch.Tensor, approx: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per group: the input rows ``[R, 18]`` (reflect-padded patches) and output rows ``[R, 3]``, reduce: position means / sums."""
    patches = F.unfold(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3)  # [N, 4·9, L], channel-major rows
    outs = g.flatten(2)  # [N, 6, L]
    a_rows, g_rows = [], []
    for group in range(2):
        a = patches[:, group * 18 : (group + 1) * 18]
        o = outs[:, group * 3 : (group + 1) * 3]
        if approx == "expand":
            a_rows.append(a.transpose(1, 2).reshape(-1, 18))
            g_rows.append(o.transpose(1, 2).reshape(-1, 3))
        else:
            a_rows.append(a.mean(2))
            g_rows.append(o.sum(2))
    return a_rows, g_rows


def _linear_rows(x: torch.Tensor, g: torch.Tensor, approx: str, append: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    if append:
        x = torch.cat([x, torch.ones(*x.shape[:-1], 1)], -1)
    if approx == "expand":
        return [x.reshape(-1, x.shape[-1])], [g.reshape(-1, g.shape[-1])]
    return [x.mean(1)], [g.sum(1)]


def _check(ours: object, rows: list[torch.Tensor], scale: float, structure: str, ks: list[object] | None) -> None:
    """``ours`` equals singd's projection of the dense factor ``scale · rowsᵀ rows`` (``from_dense`` / ``from_inner2``)
    and singd's ``from_mat_inner`` / ``from_inner`` on the scaled rows."""
    got = ours if isinstance(ours, list) else [ours]
    assert len(got) == len(rows)
    cls = SINGD[structure]
    for g, (part, r) in enumerate(zip(got, rows)):
        factor = scale * r.T @ r  # the dense factor, formed here
        root = math.sqrt(scale) * r.T  # [d, R]
        if ks is None:
            expected = [cls.from_dense(factor), cls.from_mat_inner(root)]
        else:
            expected = [ks[g].from_inner2(factor), ks[g].from_inner(root)]
        for e in expected:
            ref = e.to_dense()
            assert torch.allclose(part.to_dense(), ref, rtol=1e-4, atol=1e-4 * ref.abs().max()), (structure, g)
        assert type(part).__name__ == "StructuredGram" and str(part.structure) == structure


def _ks(structure: str, d: int, groups: int) -> list[object]:
    """Left factors of singd's kind, from symmetric matrices (singd's block-diagonal ``rmatmat`` is ``K @``, i.e.
    assumes symmetric blocks; its ``from_inner`` and ``from_inner2`` then agree)."""
    gen = torch.Generator().manual_seed(d)
    ms = [torch.randn(d, d, generator=gen) for _ in range(groups)]
    return [SINGD[structure].from_dense(m + m.T + d * torch.eye(d)) for m in ms]


CASES = [(layer, approx) for layer in ("conv", "linear") for approx in ("expand", "reduce")]


@pytest.mark.parametrize("layer,approx", CASES)
def test_input_factor_equals_singd_on_the_dense_factor(layer: str, approx: str) -> None:
    module, x, g = _conv() if layer == "conv" else _linear()
    biases = ("separate", "append") if layer == "linear" else ("separate",)
    for bias in biases:
        a_rows, _ = _conv_rows(x, g, approx) if layer == "conv" else _linear_rows(x, g, approx, bias == "append")
        scale = 1.0 / a_rows[0].shape[0]  # A averages over samples (and positions for expand)
        d, groups = a_rows[0].shape[1], len(a_rows)
        for structure in SINGD:
            if structure != "dense":
                ours = tnderiv.kfac_factors_input(module, x, approx, bias_mode=bias, structure=structure)
                _check(ours, a_rows, scale, structure, None)
            ks = _ks(structure, d, groups)
            ours = tnderiv.kfac_factors_input(module, x, approx, bias_mode=bias, structure=structure, K=ks if groups > 1 else ks[0])
            _check(ours, a_rows, scale, structure, ks)


@pytest.mark.parametrize("layer,approx", CASES)
def test_output_factor_equals_singd_on_the_dense_factor(layer: str, approx: str) -> None:
    module, x, g = _conv() if layer == "conv" else _linear()
    _, g_rows = _conv_rows(x, g, approx) if layer == "conv" else _linear_rows(x, g, approx, False)
    n = x.shape[0]
    d, groups = g_rows[0].shape[1], len(g_rows)
    for loss_average, scale in (("batch", float(n)), (None, 1.0)):
        for structure in SINGD:
            if structure != "dense":
                ours = tnderiv.kfac_factors_output(module, g, approx, loss_average=loss_average, hessian_sqrt=False, structure=structure)
                _check(ours, g_rows, scale, structure, None)
            ks = _ks(structure, d, groups)
            ours = tnderiv.kfac_factors_output(
                module, g, approx, loss_average=loss_average, hessian_sqrt=False, structure=structure, K=ks if groups > 1 else ks[0]
            )
            _check(ours, g_rows, scale, structure, ks)


def test_loss_hessian_square_root_and_dense_k_in_float64() -> None:
    """A square root ``[M, N, T, d_out]``: ``G = Σ_m Σ s sᵀ`` (no scale); a dense ``K`` against ``Kᵀ G K`` in float64."""
    torch.manual_seed(2)
    lin = nn.Linear(5, 7).double()
    s = torch.randn(2, 3, 4, 7, dtype=torch.float64)
    k = torch.randn(7, 7, dtype=torch.float64)
    rows = s.reshape(-1, 7)
    expected = k.T @ rows.T @ rows @ k
    ours = tnderiv.kfac_factors_output(lin, s, hessian_sqrt=True, structure="dense", K=k)
    assert torch.allclose(ours.to_dense(), expected, atol=1e-10)
    diag = tnderiv.kfac_factors_output(lin, s, hessian_sqrt=True, structure="diagonal", K=k)
    assert torch.allclose(diag.parts["diag"], torch.diagonal(expected), atol=1e-10)


def test_dense_default_is_unchanged() -> None:
    module, x, g = _conv()
    a_rows, g_rows = _conv_rows(x, g, "expand")
    A = tnderiv.kfac_factors_input(module, x)
    G = tnderiv.kfac_factors_output(module, g, hessian_sqrt=False)
    assert isinstance(A, torch.Tensor) and A.shape == (2, 18, 18)
    assert torch.allclose(A, torch.stack([r.T @ r / r.shape[0] for r in a_rows]), atol=1e-5)
    assert torch.allclose(G, torch.stack([3 * r.T @ r for r in g_rows]), atol=1e-4)


def test_bad_input() -> None:
    module, x, g = _linear()
    with pytest.raises(ValueError, match="structure='banded' is not supported"):
        tnderiv.kfac_factors_input(module, x, structure="banded")
    with pytest.raises(ValueError, match=r"K has shape \[4, 4\]; expected \[5, 5\]"):
        tnderiv.kfac_factors_input(module, x, structure="diagonal", K=torch.eye(4))
    with pytest.raises(ValueError, match=r"K has shape \[5, 5\]; expected \[6, 6\]"):
        tnderiv.kfac_factors_input(module, x, bias_mode="append", structure="diagonal", K=torch.eye(5))
    with pytest.raises(ValueError, match=r"K has shape \[5, 5\]; expected \[7, 7\]"):
        tnderiv.kfac_factors_output(module, g, hessian_sqrt=False, structure="diagonal", K=torch.eye(5))
    with pytest.raises(ValueError, match="with unreduced=True is not supported"):
        tnderiv.kfac_factors_input(module, x, structure="diagonal", unreduced=True)
    with pytest.raises(ValueError, match="with unreduced=True is not supported"):
        tnderiv.kfac_factors_output(module, g, hessian_sqrt=False, K=torch.eye(7), unreduced=True)
    conv, xc, _ = _conv()
    with pytest.raises(ValueError, match="K is a list of 3; expected one K for all groups or a list of 2"):
        tnderiv.kfac_factors_input(conv, xc, structure="diagonal", K=[torch.eye(18)] * 3)
    with pytest.raises(TypeError, match="K must be a"):
        tnderiv.kfac_factors_input(module, x, structure="diagonal", K="eye")


def test_doc_example_on_singd_page() -> None:
    """docs/singd.md's example: the structured KFAC factors it shows equal singd's projections of the dense factors."""
    import re
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "docs" / "singd.md"
    (block,) = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    scope: dict = {}
    exec(compile(block, str(doc), "exec"), scope)  # noqa: S102  (our own documentation)
    x, grad_out = scope["x"], scope["grad_out"]
    patches = F.unfold(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3)  # [4, 72, 100]
    for group in range(2):
        rows = patches[:, group * 36 : (group + 1) * 36]
        expand = rows.transpose(1, 2).reshape(-1, 36)
        assert torch.allclose(scope["A_diag"][group].parts["diag"], (expand * expand).mean(0), rtol=1e-4)
        reduce = rows.mean(2)
        blocks = type("B9", (blockdiagonal.BlockDiagonalMatrixTemplate,), {"BLOCK_DIM": 9}).from_dense(reduce.T @ reduce / 4)
        assert torch.allclose(scope["A_blocks"][group].to_dense(), blocks.to_dense(), rtol=1e-4, atol=1e-5)
        g = grad_out[:, group * 8 : (group + 1) * 8].flatten(2).transpose(1, 2).reshape(-1, 8)
        toeplitz = triltoeplitz.TrilToeplitzMatrix.from_dense(4 * g.T @ g)
        assert torch.allclose(scope["G_toeplitz"][group].to_dense(), toeplitz.to_dense(), rtol=1e-4, atol=1e-3)
