"""What all normalization layers share: ``y = γ ⊙ x̂ + β`` and the input Jacobian as a sum of small networks.

A normalization layer is described by how the legs of its input ``x`` split:

- the *statistic legs* ``K`` index the statistics (``inv_std[K]``, the mean): ``c`` for batch norm,
  ``n, g`` for group norm, ``n, s..`` for layer norm;
- the *normalized legs* ``R`` (all other legs of ``x``) are averaged over; ``M = Π |R|``;
- the parameter axes ``P`` carry ``weight`` (γ) and ``bias`` (β).

The forward is affine in ``x̂`` (a derived operand computed from ``x`` in ``prepare``):
``y = x̂[L] γ[P] + β[P] 1[L∖P]``. The input Jacobian (``linearized["x"]``, in the operand ``tangent``):

    J·t = γ r (t − mean_R(t) − x̂ mean_R(x̂ t))      mean and variance over R   (Stats.MEAN_VAR)
    J·t = γ r (t − x̂ mean_R(x̂ t))                  root mean square over R    (Stats.RMS)
    J·t = γ r t                                      running statistics          (Stats.RUNNING)

with ``r = inv_std[K]``; each ``mean_R`` is a network with the normalized legs summed on a primed
copy and the coefficient ``−1/M`` (a sympy expression in the size symbols, bound at plan time).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import sympy

from tnderiv.ir import Diagram, DiagramSum, Expression, as_size, ones, operand
from tnderiv.layers.base import LayerNetwork

Axes = tuple[tuple[str, ...], ...]
DERIVED = ("x_hat", "inv_std")
RUNNING = ("running_mean", "running_var")


class Stats(str, enum.Enum):
    """How ``x̂`` is computed from ``x``."""

    MEAN_VAR = "mean_var"  # x̂ = (x − mean_R x) / sqrt(var_R x + eps), biased variance
    RMS = "rms"  # x̂ = x / sqrt(mean_R x² + eps)
    RUNNING = "running"  # x̂ = (x − running_mean) / sqrt(running_var + eps), constants per K


@dataclass(frozen=True)
class NormStructure:
    """The legs of a normalization layer and how they split (see the module docstring).

    ``x_axes``: axis groups of ``x`` (e.g. ``(("n",), ("g", "c"), ("i0",))``); ``sizes``: leg sizes;
    ``stat_legs``: ``K``; ``param_axes``: axis groups of ``weight``/``bias``; ``eps=None``: the
    machine epsilon of ``x``'s dtype (torch's default for RMS norm). ``name`` is used in messages.
    """

    name: str
    x_axes: Axes
    sizes: tuple[tuple[str, Any], ...]
    stat_legs: tuple[str, ...]
    param_axes: Axes
    weight: bool
    bias: bool
    stats: Stats
    eps: float | None
    couples_batch: bool = False
    min_count_message: str | None = None

    @property
    def x_legs(self) -> tuple[str, ...]:
        return tuple(leg for axis in self.x_axes for leg in axis)

    @property
    def normalized_legs(self) -> tuple[str, ...]:
        """``R``: the legs averaged over (all legs of ``x`` except the statistic legs)."""
        return tuple(leg for leg in self.x_legs if leg not in self.stat_legs)

    @property
    def param_legs(self) -> tuple[str, ...]:
        return tuple(leg for axis in self.param_axes for leg in axis)

    @property
    def size_map(self) -> dict[str, sympy.Expr]:
        return {leg: as_size(size) for leg, size in self.sizes}

    @property
    def count(self) -> sympy.Expr:
        """``M``: the number of normalized elements per statistic (symbolic)."""
        sizes = self.size_map
        return sympy.Mul(*(sizes[leg] for leg in self.normalized_legs))


def _groups(axes: Axes) -> tuple[int, ...] | None:
    return None if all(len(a) == 1 for a in axes) else tuple(len(a) for a in axes)


def _primed(axes: Axes, legs: tuple[str, ...]) -> Axes:
    return tuple(tuple(leg + "'" if leg in legs else leg for leg in axis) for axis in axes)


def forward_diagram(s: NormStructure) -> Expression:
    """``y[L] = x̂[L] γ[P] + β[P] 1[L∖P]`` (without γ or β where the layer has none)."""
    sizes, legs, groups = s.size_map, s.x_legs, _groups(s.x_axes)
    scaled = (operand("x_hat", *s.x_axes),) + ((operand("weight", *s.param_axes),) if s.weight else ())
    terms = [Diagram(scaled, legs, sizes, open_groups=groups)]
    if s.bias:
        rest = tuple(leg for leg in legs if leg not in s.param_legs)
        terms.append(Diagram((operand("bias", *s.param_axes), ones(*rest)), legs, sizes, open_groups=groups))
    return terms[0] if len(terms) == 1 else DiagramSum(tuple(terms))


def jacobian_diagram(s: NormStructure) -> Expression:
    """``J·tangent`` as a sum of networks: ``γ r t − (1/M) γ r 1_R Σ_R' t − (1/M) γ r x̂ Σ_R' x̂ t``."""
    sizes, legs, groups = s.size_map, s.x_legs, _groups(s.x_axes)
    scale = ((operand("weight", *s.param_axes),) if s.weight else ()) + (operand("inv_std", *s.stat_legs),)
    terms = [Diagram((*scale, operand("tangent", *s.x_axes)), legs, sizes, open_groups=groups)]
    if s.stats is Stats.RUNNING:
        return terms[0]
    normalized = s.normalized_legs
    summed = _primed(s.x_axes, normalized)
    sizes.update({leg + "'": sizes[leg] for leg in normalized})
    coefficient = -1 / s.count
    tangent, x_hat_summed = operand("tangent", *summed), operand("x_hat", *summed)
    if s.stats is Stats.MEAN_VAR:
        mean_term = (*scale, ones(*normalized), tangent)
        terms.append(Diagram(mean_term, legs, sizes, coefficient, groups))
    variance_term = (*scale, operand("x_hat", *s.x_axes), x_hat_summed, tangent)
    terms.append(Diagram(variance_term, legs, sizes, coefficient, groups))
    return DiagramSum(tuple(terms))


@lru_cache(maxsize=256)
def norm_network(s: NormStructure) -> LayerNetwork:
    """The layer network: forward in ``x̂``, the input linearized, ``prepare`` computing ``x̂, inv_std``."""
    params = (("weight",) if s.weight else ()) + (("bias",) if s.bias else ())
    shared = tuple(leg for leg in s.x_legs[1:] if leg not in s.param_legs)

    def prepare(tensors: Mapping[str, Any]) -> dict[str, Any]:
        return prepare_stats(s, tensors)

    return LayerNetwork(
        forward=forward_diagram(s),
        inputs=("x",),
        params=params,
        batch_leg=s.x_legs[0],
        shared_legs=shared,
        couples_batch=s.couples_batch,
        linearized={"x": jacobian_diagram(s)},
        derived=DERIVED,
        prepare=prepare,
    )


# ----- numerics of the forward: x̂ and inv_std from x (torch or cupy arrays) ------------------------


def _mean(array: Any, axes: tuple[int, ...]) -> Any:
    if type(array).__module__.split(".")[0] == "torch":
        return array.mean(dim=axes, keepdim=True)
    return array.mean(axis=axes, keepdims=True)


def _machine_eps(array: Any) -> float:
    if type(array).__module__.split(".")[0] == "torch":
        import torch

        return float(torch.finfo(array.dtype).eps)
    import numpy as np

    return float(np.finfo(array.dtype).eps)


def prepare_stats(s: NormStructure, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """``{"x_hat": [like x], "inv_std": [*K]}`` from ``tensors["x"]`` (and the running statistics)."""
    x = tensors.get("x")
    if x is None:
        raise ValueError(f"{s.name} needs x=... : its normalization statistics are computed from x")
    leg_shape = _leg_shape(s, tuple(x.shape))
    legs = s.x_legs
    xl = x.reshape(leg_shape)
    stat_shape = tuple(leg_shape[legs.index(leg)] for leg in s.stat_legs)
    eps = _machine_eps(x) if s.eps is None else s.eps
    if s.stats is Stats.RUNNING:
        broadcast = tuple(size if leg in s.stat_legs else 1 for leg, size in zip(legs, leg_shape))
        mean, var = (_running(s, tensors, name, stat_shape).reshape(broadcast) for name in RUNNING)
        inv_std = (var + eps) ** -0.5
        centered = xl - mean
    else:
        axes = tuple(legs.index(leg) for leg in s.normalized_legs)
        if s.min_count_message is not None and math.prod(leg_shape[a] for a in axes) == 1:  # none (an empty batch) is fine, as in torch
            raise ValueError(f"{s.min_count_message}, got x of shape {tuple(x.shape)}")
        if s.stats is Stats.MEAN_VAR:
            centered = xl - _mean(xl, axes)
            inv_std = (_mean(centered * centered, axes) + eps) ** -0.5
        else:
            centered = xl
            inv_std = (_mean(xl * xl, axes) + eps) ** -0.5
    return {"x_hat": (centered * inv_std).reshape(tuple(x.shape)), "inv_std": inv_std.reshape(stat_shape)}


def _leg_shape(s: NormStructure, shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) != len(s.x_axes):
        raise ValueError(f"x has shape {shape}; {s.name} expects {len(s.x_axes)} axes here")
    sizes = s.size_map
    out: list[int] = []
    for axis, value in zip(s.x_axes, shape):
        if len(axis) == 1:
            out.append(int(value))
        else:
            out.extend(int(sizes[leg]) for leg in axis)
    return tuple(out)


def _running(s: NormStructure, tensors: Mapping[str, Any], name: str, stat_shape: tuple[int, ...]) -> Any:
    value = tensors.get(name)
    if value is None:
        raise ValueError(
            f"{s.name} with running statistics needs running_mean=... and running_var=... (shape {stat_shape}); "
            f"{name} is missing"
        )
    if tuple(value.shape) != stat_shape:
        raise ValueError(f"{name} has shape {tuple(value.shape)}; expected {stat_shape}")
    return value
