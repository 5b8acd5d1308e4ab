"""Convolution of any dimension (and its transpose) as a tensor network with one index pattern per dimension."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from functools import lru_cache
from typing import Any, Literal

import sympy

from tnderiv.ir import Diagram, DiagramSum, PaddingMode, PatternParams, ones, operand, pattern, size_symbol
from tnderiv.layers.base import LayerNetwork, Shapes, register_module
from tnderiv.layers.geometry import conv_output_size, padding_pairs, per_dim, transposed_output_size


@dataclass(frozen=True)
class Conv:
    """A ``dims``-dimensional convolution (``transposed=True``: its transpose), like ``torch.nn.ConvNd``.

    x: ``[N, C_in, *I]``; weight: ``[C_out, C_in/G, *K]`` (transposed: ``[C_in, C_out/G, *K]``);
    bias: ``[C_out]``; output: ``[N, C_out, *O]``. After construction ``stride``, ``dilation``,
    ``output_padding`` and ``kernel_size`` are tuples and ``padding`` is per-side pairs.
    """

    in_channels: int
    out_channels: int
    kernel_size: Any
    _: KW_ONLY
    dims: int = 2
    stride: Any = 1
    padding: int | Sequence[int] | Sequence[tuple[int, int]] | Literal["same", "valid"] = 0
    dilation: Any = 1
    groups: int = 1
    bias: bool = True
    padding_mode: Literal["zeros", "reflect", "replicate", "circular"] | PaddingMode = "zeros"
    transposed: bool = False
    output_padding: Any = 0

    def __post_init__(self) -> None:
        if not isinstance(self.dims, int) or self.dims < 1:
            raise ValueError(f"dims={self.dims!r}: expected an int ≥ 1")
        for name in ("in_channels", "out_channels", "groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r}: expected a positive int")
        for name in ("in_channels", "out_channels"):
            if getattr(self, name) % self.groups:
                raise ValueError(f"{name}={getattr(self, name)} is not divisible by groups={self.groups}")
        kernel = per_dim("kernel_size", self.kernel_size, self.dims, minimum=1)
        stride = per_dim("stride", self.stride, self.dims, minimum=1)
        dilation = per_dim("dilation", self.dilation, self.dims, minimum=1)
        output_padding = per_dim("output_padding", self.output_padding, self.dims, minimum=0)
        mode = PaddingMode.parse(self.padding_mode)
        if self.transposed:
            if isinstance(self.padding, str):
                raise ValueError(f"padding={self.padding!r} is not supported for transposed convolutions (as in torch)")
            if mode is not PaddingMode.ZEROS:
                raise ValueError(f"padding_mode={mode.value!r} is not supported for transposed convolutions; only 'zeros'")
            for op, s, d in zip(output_padding, stride, dilation):
                if op >= s and op >= d:
                    raise ValueError(
                        f"output_padding={output_padding} must be smaller than either stride={stride} or dilation={dilation}"
                    )
        elif any(output_padding):
            raise ValueError(f"output_padding={output_padding} is only meaningful with transposed=True")
        pads = padding_pairs(self.padding, self.dims, kernel, stride, dilation)
        set_ = object.__setattr__
        set_(self, "kernel_size", kernel)
        set_(self, "stride", stride)
        set_(self, "dilation", dilation)
        set_(self, "output_padding", output_padding)
        set_(self, "padding", pads)
        set_(self, "padding_mode", mode)
        set_(self, "bias", bool(self.bias))

    def __str__(self) -> str:
        name = f"ConvTranspose{self.dims}d" if self.transposed else f"Conv{self.dims}d"
        parts = [f"{self.in_channels}→{self.out_channels}", f"kernel={_compact(self.kernel_size)}"]
        for label, value, default in (
            ("stride", self.stride, 1),
            ("dilation", self.dilation, 1),
            ("output_padding", self.output_padding, 0),
        ):
            if any(v != default for v in value):
                parts.append(f"{label}={_compact(value)}")
        if any(p != (0, 0) for p in self.padding):
            pads = {p for p in self.padding}
            parts.append(f"padding={_compact(tuple(p[0] for p in self.padding)) if all(a == b for a, b in pads) else self.padding}")
        if self.padding_mode is not PaddingMode.ZEROS:
            parts.append(f"padding_mode={self.padding_mode.value}")
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        if not self.bias:
            parts.append("bias=False")
        return f"{name}({', '.join(parts)})"

    # ----- the network -------------------------------------------------------------------------
    def network(self, shapes: Shapes) -> LayerNetwork:
        """The convolution's network (independent of the shapes, which are bound later)."""
        return _conv_network(self)

    def input_size_symbols(self) -> tuple[sympy.Symbol, ...]:
        return tuple(size_symbol(f"I{d}") for d in range(self.dims))

    def output_sizes(self, input_sizes: tuple[sympy.Expr, ...]) -> tuple[sympy.Expr, ...]:
        """Spatial output sizes for spatial input sizes (symbolic or integer)."""
        if self.transposed:
            return tuple(
                transposed_output_size(i, k, s, d, p, op)
                for i, k, s, d, p, op in zip(
                    input_sizes, self.kernel_size, self.stride, self.dilation, self.padding, self.output_padding
                )
            )
        return tuple(
            conv_output_size(i, k, s, d, p)
            for i, k, s, d, p in zip(input_sizes, self.kernel_size, self.stride, self.dilation, self.padding)
        )

    def check_sizes(self, bindings: Mapping[sympy.Symbol, int]) -> None:
        """Raise for input sizes that give no output or that the padding mode cannot take."""
        symbols = self.input_size_symbols()
        if not all(s in bindings for s in symbols):
            return
        sizes = tuple(int(bindings[s]) for s in symbols)
        outputs = self.output_sizes(tuple(sympy.Integer(i) for i in sizes))
        for dim, (i, o, p) in enumerate(zip(sizes, outputs, self.padding)):
            if int(o) < 1:
                k, d = self.kernel_size[dim], self.dilation[dim]
                if self.transposed:
                    full = (i - 1) * self.stride[dim] + d * (k - 1) + self.output_padding[dim] + 1
                    raise ValueError(
                        f"impossible output size {int(o)} in spatial dimension {dim}: the transposed convolution of "
                        f"input size {i} has {full} outputs before the padding {p} is cropped from them"
                    )
                raise ValueError(
                    f"impossible output size {int(o)} in spatial dimension {dim}: input size {i} with padding {p} "
                    f"is smaller than the dilated kernel {d}·({k}−1)+1={d * (k - 1) + 1}"
                )
            if self.padding_mode is PaddingMode.REFLECT and max(p) >= i:
                raise ValueError(f"padding_mode='reflect' needs padding {p} < input size {i} in spatial dimension {dim}")
            if self.padding_mode is PaddingMode.CIRCULAR and max(p) > i:
                raise ValueError(f"padding_mode='circular' needs padding {p} ≤ input size {i} in spatial dimension {dim}")


