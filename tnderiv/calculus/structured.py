"""Structured Grams ``Π_struct(X Xᵀ)`` as diagrams, for SINGD's and IF-Shampoo's structured factors.

``X`` is ``[d, R]`` (a KFAC half's rows as columns, or a tensor unfolded along one mode). Each structure keeps
only some entries of the ``d × d`` Gram, and each kept part is its own small network, so the dense Gram is
never formed where the structure allows:

- diagonal: ``Σ_r X[i, r]²`` (``O(d)``);
- block-diagonal with blocks of ``k``: the rows grouped as ``(j, p)``, glued on ``j`` and ``r`` (``O(d·k)``);
- Toeplitz: the sums along the diagonals, ``t[δ] = Σ_{i, r} X[i, r] X[i + δ, r]`` — the lag correlation of ``X``
  with itself, i.e. ``X`` glued to a copy through the index pattern ``Π[δ, o, i]`` (``i = o + δ``, stride 1,
  no padding), so the planner runs it as a convolution (``O(d)`` result, no ``d × d`` intermediate);
- hierarchical ``(k1, k2)``: the blocks ``A, B, C, D, E`` of rows sliced by the structure (``O(d·(k1 + k2))``).
"""

from __future__ import annotations

from dataclasses import dataclass

from tnderiv.ir import Diagram
from tnderiv.ir.nodes import PatternParams, operand, pattern

STRUCTURES = ("dense", "diagonal", "block_diagonal", "hierarchical", "tril_toeplitz", "triu_toeplitz")


@dataclass(frozen=True)
class Structure:
    """A parsed ``structure=`` string: ``kind`` and its sizes (``block_diagonal:k``, ``hierarchical:k1,k2``)."""

    kind: str
    sizes: tuple[int, ...] = ()

    @classmethod
    def parse(cls, value: object) -> Structure:
        if isinstance(value, Structure):
            return value
        if not isinstance(value, str):
            raise TypeError(f"structure={value!r}: expected a string such as 'diagonal' or 'block_diagonal:4'")
        kind, _, args = value.partition(":")
        if kind not in STRUCTURES:
            raise ValueError(f"structure={value!r} is not supported; expected one of {list(STRUCTURES)} ('block_diagonal:k', 'hierarchical:k1,k2')")
        want = {"block_diagonal": 1, "hierarchical": 2}.get(kind, 0)
        try:
            sizes = tuple(int(a) for a in args.split(",")) if args else ()
        except ValueError:
            raise ValueError(f"structure={value!r}: the sizes after ':' must be integers") from None
        if len(sizes) != want or any(s < 1 for s in sizes):
            form = {"block_diagonal": "'block_diagonal:k'", "hierarchical": "'hierarchical:k1,k2'"}.get(kind, f"'{kind}'")
            raise ValueError(f"structure={value!r}: expected {form} with positive sizes")
        return cls(kind, sizes)

    def __str__(self) -> str:
        return self.kind + (":" + ",".join(map(str, self.sizes)) if self.sizes else "")


def gram(left: str, right: str, rows_left: int, rows_right: int, r: int) -> Diagram:
    """``left @ rightᵀ``: ``[rows_left, rows_right]`` from operands ``left [rows_left, R]``, ``right [rows_right, R]``."""
    nodes = (operand(left, "i", "r"), operand(right, "j", "r"))
    return Diagram(nodes, ("i", "j"), {"i": rows_left, "j": rows_right, "r": r})


def diagonal(name: str, d: int, r: int) -> Diagram:
    """``Σ_r X[i, r]²``: ``[d]``."""
    return Diagram((operand(name, "i", "r"), operand(name, "i", "r")), ("i",), {"i": d, "r": r})


def blocks(name: str, count: int, k: int, r: int) -> Diagram:
    """The ``count`` diagonal blocks ``[count, k, k]`` of ``X Xᵀ`` for ``X`` ``[count·k, R]``."""
    nodes = (operand(name, ("j", "p"), "r"), operand(name, ("j", "q"), "r"))
    return Diagram(nodes, ("j", "p", "q"), {"j": count, "p": k, "q": k, "r": r})


def diagonal_sums(name: str, d: int, r: int) -> Diagram:
    """``t[δ] = Σ_{o, r} X[o, r] X[o + δ, r]`` (``δ = 0 … d−1``): ``[d]``, through the pattern ``Π[δ, o, i]``."""
    nodes = (operand(name, "o", "r"), pattern("k", "o", "i", PatternParams()), operand(name, "i", "r"))
    return Diagram(nodes, ("k",), {"k": d, "o": d, "i": d, "r": r})


__all__ = ["STRUCTURES", "Structure", "blocks", "diagonal", "diagonal_sums", "gram"]
