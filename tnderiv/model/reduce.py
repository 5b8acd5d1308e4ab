"""Quantities from materialized per-sample gradients ``[N, *p]`` and backpropagated columns ``[M, N, *p]``.

Used where the derived diagrams cannot be glued directly: a parameter with several uses (tied weights,
a module called twice) sums its uses first; a fallback module has only materialized tensors. These are
the definitions of the statistics and GGN quantities written once, for any parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

STATS = ("sum_grad_squared", "batch_l2", "variance", "batch_dot")
GGN_KINDS = {"ggn_diag": "diag", "per_sample_ggn_diag": "per_sample_diag", "ggn_block": "block", "ggn_gram": "gram"}


def stat_of(psg: torch.Tensor, stat: str) -> torch.Tensor:
    """One statistic of per-sample gradients ``psg`` ``[N, *p]`` (``Σ_n psg[n]`` is the gradient)."""
    flat = psg.reshape(psg.shape[0], -1)
    if stat == "sum_grad_squared":
        return (psg * psg).sum(0)
    if stat == "batch_l2":
        return (flat * flat).sum(1)
    if stat == "variance":
        n = psg.shape[0]
        mean = psg.sum(0) / n
        return (psg * psg).sum(0) / n - mean * mean
    if stat == "batch_dot":
        return flat @ flat.T
    raise ValueError(f"unknown statistic {stat!r}; expected one of {list(STATS)}")


def ggn_of(cols: torch.Tensor, kind: str) -> torch.Tensor:
    """A GGN quantity of columns ``[M, N, *p]``: diag ``[*p]``, per-sample diag ``[N, *p]``, block ``[*p, *p]``, Gram ``[M, N, M, N]``."""
    m, n, shape = cols.shape[0], cols.shape[1], tuple(cols.shape[2:])
    if kind == "diag":
        return (cols * cols).sum((0, 1))
    if kind == "per_sample_diag":
        return (cols * cols).sum(0)
    flat = cols.reshape(m * n, -1)
    if kind == "block":
        return (flat.T @ flat).reshape(*shape, *shape)
    if kind == "gram":
        return (flat @ flat.T).reshape(m, n, m, n)
    raise ValueError(f"unknown GGN kind {kind!r}")


@dataclass(frozen=True)
class ExactCurvature:
    """The exact GGN of a module's parameters where KFAC is not defined for it: a ``[P, P]`` block
    (``kind="ggn_block"``) or, for large modules, its diagonal ``[P]`` (``kind="ggn_diag"``).

    Vectors are flat ``[P]`` (the parameters flattened in ``names`` order) or dicts by name.
    """

    kind: str
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    matrix: torch.Tensor
    damping: float | None = None  # set on an inverse: the matrix is then (GGN + damping·I)⁻¹ applied as is

    @property
    def numel(self) -> int:
        return sum(int(torch.Size(s).numel()) for s in self.shapes)

    def _flat(self, v: Any) -> torch.Tensor:
        if isinstance(v, dict):
            if set(v) != set(self.names):
                raise ValueError(f"v has entries {sorted(v)}; expected exactly {list(self.names)}")
            return torch.cat([v[k].reshape(-1) for k in self.names])
        if tuple(v.shape) != (self.numel,):
            raise ValueError(f"v has shape {tuple(v.shape)}; expected a flat vector [{self.numel}] or a dict by name")
        return v

    def _unflat(self, flat: torch.Tensor, like: Any) -> Any:
        if not isinstance(like, dict):
            return flat
        out, start = {}, 0
        for name, shape in zip(self.names, self.shapes):
            size = int(torch.Size(shape).numel())
            out[name] = flat[start : start + size].reshape(shape)
            start += size
        return out

    def matvec(self, v: Any) -> Any:
        """The matrix (or its inverse, on an inverse) times ``v``."""
        flat = self._flat(v)
        result = self.matrix * flat if self.kind == "ggn_diag" else self.matrix @ flat
        return self._unflat(result, v)

    def __matmul__(self, v: Any) -> Any:
        return self.matvec(v)

    def inverse(self, damping: float = 0.0) -> ExactCurvature:
        """``(GGN + damping·I)⁻¹``."""
        if not isinstance(damping, (int, float)) or isinstance(damping, bool) or damping < 0:
            raise ValueError(f"damping={damping!r}: expected a non-negative number")
        if self.kind == "ggn_diag":
            inv = 1.0 / (self.matrix + damping)
        else:
            eye = torch.eye(self.matrix.shape[0], dtype=self.matrix.dtype, device=self.matrix.device)
            inv = torch.linalg.inv(self.matrix + damping * eye)
        return ExactCurvature(self.kind, self.names, self.shapes, inv, float(damping))

    def to_dense(self) -> torch.Tensor:
        return torch.diag(self.matrix) if self.kind == "ggn_diag" else self.matrix

    def __repr__(self) -> str:
        inv = f", inverse with damping={self.damping}" if self.damping is not None else ""
        return f"ExactCurvature({self.kind}, params={list(self.names)}, P={self.numel}{inv})"


def exact_curvature(cols: dict[str, torch.Tensor], max_block: int) -> ExactCurvature:
    """The exact GGN block of the joint parameters of ``cols`` (``{name: [M, N, *p]}``), or its diagonal when ``P > max_block``."""
    names = tuple(cols)
    first = cols[names[0]]
    flat = torch.cat([cols[k].reshape(first.shape[0] * first.shape[1], -1) for k in names], dim=1)
    shapes = tuple(tuple(cols[k].shape[2:]) for k in names)
    if flat.shape[1] > max_block:
        return ExactCurvature("ggn_diag", names, shapes, (flat * flat).sum(0))
    return ExactCurvature("ggn_block", names, shapes, flat.T @ flat)


__all__ = ["GGN_KINDS", "STATS", "ExactCurvature", "exact_curvature", "ggn_of", "stat_of"]