@lru_cache(maxsize=256)
def _conv_network(spec: Conv) -> LayerNetwork:
    dims = range(spec.dims)
    k = tuple(f"k{d}" for d in dims)
    i = tuple(f"i{d}" for d in dims)
    o = tuple(f"o{d}" for d in dims)
    in_sizes = spec.input_size_symbols()
    out_sizes = spec.output_sizes(in_sizes)
    g = spec.groups
    sizes: dict[str, Any] = {"n": size_symbol("N"), "g": g, "c_in": spec.in_channels // g, "c_out": spec.out_channels // g}
    sizes.update(zip(k, spec.kernel_size))
    sizes.update(zip(i, in_sizes))
    sizes.update(zip(o, out_sizes))

    patterns = []
    for d in dims:
        params = PatternParams(spec.stride[d], spec.dilation[d], spec.padding[d][0], spec.padding_mode)
        # the transpose uses the pattern of its associated convolution, with i and o exchanged
        patterns.append(pattern(k[d], i[d], o[d], params) if spec.transposed else pattern(k[d], o[d], i[d], params))
    x = operand("x", "n", ("g", "c_in"), *i)
    if spec.transposed:
        weight = operand("weight", ("g", "c_in"), "c_out", *k)
    else:
        weight = operand("weight", ("g", "c_out"), "c_in", *k)
    out_legs = ("n", "g", "c_out", *o)
    out_groups = (1, 2) + (1,) * spec.dims
    conv = Diagram((x, *patterns, weight), out_legs, sizes, open_groups=out_groups)
    params: tuple[str, ...] = ("weight",)
    forward: Diagram | DiagramSum = conv
    if spec.bias:
        bias_term = Diagram(
            (operand("bias", ("g", "c_out")), ones("n", *o)), out_legs, sizes, open_groups=out_groups
        )
        forward = DiagramSum((conv, bias_term))
        params += ("bias",)
    return LayerNetwork(forward, ("x",), params, shared_legs=o, check_sizes=spec.check_sizes)


def _compact(values: tuple[int, ...]) -> str:
    return str(values[0]) if len(set(values)) == 1 else str(values)


def _from_conv_module(module: Any) -> Conv:
    import torch.nn as nn

    dims = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3, nn.ConvTranspose1d: 1, nn.ConvTranspose2d: 2, nn.ConvTranspose3d: 3}
    dim = next(v for t, v in dims.items() if isinstance(module, t))
    return Conv(
        module.in_channels,
        module.out_channels,
        tuple(module.kernel_size),
        dims=dim,
        stride=tuple(module.stride),
        padding=module.padding if isinstance(module.padding, str) else tuple(module.padding),
        dilation=tuple(module.dilation),
        groups=module.groups,
        bias=module.bias is not None,
        padding_mode=module.padding_mode,
        transposed=bool(module.transposed),
        output_padding=tuple(module.output_padding),
    )


def _register() -> None:
    import torch.nn as nn

    register_module(nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)(
        _from_conv_module
    )


def from_module(module: Any) -> Conv:
    """The spec of a ``torch.nn.Conv{1,2,3}d`` or ``ConvTranspose{1,2,3}d``."""
    from tnderiv.layers.base import spec_of

    spec = spec_of(module)
    if not isinstance(spec, Conv):
        raise TypeError(f"Conv.from_module expects a torch convolution module, got {type(module).__name__}")
    return spec


Conv.from_module = staticmethod(from_module)  # type: ignore[attr-defined]
_register()
