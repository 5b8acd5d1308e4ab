"""Batch and instance normalization: per-channel statistics over the batch (and space) or per sample.

x: ``[N, C, *I]`` with legs ``n, c, i0..``; weight, bias: ``[C]``. With ``running_stats=True`` both
use the operands ``running_mean, running_var`` ``[C]`` (torch's eval mode with tracked statistics),
and the layer is a per-channel affine map in ``x``.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from functools import lru_cache
from typing import Any

from tnderiv.ir import size_symbol
from tnderiv.layers.base import LayerNetwork, Shapes, register_module
from tnderiv.layers.norm.checks import epsilon, flag, positive_int, rank_of
from tnderiv.layers.norm.structure import NormStructure, Stats, norm_network

# the input ranks torch's BatchNorm{dims}d and InstanceNorm{dims}d accept (batched)
_BATCH_RANKS = {1: (2, 3), 2: (4,), 3: (5,)}


def _check_dims(dims: Any) -> int | None:
    if dims is not None and dims not in (1, 2, 3):
        raise ValueError(f"dims={dims!r}: expected 1, 2, 3 or None (any number of spatial legs)")
    return dims


def _check_rank(
    layer: str, shapes: Shapes, rank: int, source: str | None, ranks: tuple[int, ...] | None, least: int
) -> None:
    """Raise unless ``rank`` is one of ``ranks`` (``None``: any rank ≥ ``least``), naming the operand that told it."""
    if source is None:
        return
    if (ranks is not None and rank not in ranks) or rank < least:
        expected = " or ".join(map(str, ranks)) if ranks is not None else f"at least {least}"
        raise ValueError(
            f"{source} has shape {tuple(shapes[source])} with {rank} axes; {layer} expects {expected} axes [N, C, *I]"
        )


def _check_channels(layer: str, shapes: Shapes, channels: int) -> None:
    for source in ("x", "grad_out"):
        if source in shapes and len(shapes[source]) > 1 and shapes[source][1] != channels:
            shape = tuple(shapes[source])
            raise ValueError(f"{source} has shape {shape}: axis 1 (c) is {shape[1]}, expected num_features={channels}")


def _channel_structure(
    name: str,
    channels: Any,
    spatial: int,
    *,
    affine: bool,
    bias: bool,
    eps: float,
    stats: Stats,
    stat_legs: tuple[str, ...],
    couples_batch: bool,
    min_count_message: str | None,
) -> NormStructure:
    i = tuple(f"i{d}" for d in range(spatial))
    sizes = {"n": size_symbol("N"), "c": channels, **{leg: size_symbol(f"I{d}") for d, leg in enumerate(i)}}
    return NormStructure(
        name=name,
        x_axes=(("n",), ("c",), *((leg,) for leg in i)),
        sizes=tuple(sizes.items()),
        stat_legs=stat_legs,
        param_axes=(("c",),),
        weight=affine,
        bias=affine and bias,
        stats=stats,
        eps=eps,
        couples_batch=couples_batch,
        min_count_message=min_count_message,
    )


def _normalize_channel_spec(spec: Any) -> None:
    """Check and normalize the fields shared by batch and instance norm specs (in place, frozen)."""
    positive_int("num_features", spec.num_features)
    object.__setattr__(spec, "eps", epsilon(spec.eps))
    for name in ("affine", "bias", "running_stats"):
        object.__setattr__(spec, name, flag(name, getattr(spec, name)))
    # a bias exists only with affine parameters (as in torch); one spelling per layer keeps specs comparable
    object.__setattr__(spec, "bias", spec.bias and spec.affine)
    _check_dims(spec.dims)


@dataclass(frozen=True)
class BatchNorm:
    """Like ``torch.nn.BatchNorm{1,2,3}d``. x: ``[N, C, *I]``; weight, bias: ``[C]``; output like x.

    ``running_stats=False`` (torch's training mode): statistics of the batch over ``n, i..``; the
    output then couples the samples, so per-sample quantities are undefined. ``running_stats=True``
    (eval mode): operands ``running_mean, running_var`` ``[C]``, a per-channel affine map.
    Running statistics are never updated. ``dims`` checks the input rank like torch (None: any).
    """

    num_features: int
    _: KW_ONLY
    eps: float = 1e-5
    affine: bool = True
    bias: bool = True
    running_stats: bool = False
    dims: int | None = None

    def __post_init__(self) -> None:
        _normalize_channel_spec(self)

    @property
    def layer_name(self) -> str:
        return f"BatchNorm{self.dims}d" if self.dims else "BatchNorm"

    def network(self, shapes: Shapes) -> LayerNetwork:
        """The network for inputs ``[N, C, *I]`` with ``len(I)`` from ``x`` or ``grad_out`` (else the least rank)."""
        ranks = _BATCH_RANKS.get(self.dims) if self.dims is not None else None
        rank, source = rank_of(shapes, ranks[0] if ranks else 2)
        _check_rank(self.layer_name, shapes, rank, source, ranks, 2)
        _check_channels(self.layer_name, shapes, self.num_features)
        return _batch_network(self, rank - 2)

    @staticmethod
    def from_module(module: Any) -> BatchNorm:
        """The spec of a ``torch.nn.BatchNorm{1,2,3}d`` in its current mode (train: batch statistics)."""
        import torch.nn as nn

        dims = {nn.BatchNorm1d: 1, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3}
        dim = next((v for t, v in dims.items() if isinstance(module, t)), None)
        if dim is None:
            raise TypeError(f"BatchNorm.from_module expects torch.nn.BatchNorm1d/2d/3d, got {type(module).__name__}")
        # torch normalizes with batch statistics in training mode and whenever no running statistics are kept
        running = not module.training and module.running_mean is not None and module.running_var is not None
        return BatchNorm(
            module.num_features,
            eps=module.eps,
            affine=module.affine,
            bias=module.bias is not None,
            running_stats=running,
            dims=dim,
        )


@lru_cache(maxsize=64)
def _batch_network(spec: BatchNorm, spatial: int) -> LayerNetwork:
    training = not spec.running_stats
    return norm_network(
        _channel_structure(
            spec.layer_name,
            spec.num_features,
            spatial,
            affine=spec.affine,
            bias=spec.bias,
            eps=spec.eps,
            stats=Stats.MEAN_VAR if training else Stats.RUNNING,
            stat_legs=("c",),
            couples_batch=training,
            min_count_message=f"{spec.layer_name} with batch statistics needs more than one value per channel"
            if training
            else None,
        )
    )


@dataclass(frozen=True)
class InstanceNorm:
    """Like ``torch.nn.InstanceNorm{1,2,3}d`` (batched). x: ``[N, C, *I]``; weight, bias: ``[C]``.

    Statistics per sample and channel over ``i..``; ``running_stats=True`` (eval mode with
    ``track_running_stats``): operands ``running_mean, running_var`` ``[C]`` instead. Without
    affine parameters or running statistics the channel count is free, as in torch.
    """

    num_features: int
    _: KW_ONLY
    eps: float = 1e-5
    affine: bool = False
    bias: bool = True
    running_stats: bool = False
    dims: int | None = None

    def __post_init__(self) -> None:
        _normalize_channel_spec(self)

    @property
    def layer_name(self) -> str:
        return f"InstanceNorm{self.dims}d" if self.dims else "InstanceNorm"

    @property
    def _fixed_channels(self) -> bool:
        return self.affine or self.running_stats

    def network(self, shapes: Shapes) -> LayerNetwork:
        """The network for inputs ``[N, C, *I]`` (at least one spatial leg)."""
        ranks = (self.dims + 2,) if self.dims is not None else None
        rank, source = rank_of(shapes, ranks[0] if ranks else 3)
        _check_rank(self.layer_name, shapes, rank, source, ranks, 3)
        if self._fixed_channels:
            _check_channels(self.layer_name, shapes, self.num_features)
        return _instance_network(self, rank - 2)

    @staticmethod
    def from_module(module: Any) -> InstanceNorm:
        """The spec of a ``torch.nn.InstanceNorm{1,2,3}d`` in its current mode."""
        import torch.nn as nn

        dims = {nn.InstanceNorm1d: 1, nn.InstanceNorm2d: 2, nn.InstanceNorm3d: 3}
        dim = next((v for t, v in dims.items() if isinstance(module, t)), None)
        if dim is None:
            raise TypeError(
                f"InstanceNorm.from_module expects torch.nn.InstanceNorm1d/2d/3d, got {type(module).__name__}"
            )
        return InstanceNorm(
            module.num_features,
            eps=module.eps,
            affine=module.affine,
            bias=module.bias is not None,
            running_stats=not module.training and module.track_running_stats,
            dims=dim,
        )


@lru_cache(maxsize=64)
def _instance_network(spec: InstanceNorm, spatial: int) -> LayerNetwork:
    channels = spec.num_features if spec._fixed_channels else size_symbol("C")
    return norm_network(
        _channel_structure(
            spec.layer_name,
            channels,
            spatial,
            affine=spec.affine,
            bias=spec.bias,
            eps=spec.eps,
            stats=Stats.RUNNING if spec.running_stats else Stats.MEAN_VAR,
            stat_legs=("c",) if spec.running_stats else ("n", "c"),
            couples_batch=False,
            min_count_message=None if spec.running_stats else f"{spec.layer_name} needs more than one spatial element",
        )
    )


def _register() -> None:
    import torch.nn as nn

    register_module(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)(BatchNorm.from_module)
    register_module(nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)(InstanceNorm.from_module)


_register()
