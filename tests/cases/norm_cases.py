"""Normalization layers as the user writes them, with independent torch references (``torch.nn.functional``).

Nothing here calls tnderiv's numerics: ``NormConfig.oracle`` reads the raw user arguments, never a
normalized spec, and evaluates torch's own functional layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import grad, vmap
from torch.func import jvp as torch_jvp
from torch.func import vjp as torch_vjp

import tnderiv

FAMILIES = ("batch", "instance", "group", "layer", "rms")
TOL = dict(rtol=1e-10, atol=1e-10)
STATS = ("running_mean", "running_var")


@dataclass(frozen=True)
class NormConfig:
    """One normalization layer and the input shape of one test.

    ``family``: batch, instance, group, layer or rms. ``x_shape``: the input's shape. ``channels``
    (batch/instance/group), ``groups`` (group), ``normalized_shape`` (layer/rms), ``affine``
    (also ``elementwise_affine``), ``bias``, ``running_stats`` (batch/instance: eval mode with tracked
    statistics), ``eps`` (None for rms: torch's default).
    """

    family: str
    x_shape: tuple[int, ...]
    channels: int = 0
    groups: int = 1
    normalized_shape: tuple[int, ...] = ()
    affine: bool = True
    bias: bool = True
    running_stats: bool = False
    eps: float | None = 1e-5
    dims: int | None = field(default=None)

    # ----- what the user passes ----------------------------------------------------------------
    def spec(self) -> Any:
        """The tnderiv spec, built from the raw arguments."""
        f = self.family
        if f == "batch":
            return tnderiv.BatchNorm(
                self.channels,
                eps=self.eps,
                affine=self.affine,
                bias=self.bias,
                running_stats=self.running_stats,
                dims=self.dims,
            )
        if f == "instance":
            return tnderiv.InstanceNorm(
                self.channels,
                eps=self.eps,
                affine=self.affine,
                bias=self.bias,
                running_stats=self.running_stats,
                dims=self.dims,
            )
        if f == "group":
            return tnderiv.GroupNorm(self.groups, self.channels, eps=self.eps, affine=self.affine, bias=self.bias)
        if f == "layer":
            return tnderiv.LayerNorm(
                self.normalized_shape, eps=self.eps, elementwise_affine=self.affine, bias=self.bias
            )
        if f == "rms":
            return tnderiv.RMSNorm(self.normalized_shape, eps=self.eps, elementwise_affine=self.affine)
        raise ValueError(self.family)

    def module(self, dtype: torch.dtype = torch.float64) -> nn.Module:
        """The torch module with the same arguments (in eval mode where ``running_stats``)."""
        f, kw = self.family, {"dtype": dtype}
        if f in ("batch", "instance"):
            dims = self.dims or max(1, len(self.x_shape) - 2)
            cls = {
                "batch": (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d),
                "instance": (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d),
            }[f][dims - 1]
            track = True if f == "batch" else self.running_stats
            m = cls(self.channels, eps=self.eps, affine=self.affine, bias=self.bias, track_running_stats=track, **kw)
            m.train(not self.running_stats)
        elif f == "group":
            m = nn.GroupNorm(self.groups, self.channels, eps=self.eps, affine=self.affine, bias=self.bias, **kw)
        elif f == "layer":
            m = nn.LayerNorm(self.normalized_shape, eps=self.eps, elementwise_affine=self.affine, bias=self.bias, **kw)
        else:
            m = nn.RMSNorm(self.normalized_shape, eps=self.eps, elementwise_affine=self.affine, **kw)
        return m

    @property
    def param_shape(self) -> tuple[int, ...]:
        return self.normalized_shape if self.family in ("layer", "rms") else (self.channels,)

    @property
    def param_names(self) -> tuple[str, ...]:
        if not self.affine:
            return ()
        has_bias = self.bias and self.family != "rms"
        return ("weight", "bias") if has_bias else ("weight",)

    @property
    def couples_batch(self) -> bool:
        return self.family == "batch" and not self.running_stats

    def tensors(self, seed: int, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
        """Random ``x``, parameters and running statistics (running_var > 0), by operand name."""
        gen = torch.Generator().manual_seed(seed)
        out = {"x": torch.randn(self.x_shape, generator=gen, dtype=dtype) * 2 + 0.5}
        for name in self.param_names:
            out[name] = torch.randn(self.param_shape, generator=gen, dtype=dtype)
        if self.running_stats:
            out["running_mean"] = torch.randn(self.channels, generator=gen, dtype=dtype)
            out["running_var"] = torch.rand(self.channels, generator=gen, dtype=dtype) + 0.5
        return out

    # ----- the reference -----------------------------------------------------------------------
    def oracle(
        self, x: torch.Tensor, weight: Any = None, bias: Any = None, running_mean: Any = None, running_var: Any = None
    ) -> torch.Tensor:
        """torch.nn.functional's output for these arguments."""
        f = self.family
        if f == "batch":
            return F.batch_norm(x, running_mean, running_var, weight, bias, not self.running_stats, 0.0, self.eps)
        if f == "instance":
            return F.instance_norm(x, running_mean, running_var, weight, bias, not self.running_stats, 0.0, self.eps)
        if f == "group":
            return F.group_norm(x, self.groups, weight, bias, self.eps)
        if f == "layer":
            return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)
        return F.rms_norm(x, self.normalized_shape, weight, self.eps)

    def count(self) -> int:
        """Elements per statistic (the M of the mean terms), from the raw arguments."""
        shape = self.x_shape
        if self.family == "batch":
            return shape[0] * math.prod(shape[2:])
        if self.family == "instance":
            return math.prod(shape[2:])
        if self.family == "group":
            return self.channels // self.groups * math.prod(shape[2:])
        return math.prod(self.normalized_shape)


