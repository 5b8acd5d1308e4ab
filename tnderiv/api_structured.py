"""Public entry points for structured Grams (SINGD, IF-Shampoo): ``structured_gram``, ``mode_product``, ``mode_gram``.

``structured_gram(X, structure, K=K)`` is ``Π_struct(Kᵀ X Xᵀ K)`` for ``X`` ``[d, R]``, computed from the
structure's diagrams (``tnderiv.calculus.structured``) so that the ``d × d`` Gram is never formed where the
structure allows; the parts are stored as singd stores them, and ``to_singd()`` returns singd's own matrix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from tnderiv.api import plan
from tnderiv.calculus import structured as st
from tnderiv.ir import Diagram
from tnderiv.ir.nodes import operand


@dataclass(frozen=True)
class StructuredGram:
    """``Π_struct(Kᵀ X Xᵀ K)`` of dimension ``dim``: its ``parts`` by singd's names.

    dense ``{"mat": [d, d]}``; diagonal ``{"diag": [d]}``; block_diagonal ``{"blocks": [d // k, k, k],
    "last": [d % k, d % k]}``; hierarchical ``{"A", "B", "C", "D", "E"}``; tril/triu Toeplitz ``{"diags": [d]}``.
    """

    structure: st.Structure
    dim: int
    parts: Mapping[str, torch.Tensor]

    def to_dense(self) -> torch.Tensor:
        """The represented ``[d, d]`` matrix."""
        kind, p = self.structure.kind, self.parts
        if kind == "dense":
            return p["mat"]
        if kind == "diagonal":
            return torch.diag(p["diag"])
        if kind == "block_diagonal":
            return torch.block_diag(*p["blocks"], p["last"])
        if kind in ("tril_toeplitz", "triu_toeplitz"):
            idx = torch.arange(self.dim, device=p["diags"].device)
            lag = idx[:, None] - idx[None, :]
            if kind == "triu_toeplitz":
                lag = -lag
            return torch.where(lag >= 0, p["diags"][lag.clamp(min=0)], p["diags"].new_zeros(()))
        k1, dd = p["A"].shape[0], p["C"].shape[0]
        out = p["A"].new_zeros(self.dim, self.dim)
        out[:k1, :k1] = p["A"]
        out[:k1, k1:] = p["B"]
        out[k1 : k1 + dd, k1 : k1 + dd] = torch.diag(p["C"])
        out[k1 + dd :, k1 : k1 + dd] = p["D"]
        out[k1 + dd :, k1 + dd :] = p["E"]
        return out

    def to_singd(self) -> Any:
        """singd's structured matrix holding the same parts (singd must be installed)."""
        from singd.structures import blockdiagonal, dense, diagonal, hierarchical, triltoeplitz, triutoeplitz

        kind, p = self.structure.kind, self.parts
        if kind == "dense":
            return dense.DenseMatrix(p["mat"])
        if kind == "diagonal":
            return diagonal.DiagonalMatrix(p["diag"])
        if kind == "tril_toeplitz":
            return triltoeplitz.TrilToeplitzMatrix(p["diags"])
        if kind == "triu_toeplitz":
            return triutoeplitz.TriuToeplitzMatrix(p["diags"])
        if kind == "block_diagonal":
            cls = type(f"Block{self.structure.sizes[0]}DiagonalMatrix", (blockdiagonal.BlockDiagonalMatrixTemplate,), {"BLOCK_DIM": self.structure.sizes[0]})
            return cls(p["blocks"], p["last"])
        k1, k2 = self.structure.sizes
        cls = type(f"Hierarchical{k1}_{k2}Matrix", (hierarchical.HierarchicalMatrixTemplate,), {"MAX_K1": k1, "MAX_K2": k2})
        return cls(p["A"], p["B"], p["C"], p["D"], p["E"])

    def __repr__(self) -> str:
        shapes = {k: list(v.shape) for k, v in self.parts.items()}
        return f"StructuredGram({self.structure}, dim={self.dim}, parts={shapes})"


def _run(diagram: Diagram, **operands: torch.Tensor) -> torch.Tensor:
    like = next(iter(operands.values()))
    shapes = {k: tuple(v.shape) for k, v in operands.items()}
    return plan(diagram, shapes, dtype=like.dtype, device=like.device)(**operands)


def structured_gram(X: torch.Tensor, structure: str = "dense", *, K: Any = None) -> StructuredGram:
    """``Π_struct(Kᵀ X Xᵀ K)`` for ``X`` ``[d, R]``; ``K``: None (the identity), a dense ``[d, d]`` tensor, or a
    structured matrix with ``rmatmat`` (singd's), applied as ``Kᵀ X`` without densifying it."""
    struct = st.Structure.parse(structure)
    if not isinstance(X, torch.Tensor) or X.ndim != 2 or not X.is_floating_point():
        raise ValueError(f"X must be a floating-point [d, R] tensor, got {_describe(X)}")
    d = X.shape[0]
    if K is not None:
        if isinstance(K, torch.Tensor):
            if tuple(K.shape) != (d, d):
                raise ValueError(f"K has shape {list(K.shape)}; expected [{d}, {d}] for X of shape {list(X.shape)}")
            X = K.T @ X
        elif callable(getattr(K, "rmatmat", None)):
            X = K.rmatmat(X)
        else:
            raise TypeError(f"K must be a [d, d] tensor or a structured matrix with rmatmat, got {type(K).__name__}")
    X = X.contiguous()
    r = X.shape[1]
    kind = struct.kind
    if kind == "dense":
        return StructuredGram(struct, d, {"mat": _run(st.gram("X", "X", d, d, r), X=X)})
    if kind == "diagonal":
        return StructuredGram(struct, d, {"diag": _run(st.diagonal("X", d, r), X=X)})
    if kind == "block_diagonal":
        (k,) = struct.sizes
        count = d // k
        full = X[: count * k]
        blocks = _run(st.blocks("X", count, k, r), X=full) if count else X.new_zeros(0, k, k)
        rest = X[count * k :]
        last = _run(st.gram("X", "X", rest.shape[0], rest.shape[0], r), X=rest) if rest.shape[0] else X.new_zeros(0, 0)
        return StructuredGram(struct, d, {"blocks": blocks, "last": last})
    if kind in ("tril_toeplitz", "triu_toeplitz"):
        sums = _run(st.diagonal_sums("X", d, r), X=X)
        # singd's projection: off-diagonals count from both triangles, each averaged over its length
        weights = 2.0 / torch.arange(d, 0, -1, dtype=X.dtype, device=X.device)
        weights[0] = 1.0 / d
        return StructuredGram(struct, d, {"diags": sums * weights})
    return StructuredGram(struct, d, _hierarchical(X, *struct.sizes))


def _hierarchical(X: torch.Tensor, max_k1: int, max_k2: int) -> dict[str, torch.Tensor]:
    d, r = X.shape
    if d <= max_k1:
        k1, dd = d, 0
    elif d <= max_k1 + max_k2:
        k1, dd = max_k1, 0
    else:
        k1, dd = max_k1, d - max_k1 - max_k2
    top, mid, bottom = X[:k1], X[k1 : k1 + dd], X[k1 + dd :]

    def cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape[0] == 0 or b.shape[0] == 0:
            return X.new_zeros(a.shape[0], b.shape[0])
        return _run(st.gram("L", "R", a.shape[0], b.shape[0], r), L=a.contiguous(), R=b.contiguous())

    below = X[k1:]
    return {
        "A": cross(top, top),
        "B": 2 * cross(top, below),
        "C": _run(st.diagonal("X", dd, r), X=mid.contiguous()) if dd else X.new_zeros(0),
        "D": 2 * cross(bottom, mid),
        "E": cross(bottom, bottom),
    }


def mode_product(tensor: torch.Tensor, matrix: torch.Tensor, mode: int) -> torch.Tensor:
    """``tensor ×_mode matrix``: axis ``mode`` of ``tensor`` (size ``d``) contracted with ``matrix`` ``[d′, d]``."""
    if not -tensor.ndim <= mode < tensor.ndim:
        raise ValueError(f"mode={mode} is out of range for a tensor with {tensor.ndim} axes")
    mode %= tensor.ndim
    if matrix.ndim != 2 or matrix.shape[1] != tensor.shape[mode]:
        raise ValueError(f"matrix has shape {list(matrix.shape)}; expected [d′, {tensor.shape[mode]}] for mode {mode}")
    legs = [f"a{i}" for i in range(tensor.ndim)]
    out = list(legs)
    out[mode] = "m"
    sizes = {leg: s for leg, s in zip(legs, tensor.shape)} | {"m": matrix.shape[0]}
    diagram = Diagram((operand("T", *legs), operand("M", "m", legs[mode])), tuple(out), sizes)
    return _run(diagram, T=tensor.contiguous(), M=matrix.contiguous())


def mode_gram(tensor: torch.Tensor, mode: int, structure: str = "dense", *, K: Any = None) -> StructuredGram:
    """The structured Gram of ``tensor`` unfolded along ``mode`` (IF-Shampoo's per-mode factor): ``Π_struct(Kᵀ T₍ₙ₎ T₍ₙ₎ᵀ K)``."""
    if not -tensor.ndim <= mode < tensor.ndim:
        raise ValueError(f"mode={mode} is out of range for a tensor with {tensor.ndim} axes")
    unfolded = tensor.movedim(mode, 0).reshape(tensor.shape[mode], -1)
    return structured_gram(unfolded, structure, K=K)


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {list(x.shape)}"
    return type(x).__name__


__all__ = ["StructuredGram", "mode_gram", "mode_product", "structured_gram"]
