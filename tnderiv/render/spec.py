"""A small text syntax for layers on the command line: ``KIND[:key=value,key=value]``.

Examples: ``linear``, ``linear:in=8,out=4,shared=1``, ``conv2d``, ``conv2d:stride=2,padding=1,groups=2``,
``conv1d:kernel=5,dilation=2,padding=same``, ``conv_transpose2d:stride=2``, ``conv2d:stride=2x1``
(one value per spatial dimension, separated by ``x``), ``layernorm:shape=4x3``, ``batchnorm2d:running_stats=true``.
Values are ints, ``NxM`` tuples, ``true``/``false``, floats, or words (``same``, ``reflect``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tnderiv.ir import Registry
from tnderiv.layers import Conv, Linear

Shapes = dict[str, tuple[int, ...]]
Builder = Callable[[dict[str, Any]], tuple[Any, Shapes]]


@dataclass(frozen=True)
class LayerKind:
    """A layer name of the syntax: its keys (with defaults) and how to build the spec and example shapes."""

    name: str
    build: Builder
    defaults: Mapping[str, Any]
    doc: str


LAYER_KINDS: Registry[str, LayerKind] = Registry("layer")


def register_layer_kind(name: str, defaults: Mapping[str, Any], doc: str, *, replace: bool = False) -> Callable[[Builder], Builder]:
    """Register ``build(params) → (spec, example shapes)`` as the layer ``name`` of the syntax (``DuplicateNameError``
    for a taken name unless ``replace``)."""

    def decorate(build: Builder) -> Builder:
        LAYER_KINDS.register(name, LayerKind(name, build, dict(defaults), doc), replace=replace)
        return build

    return decorate


def parse_value(text: str) -> Any:
    """``3`` → 3, ``2x1`` → (2, 1), ``true`` → True, ``1e-5`` → 1e-05, other words stay strings."""
    lowered = text.strip().lower()
    if lowered in ("true", "yes"):
        return True
    if lowered in ("false", "no"):
        return False
    parts = lowered.split("x")
    if len(parts) > 1 and all(p.isdigit() for p in parts):
        return tuple(int(p) for p in parts)
    try:
        return int(lowered)
    except ValueError:
        pass
    try:
        return float(lowered)
    except ValueError:
        return text.strip()


def parse_spec(text: str) -> tuple[Any, Shapes]:
    """The layer spec and example operand shapes (for the rank-dependent layers) described by ``text``."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"layer spec {text!r}: expected KIND[:key=value,...], e.g. 'conv2d:stride=2'")
    kind_name, _, rest = text.strip().partition(":")
    kind = LAYER_KINDS.lookup(kind_name.strip().lower(), where=f"in spec {text!r}")
    params = dict(kind.defaults)
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not value.strip():
            raise ValueError(f"{item!r} in spec {text!r}: expected key=value")
        if key not in kind.defaults:
            raise ValueError(
                f"unknown key {key!r} for {kind.name} in spec {text!r}; valid keys are {sorted(kind.defaults)}"
            )
        params[key] = parse_value(value)
    try:
        return kind.build(params)
    except TypeError as error:
        raise ValueError(f"spec {text!r}: {error}") from None


_CONV_DEFAULTS = {
    "in": None, "out": None, "kernel": 3, "stride": 1, "padding": 0, "dilation": 1, "groups": 1, "bias": True,
    "padding_mode": "zeros", "output_padding": 0,
}  # fmt: skip


def _conv_builder(dims: int, transposed: bool) -> Builder:
    def build(p: dict[str, Any]) -> tuple[Any, Shapes]:
        groups = p["groups"]
        in_channels = p["in"] if p["in"] is not None else 2 * groups if isinstance(groups, int) else 2
        out_channels = p["out"] if p["out"] is not None else 2 * groups if isinstance(groups, int) else 2
        extra = {"output_padding": p["output_padding"]} if transposed else {}
        if not transposed and p["output_padding"] != 0:
            raise ValueError("output_padding is only meaningful for conv_transpose")
        spec = Conv(
            in_channels, out_channels, p["kernel"], dims=dims, stride=p["stride"], padding=p["padding"],
            dilation=p["dilation"], groups=groups, bias=p["bias"], padding_mode=p["padding_mode"],
            transposed=transposed, **extra,
        )  # fmt: skip
        return spec, {}

    return build