def case_id(config: NormConfig) -> str:
    """A readable test id."""
    parts = [config.family, "x" + "x".join(map(str, config.x_shape))]
    if config.family == "group":
        parts.append(f"G{config.groups}")
    if config.family in ("layer", "rms"):
        parts.append("D" + "x".join(map(str, config.normalized_shape)))
    if not config.affine:
        parts.append("noaffine")
    elif not config.bias:
        parts.append("nobias")
    if config.running_stats:
        parts.append("eval")
    if config.eps is None:
        parts.append("eps=None")
    return "-".join(parts)


CASES = [
    NormConfig("batch", (4, 3), channels=3, dims=1),
    NormConfig("batch", (3, 2, 5), channels=2, dims=1),
    NormConfig("batch", (2, 3, 4, 3), channels=3, dims=2),
    NormConfig("batch", (2, 2, 3, 2, 2), channels=2, dims=3, bias=False),
    NormConfig("batch", (3, 4, 5), channels=4, dims=1, running_stats=True),
    NormConfig("batch", (2, 3, 3, 4), channels=3, dims=2, running_stats=True, affine=False),
    NormConfig("instance", (2, 3, 5), channels=3, dims=1),
    NormConfig("instance", (2, 3, 4, 3), channels=3, dims=2, affine=True),
    NormConfig("instance", (2, 2, 2, 3, 2), channels=2, dims=3, affine=True, bias=False),
    NormConfig("instance", (3, 2, 4, 2), channels=2, dims=2, affine=True, running_stats=True),
    NormConfig("group", (2, 6, 4), channels=6, groups=3),
    NormConfig("group", (3, 4), channels=4, groups=2),
    NormConfig("group", (2, 4, 3, 2), channels=4, groups=1, bias=False),
    NormConfig("group", (2, 6, 2, 2, 2), channels=6, groups=6, affine=False),
    NormConfig("layer", (3, 5), normalized_shape=(5,)),
    NormConfig("layer", (2, 3, 4), normalized_shape=(4,), bias=False),
    NormConfig("layer", (2, 3, 4, 3), normalized_shape=(4, 3)),
    NormConfig("layer", (2, 2, 2, 3), normalized_shape=(3,), affine=False),
    NormConfig("rms", (3, 5), normalized_shape=(5,), eps=None),
    NormConfig("rms", (2, 3, 4), normalized_shape=(3, 4), eps=1e-3),
    NormConfig("rms", (2, 3, 4), normalized_shape=(4,), affine=False, eps=None),
]


def split_tensors(tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict, dict]:
    x = tensors["x"]
    params = {k: v for k, v in tensors.items() if k in ("weight", "bias")}
    stats = {k: v for k, v in tensors.items() if k in STATS}
    return x, params, stats


def check_all_quantities(config: NormConfig, seed: int, dtype: torch.dtype = torch.float64, tol: dict = TOL) -> None:
    """forward, vjp and jvp w.r.t. x and every parameter, per-sample gradients: all against torch."""
    spec = config.spec()
    x, params, stats = split_tensors(config.tensors(seed, dtype))

    def f(x: torch.Tensor, params: dict) -> torch.Tensor:
        return config.oracle(x, **params, **stats)

    y = f(x, params)
    torch.testing.assert_close(tnderiv.forward(spec, x, **params, **stats), y, **tol)
    gen = torch.Generator().manual_seed(seed + 1)
    grad_out = torch.randn(y.shape, generator=gen, dtype=dtype)
    _, pull = torch_vjp(f, x, params)
    gx, gparams = pull(grad_out)
    torch.testing.assert_close(tnderiv.vjp(spec, "x", grad_out, x=x, **params, **stats), gx, **tol)
    for name in params:
        got = tnderiv.vjp(spec, name, grad_out, x=x, **params, **stats)
        torch.testing.assert_close(got, gparams[name], **tol)
    tangent = torch.randn(x.shape, generator=gen, dtype=dtype)
    _, expected = torch_jvp(lambda x: f(x, params), (x,), (tangent,))
    torch.testing.assert_close(tnderiv.jvp(spec, "x", tangent, x=x, **params, **stats), expected, **tol)
    for name in params:
        t = torch.randn(params[name].shape, generator=gen, dtype=dtype)
        _, expected = torch_jvp(lambda p, name=name: f(x, {**params, name: p}), (params[name],), (t,))
        torch.testing.assert_close(tnderiv.jvp(spec, name, t, x=x, **params, **stats), expected, **tol)
    if not params:
        return
    if config.couples_batch:
        with pytest.raises(ValueError, match="couples the samples"):
            tnderiv.per_sample_grad(spec, x, grad_out, **stats)
        return

    def sample_loss(p: dict, xn: torch.Tensor, gn: torch.Tensor) -> torch.Tensor:
        return (f(xn[None], p)[0] * gn).sum()

    expected = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, grad_out)
    got = tnderiv.per_sample_grad(spec, x, grad_out, **stats)
    assert set(got) == set(params)
    for name in params:
        torch.testing.assert_close(got[name], expected[name], **tol)
