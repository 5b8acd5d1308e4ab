"""The Kronecker operator of KFAC: parameter layouts, Kronecker blocks, the block-diagonal operator and ``KFAC``.

Per group ``g`` a block is ``left[g] ⊗ right[g]`` on the parameter rows ``[d_out, d_in]`` flattened
row-major; ``matvec`` and ``to_dense`` use the order ``weight.flatten()`` then ``bias.flatten()``.
(``tnderiv.api_kfac`` computes the factors and re-exports these classes.)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from tnderiv.calculus.kfac import KFACSplit
from tnderiv.plan.compiled import Plan


def _shape(t: Any) -> str:
    """``[d0, d1, …]`` of a tensor, for compact reprs (shapes, never values)."""
    return "None" if t is None else str(list(t.shape))


@dataclass(frozen=True)
class ParamLayout:
    """How the entries of a parameter map to a block ``[G, d_out, d_in]`` (``d_in = 1`` for a bias)."""

    name: str
    shape: tuple[int, ...]
    leg_shape: tuple[int, ...]
    perm: tuple[int, ...]
    blocks: tuple[int, int, int]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def to_blocks(self, v: Any) -> Any:
        """``v`` shaped like the parameter → ``[G, d_out, d_in]``."""
        return v.reshape(self.leg_shape).permute(self.perm).reshape(self.blocks)

    def from_blocks(self, b: Any) -> Any:
        """``[G, d_out, d_in]`` → shaped like the parameter."""
        permuted = tuple(self.leg_shape[p] for p in self.perm)
        inverse = tuple(int(i) for i in np.argsort(self.perm))
        return b.reshape(permuted).permute(inverse).reshape(self.shape)


def param_layout(split: KFACSplit, sizes: Mapping[str, int]) -> ParamLayout:
    """The layout of ``split``'s parameter: its legs regrouped as ``[G, d_out, d_in]`` for these sizes."""
    legs = split.param_legs
    leg_shape = tuple(sizes[leg] for leg in legs)
    order = (*split.group_legs, *split.output_legs, *split.input_legs)
    perm = tuple(legs.index(leg) for leg in order)
    shape, start = [], 0
    for length in split.param_groups:
        shape.append(math.prod(leg_shape[start : start + length]))
        start += length
    g, d_out, d_in = (math.prod(sizes[leg] for leg in part) for part in (split.group_legs, split.output_legs, split.input_legs))
    blocks = (g, d_out, d_in)
    return ParamLayout(split.param, tuple(shape), leg_shape, perm, blocks)


@dataclass(frozen=True)
class KroneckerBlock:
    """``left ⊗ right`` per group on the parameters ``layouts`` (joined along ``d_in``).

    With ``weights`` (``[G, d_out, d_in]``) the block is ``(left ⊗ right) diag(weights) (left ⊗ right)ᵀ``
    (an eigendecomposition: how inverses are stored).
    """

    layouts: tuple[ParamLayout, ...]
    left: Any
    right: Any
    weights: Any = None

    def __repr__(self) -> str:
        inverse = ", eigendecomposed" if self.weights is not None else ""
        names = [layout.name for layout in self.layouts]
        return f"KroneckerBlock(params={names}, left {_shape(self.left)}, right {_shape(self.right)}{inverse})"

    def apply(self, v: Any) -> Any:
        """``[G, d_out, d_in]`` → the block times ``v``, same shape."""
        if self.weights is None:
            return self.left @ v @ self.right.transpose(-1, -2)
        inner = self.left.transpose(-1, -2) @ v @ self.right
        return self.left @ (self.weights * inner) @ self.right.transpose(-1, -2)

    def dense(self) -> Any:
        """``[G, d_out·d_in, d_out·d_in]``."""
        g, a, b = self.left.shape[0], self.left.shape[-1], self.right.shape[-1]
        # per-group Kronecker product left[g] ⊗ right[g] (operator algebra, not a layer quantity)
        kron = (self.left[:, :, None, :, None] * self.right[:, None, :, None, :]).reshape(g, a * b, a * b)
        if self.weights is None:
            return kron
        return kron @ (self.weights.reshape(g, -1, 1) * kron.transpose(-1, -2))