for _dims in (1, 2, 3):
    register_layer_kind(f"conv{_dims}d", _CONV_DEFAULTS, f"torch.nn.Conv{_dims}d")(_conv_builder(_dims, False))
    register_layer_kind(f"conv_transpose{_dims}d", _CONV_DEFAULTS, f"torch.nn.ConvTranspose{_dims}d")(
        _conv_builder(_dims, True)
    )


@register_layer_kind("linear", {"in": 3, "out": 4, "bias": True, "shared": 0}, "torch.nn.Linear; shared: sequence legs")
def _linear(p: dict[str, Any]) -> tuple[Any, Shapes]:
    shared = p["shared"]
    if not isinstance(shared, int) or shared < 0:
        raise ValueError(f"shared={shared!r}: expected an int ≥ 0 (number of weight-sharing legs)")
    return Linear(p["in"], p["out"], bias=p["bias"]), {"x": (2,) + (3,) * shared + (p["in"],)}


LAYER_KINDS.register("dense", LayerKind("dense", _linear, LAYER_KINDS["linear"].defaults, "same as linear"))


def _register_norms() -> None:
    """Normalization layers, when the installed tnderiv has them."""
    try:
        from tnderiv.layers.norm import BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RMSNorm
    except ImportError:  # pragma: no cover - norm layers are optional for drawing
        return
    common = {"eps": 1e-5, "bias": True}

    def channel_shapes(channels: int, dims: int) -> Shapes:
        return {"x": (2, channels) + (3,) * dims}

    for dims in (1, 2, 3):

        def batch(p: dict[str, Any], dims: int = dims) -> tuple[Any, Shapes]:
            spec = BatchNorm(p["channels"], eps=p["eps"], affine=p["affine"], bias=p["bias"],
                             running_stats=p["running_stats"], dims=dims)  # fmt: skip
            return spec, channel_shapes(p["channels"], dims)

        def instance(p: dict[str, Any], dims: int = dims) -> tuple[Any, Shapes]:
            spec = InstanceNorm(p["channels"], eps=p["eps"], affine=p["affine"], bias=p["bias"], dims=dims)
            return spec, channel_shapes(p["channels"], dims)

        batch_defaults = {"channels": 4, "affine": True, "running_stats": False, **common}
        register_layer_kind(f"batchnorm{dims}d", batch_defaults, f"torch.nn.BatchNorm{dims}d")(batch)
        instance_defaults = {"channels": 4, "affine": True, **common}
        register_layer_kind(f"instancenorm{dims}d", instance_defaults, f"torch.nn.InstanceNorm{dims}d")(instance)

    @register_layer_kind(
        "groupnorm", {"groups": 2, "channels": 4, "affine": True, "spatial": 2, **common}, "torch.nn.GroupNorm"
    )
    def _group(p: dict[str, Any]) -> tuple[Any, Shapes]:
        spec = GroupNorm(p["groups"], p["channels"], eps=p["eps"], affine=p["affine"], bias=p["bias"])
        return spec, channel_shapes(p["channels"], p["spatial"])

    def normalized(p: dict[str, Any]) -> tuple[int, ...]:
        shape = p["shape"]
        return (shape,) if isinstance(shape, int) else tuple(shape)

    @register_layer_kind("layernorm", {"shape": 4, "affine": True, "shared": 1, **common}, "torch.nn.LayerNorm")
    def _layer(p: dict[str, Any]) -> tuple[Any, Shapes]:
        spec = LayerNorm(normalized(p), eps=p["eps"], elementwise_affine=p["affine"], bias=p["bias"])
        return spec, {"x": (2,) + (3,) * p["shared"] + normalized(p)}

    @register_layer_kind("rmsnorm", {"shape": 4, "affine": True, "shared": 1, "eps": None}, "torch.nn.RMSNorm")
    def _rms(p: dict[str, Any]) -> tuple[Any, Shapes]:
        spec = RMSNorm(normalized(p), eps=p["eps"], elementwise_affine=p["affine"])
        return spec, {"x": (2,) + (3,) * p["shared"] + normalized(p)}


_register_norms()
