"""Layer and RMS normalization: statistics per sample (and sequence position) over the trailing legs.

x: ``[N, *S, *D]`` with legs ``n, s0.., d0..`` where ``D = normalized_shape``; weight, bias: ``D``.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from functools import lru_cache
from typing import Any

from tnderiv.ir import size_symbol
from tnderiv.layers.base import LayerNetwork, Shapes, register_module
from tnderiv.layers.norm.checks import epsilon, flag, rank_of, shape_tuple
from tnderiv.layers.norm.structure import NormStructure, Stats, norm_network


def _check_trailing(layer: str, shapes: Shapes, normalized: tuple[int, ...]) -> int:
    rank, source = rank_of(shapes, len(normalized) + 1)
    for name in ("x", "grad_out"):
        if name not in shapes:
            continue
        shape = tuple(shapes[name])
        if len(shape) < len(normalized) + 1 or shape[len(shape) - len(normalized) :] != normalized:
            raise ValueError(
                f"{name} has shape {shape}; {layer} with normalized_shape={normalized} expects [N, *S, {', '.join(map(str, normalized))}]"
            )
    return rank


def _trailing_structure(
    name: str, normalized: tuple[int, ...], shared: int, *, weight: bool, bias: bool, eps: float | None, stats: Stats
) -> NormStructure:
    s = tuple(f"s{j}" for j in range(shared))
    d = tuple(f"d{j}" for j in range(len(normalized)))
    sizes = {
        "n": size_symbol("N"),
        **{leg: size_symbol(f"S{j}") for j, leg in enumerate(s)},
        **dict(zip(d, normalized)),
    }
    return NormStructure(
        name=name,
        x_axes=tuple((leg,) for leg in ("n", *s, *d)),
        sizes=tuple(sizes.items()),
        stat_legs=("n", *s),
        param_axes=tuple((leg,) for leg in d),
        weight=weight,
        bias=bias,
        stats=stats,
        eps=eps,
    )


@dataclass(frozen=True)
class LayerNorm:
    """Like ``torch.nn.LayerNorm``. x: ``[N, *S, *normalized_shape]``; weight, bias: ``normalized_shape``."""

    normalized_shape: Any
    _: KW_ONLY
    eps: float = 1e-5
    elementwise_affine: bool = True
    bias: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "normalized_shape", shape_tuple("normalized_shape", self.normalized_shape))
        object.__setattr__(self, "eps", epsilon(self.eps))
        for name in ("elementwise_affine", "bias"):
            object.__setattr__(self, name, flag(name, getattr(self, name)))
        # a bias exists only with affine parameters (as in torch); one spelling per layer keeps specs comparable
        object.__setattr__(self, "bias", self.bias and self.elementwise_affine)

    def network(self, shapes: Shapes) -> LayerNetwork:
        """The network for inputs with ``rank − 1 − len(normalized_shape)`` sequence legs ``s..``."""
        rank = _check_trailing("LayerNorm", shapes, self.normalized_shape)
        return _layer_network(self, rank - 1 - len(self.normalized_shape))

    @staticmethod
    def from_module(module: Any) -> LayerNorm:
        """The spec of a ``torch.nn.LayerNorm``."""
        import torch.nn as nn

        if not isinstance(module, nn.LayerNorm):
            raise TypeError(f"LayerNorm.from_module expects torch.nn.LayerNorm, got {type(module).__name__}")
        return LayerNorm(
            tuple(module.normalized_shape),
            eps=module.eps,
            elementwise_affine=module.elementwise_affine,
            bias=module.bias is not None,
        )


@lru_cache(maxsize=64)
def _layer_network(spec: LayerNorm, shared: int) -> LayerNetwork:
    affine = spec.elementwise_affine
    structure = _trailing_structure(
        "LayerNorm",
        spec.normalized_shape,
        shared,
        weight=affine,
        bias=affine and spec.bias,
        eps=spec.eps,
        stats=Stats.MEAN_VAR,
    )
    return norm_network(structure)


@dataclass(frozen=True)
class RMSNorm:
    """Like ``torch.nn.RMSNorm``: ``y = x / sqrt(mean(x²) + eps) · weight``; ``eps=None``: the dtype's machine epsilon."""

    normalized_shape: Any
    _: KW_ONLY
    eps: float | None = None
    elementwise_affine: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "normalized_shape", shape_tuple("normalized_shape", self.normalized_shape))
        object.__setattr__(self, "eps", epsilon(self.eps, optional=True))
        object.__setattr__(self, "elementwise_affine", flag("elementwise_affine", self.elementwise_affine))

    def network(self, shapes: Shapes) -> LayerNetwork:
        """The network for inputs with ``rank − 1 − len(normalized_shape)`` sequence legs ``s..``."""
        rank = _check_trailing("RMSNorm", shapes, self.normalized_shape)
        return _rms_network(self, rank - 1 - len(self.normalized_shape))

    @staticmethod
    def from_module(module: Any) -> RMSNorm:
        """The spec of a ``torch.nn.RMSNorm``."""
        import torch.nn as nn

        if not isinstance(module, nn.RMSNorm):
            raise TypeError(f"RMSNorm.from_module expects torch.nn.RMSNorm, got {type(module).__name__}")
        return RMSNorm(tuple(module.normalized_shape), eps=module.eps, elementwise_affine=module.elementwise_affine)


@lru_cache(maxsize=64)
def _rms_network(spec: RMSNorm, shared: int) -> LayerNetwork:
    structure = _trailing_structure(
        "RMSNorm",
        spec.normalized_shape,
        shared,
        weight=spec.elementwise_affine,
        bias=False,
        eps=spec.eps,
        stats=Stats.RMS,
    )
    return norm_network(structure)


def _register() -> None:
    import torch.nn as nn

    register_module(nn.LayerNorm)(LayerNorm.from_module)
    register_module(nn.RMSNorm)(RMSNorm.from_module)


_register()