@dataclass(frozen=True)
class KroneckerOperator:
    """A block-diagonal operator on ``(weight, bias)`` made of Kronecker blocks."""

    blocks: tuple[KroneckerBlock, ...]
    params: tuple[ParamLayout, ...]

    def _param_shapes(self) -> str:
        return "{" + ", ".join(f"{p.name!r}: {list(p.shape)}" for p in self.params) + "}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(params={self._param_shapes()}, blocks={list(self.blocks)})"

    @property
    def numel(self) -> int:
        """Number of parameters the operator acts on."""
        return sum(p.numel for p in self.params)

    def matvec(self, v: Any) -> Any:
        """The operator times ``v``: a flat ``[P]`` vector (``weight.flatten()`` then ``bias``) or a dict by name."""
        tensors = self._split(v)
        out: dict[str, Any] = {}
        for block in self.blocks:
            parts = [layout.to_blocks(tensors[layout.name]) for layout in block.layouts]
            result = block.apply(torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0])
            start = 0
            for layout in block.layouts:
                width = layout.blocks[2]
                out[layout.name] = layout.from_blocks(result[..., start : start + width])
                start += width
        if isinstance(v, Mapping):
            return out
        return _cat_flat([out[p.name] for p in self.params])

    def __matmul__(self, v: Any) -> Any:
        return self.matvec(v)

    def to_dense(self) -> Any:
        """The dense ``[P, P]`` matrix (small layers only)."""
        first = self.blocks[0].left
        dense = torch.zeros(self.numel, self.numel, dtype=first.dtype, device=first.device)
        offsets = dict(zip((p.name for p in self.params), np.cumsum([0] + [p.numel for p in self.params]).tolist()))
        for block in self.blocks:
            parts = []
            for layout in block.layouts:
                index = torch.arange(offsets[layout.name], offsets[layout.name] + layout.numel, device=first.device)
                parts.append(layout.to_blocks(index))
            index = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
            flat = index.reshape(index.shape[0], -1)
            values = block.dense()
            for g in range(flat.shape[0]):
                dense[flat[g][:, None], flat[g][None, :]] = values[g]
        return dense

    def _split(self, v: Any) -> dict[str, Any]:
        if isinstance(v, Mapping):
            unknown = set(v) - {p.name for p in self.params}
            missing = {p.name for p in self.params} - set(v)
            if unknown or missing:
                raise ValueError(f"v has entries {sorted(v)}; expected exactly {[p.name for p in self.params]}")
            for p in self.params:
                if tuple(v[p.name].shape) != p.shape:
                    raise ValueError(f"v[{p.name!r}] has shape {tuple(v[p.name].shape)}; expected {p.shape}")
            return dict(v)
        if not hasattr(v, "shape") or tuple(v.shape) != (self.numel,):
            shape = tuple(v.shape) if hasattr(v, "shape") else type(v).__name__
            raise ValueError(f"v has shape {shape}; expected a flat vector [{self.numel}] or a dict {{name: tensor}}")
        out, start = {}, 0
        for p in self.params:
            out[p.name] = v[start : start + p.numel].reshape(p.shape)
            start += p.numel
        return out


def _cat_flat(tensors: Sequence[Any]) -> Any:
    return torch.cat([t.reshape(-1) for t in tensors])


@dataclass(frozen=True)
class KFAC(KroneckerOperator):
    """KFAC of a layer: ``A`` ``[G, d_in, d_in]``, ``G`` ``[G, d_out, d_out]`` and, for ``bias_mode="separate"``,
    ``A_bias`` ``[G, 1, 1]`` and ``G_bias`` ``[G, d_out, d_out]`` (``None`` without a bias).

    The weight block is ``G[g] ⊗ A[g]`` per group (``bias_mode="append"``: on ``[weight | bias]`` rows,
    ``A`` then has ``d_in + 1`` rows). ``plans`` are the compiled plans that ran, by factor name.
    Construct it with keywords.
    """

    A: Any = None
    G: Any = None
    A_bias: Any = None
    G_bias: Any = None
    approx: Literal["expand", "reduce"] = "expand"
    bias_mode: Literal["separate", "append"] = "separate"
    plans: Mapping[str, tuple[Plan, ...]] = field(default_factory=dict)

    @property
    def bias(self) -> str:
        """Deprecated: ``bias_mode``."""
        warnings.warn("KFAC.bias is deprecated; read KFAC.bias_mode (bias= means the bias tensor elsewhere)", DeprecationWarning, stacklevel=2)
        return self.bias_mode

    def __repr__(self) -> str:
        factors = ", ".join(
            f"{name} {_shape(getattr(self, name))}" for name in ("A", "G", "A_bias", "G_bias") if getattr(self, name) is not None
        )
        return f"KFAC({self.approx}, bias_mode={self.bias_mode!r}, {factors}, params={self._param_shapes()})"

    def inverse(self, damping: float = 0.0, *, damp: Literal["exact", "factors"] = "exact") -> KroneckerOperator:
        """``(KFAC + damping·I)⁻¹`` (``damp="exact"``) or ``(A + √δ I)⁻¹ ⊗ (G + √δ I)⁻¹`` per block
        (``damp="factors"``), from eigendecompositions of the factors."""
        if not isinstance(damping, (int, float)) or isinstance(damping, bool) or damping < 0:
            raise ValueError(f"damping={damping!r}: expected a non-negative number")
        if damp not in ("exact", "factors"):
            raise ValueError(f"damp={damp!r} is not supported; expected 'exact' or 'factors'")
        blocks = []
        for block in self.blocks:
            sigma, left = torch.linalg.eigh(block.left)
            lam, right = torch.linalg.eigh(block.right)
            if damp == "exact":
                weights = 1.0 / (sigma[:, :, None] * lam[:, None, :] + damping)
            else:
                root = math.sqrt(damping)
                weights = 1.0 / ((sigma[:, :, None] + root) * (lam[:, None, :] + root))
            blocks.append(KroneckerBlock(block.layouts, left, right, weights))
        return KroneckerOperator(tuple(blocks), self.params)


__all__ = ["KFAC", "KroneckerBlock", "KroneckerOperator", "ParamLayout", "param_layout"]
