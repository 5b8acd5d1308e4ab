"""Group normalization: statistics per sample and group of channels, over the group's channels and space.

x: ``[N, C, *I]`` with legs ``n, (g c), i0..`` (``C = G·c``); weight, bias: ``[C]`` on ``(g c)``.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from functools import lru_cache
from typing import Any

from tnderiv.ir import size_symbol
from tnderiv.layers.base import LayerNetwork, Shapes, register_module
from tnderiv.layers.norm.checks import epsilon, flag, positive_int, rank_of
from tnderiv.layers.norm.structure import NormStructure, Stats, norm_network


@dataclass(frozen=True)
class GroupNorm:
    """Like ``torch.nn.GroupNorm``. x: ``[N, C, *I]``; weight, bias: ``[C]``; output like x."""

    num_groups: int
    num_channels: int
    _: KW_ONLY
    eps: float = 1e-5
    affine: bool = True
    bias: bool = True

    def __post_init__(self) -> None:
        positive_int("num_groups", self.num_groups)
        positive_int("num_channels", self.num_channels)
        if self.num_channels % self.num_groups:
            raise ValueError(f"num_channels={self.num_channels} is not divisible by num_groups={self.num_groups}")
        object.__setattr__(self, "eps", epsilon(self.eps))
        for name in ("affine", "bias"):
            object.__setattr__(self, name, flag(name, getattr(self, name)))
        # a bias exists only with affine parameters (as in torch); one spelling per layer keeps specs comparable
        object.__setattr__(self, "bias", self.bias and self.affine)

    def network(self, shapes: Shapes) -> LayerNetwork:
        """The network for inputs ``[N, C, *I]`` with ``len(I)`` from ``x`` or ``grad_out`` (else 0)."""
        rank, source = rank_of(shapes, 2)
        for name in ("x", "grad_out"):
            if name not in shapes:
                continue
            shape = tuple(shapes[name])
            if len(shape) < 2:
                raise ValueError(f"{name} has shape {shape} with {len(shape)} axes; GroupNorm expects [N, C, *I]")
            if shape[1] != self.num_channels:
                raise ValueError(
                    f"{name} has shape {shape}: axis 1 (g c) is {shape[1]}, expected num_channels={self.num_channels}"
                )
        return _group_network(self, rank - 2)

    @staticmethod
    def from_module(module: Any) -> GroupNorm:
        """The spec of a ``torch.nn.GroupNorm``."""
        import torch.nn as nn

        if not isinstance(module, nn.GroupNorm):
            raise TypeError(f"GroupNorm.from_module expects torch.nn.GroupNorm, got {type(module).__name__}")
        return GroupNorm(
            module.num_groups, module.num_channels, eps=module.eps, affine=module.affine, bias=module.bias is not None
        )


@lru_cache(maxsize=64)
def _group_network(spec: GroupNorm, spatial: int) -> LayerNetwork:
    i = tuple(f"i{d}" for d in range(spatial))
    g = spec.num_groups
    sizes = {
        "n": size_symbol("N"),
        "g": g,
        "c": spec.num_channels // g,
        **{leg: size_symbol(f"I{d}") for d, leg in enumerate(i)},
    }
    structure = NormStructure(
        name="GroupNorm",
        x_axes=(("n",), ("g", "c"), *((leg,) for leg in i)),
        sizes=tuple(sizes.items()),
        stat_legs=("n", "g"),
        param_axes=(("g", "c"),),
        weight=spec.affine,
        bias=spec.affine and spec.bias,
        stats=Stats.MEAN_VAR,
        eps=spec.eps,
    )
    return norm_network(structure)


def _register() -> None:
    import torch.nn as nn

    register_module(nn.GroupNorm)(GroupNorm.from_module)


_register()
