"""Convolution cases: a hypothesis strategy over every hyperparameter, a table of fixed cases, real layers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from cases.torch_oracles import ConvConfig

MODES = ("zeros", "reflect", "replicate", "circular")
PADDING_KINDS = ("int", "tuple", "pairs", "same", "valid")
DATA = Path(__file__).resolve().parents[2] / "data" / "conv_layers.json"


@st.composite
def conv_configs(draw: st.DrawFn, dims: tuple[int, ...] = (1, 2, 3)) -> ConvConfig:
    """A valid convolution with small random sizes: every hyperparameter, transposed or not."""
    d = draw(st.sampled_from(dims))
    transposed = draw(st.booleans())
    groups = draw(st.sampled_from((1, 1, 2, 3)))
    in_channels = groups * draw(st.integers(1, 2))
    out_channels = groups * draw(st.integers(1, 2))
    # 3d stays tiny so that one example takes milliseconds
    max_k, max_extra = (3, 3) if d < 3 else (2, 2)
    kernel = tuple(draw(st.integers(1, max_k)) for _ in range(d))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(d))
    kinds = ("int", "tuple", "pairs") if transposed else PADDING_KINDS
    kind = draw(st.sampled_from(kinds))
    stride = tuple(1 for _ in range(d)) if kind == "same" else tuple(draw(st.integers(1, 3)) for _ in range(d))
    mode = "zeros" if transposed else draw(st.sampled_from(MODES))
    pad_value = st.integers(0, 2)
    padding: Any
    if kind == "int":
        padding = draw(pad_value)
        pairs = ((padding, padding),) * d
    elif kind == "tuple":
        padding = tuple(draw(pad_value) for _ in range(d))
        pairs = tuple((p, p) for p in padding)
    elif kind == "pairs":
        padding = tuple((draw(pad_value), draw(pad_value)) for _ in range(d))
        pairs = padding
    elif kind == "same":
        padding = "same"
        pairs = tuple((dl * (k - 1) // 2, dl * (k - 1) - dl * (k - 1) // 2) for k, dl in zip(kernel, dilation))
    else:
        padding = "valid"
        pairs = ((0, 0),) * d
    output_padding: tuple[int, ...] = ()
    sizes = []
    if transposed:
        # torch: output_padding must be smaller than stride or dilation
        output_padding = tuple(draw(st.integers(0, max(s, dl) - 1)) for s, dl in zip(stride, dilation))
        for k, s, dl, (left, right), op in zip(kernel, stride, dilation, pairs, output_padding):
            low = 1
            while (low - 1) * s + dl * (k - 1) + op + 1 - left - right < 1:
                low += 1
            sizes.append(draw(st.integers(low, low + max_extra)))
    else:
        for k, dl, (left, right) in zip(kernel, dilation, pairs):
            low = max(1, dl * (k - 1) + 1 - left - right)
            if mode == "reflect":
                low = max(low, left + 1, right + 1)
            elif mode == "circular":
                low = max(low, left, right)
            sizes.append(draw(st.integers(low, low + max_extra)))
    return ConvConfig(
        dims=d,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=kernel,
        stride=stride,
        dilation=dilation,
        padding=padding,
        groups=groups,
        bias=draw(st.booleans()),
        padding_mode=mode,
        transposed=transposed,
        output_padding=output_padding,
        batch=draw(st.integers(1, 3)),
        input_size=tuple(sizes),
    )


def _c(**kwargs: Any) -> ConvConfig:
    defaults: dict[str, Any] = dict(stride=(1,), dilation=(1,), padding=0)
    defaults.update(kwargs)
    d = defaults["dims"]
    for key in ("stride", "dilation"):
        if len(defaults[key]) == 1 and d > 1:
            defaults[key] = defaults[key] * d
    return ConvConfig(**defaults)


# Fixed cases that always run (hypothesis may or may not draw them): one per feature and corner.
CONV_CASES: dict[str, ConvConfig] = {
    "1d-plain": _c(dims=1, in_channels=2, out_channels=3, kernel_size=(3,), input_size=(7,)),
    "2d-stride-pad": _c(
        dims=2, in_channels=2, out_channels=4, kernel_size=(3, 3), stride=(2,), padding=1, input_size=(6, 7)
    ),
    "2d-asym-pairs": _c(
        dims=2, in_channels=2, out_channels=2, kernel_size=(3, 2), padding=((2, 0), (0, 1)), input_size=(5, 4)
    ),
    "2d-same-dilated": _c(
        dims=2, in_channels=1, out_channels=2, kernel_size=(4, 3), dilation=(2,), padding="same", input_size=(7, 6)
    ),
    "2d-valid": _c(
        dims=2, in_channels=3, out_channels=3, kernel_size=(2, 2), padding="valid", groups=3, input_size=(4, 5)
    ),
    "2d-reflect": _c(
        dims=2,
        in_channels=2,
        out_channels=2,
        kernel_size=(3, 3),
        padding=(2, 1),
        padding_mode="reflect",
        input_size=(3, 4),
    ),
    "2d-replicate-asym": _c(
        dims=2,
        in_channels=1,
        out_channels=2,
        kernel_size=(3, 3),
        padding=((3, 0), (1, 2)),
        padding_mode="replicate",
        input_size=(2, 3),
    ),
    "2d-circular-stride": _c(
        dims=2,
        in_channels=2,
        out_channels=4,
        kernel_size=(3, 3),
        stride=(2,),
        padding=2,
        padding_mode="circular",
        groups=2,
        input_size=(4, 5),
    ),
    "2d-same-reflect": _c(
        dims=2,
        in_channels=2,
        out_channels=2,
        kernel_size=(4, 3),
        padding="same",
        padding_mode="reflect",
        input_size=(5, 5),
    ),
    "2d-same-circular": _c(
        dims=2,
        in_channels=2,
        out_channels=2,
        kernel_size=(2, 5),
        padding="same",
        padding_mode="circular",
        input_size=(4, 5),
    ),
    "2d-downsample": _c(dims=2, in_channels=2, out_channels=3, kernel_size=(1, 2), stride=(3,), input_size=(7, 8)),
    "2d-dense-1x1": _c(dims=2, in_channels=4, out_channels=3, kernel_size=(1, 1), input_size=(3, 3)),
    "2d-patchify": _c(dims=2, in_channels=2, out_channels=3, kernel_size=(2, 2), stride=(2,), input_size=(4, 6)),
    "2d-depthwise": _c(
        dims=2, in_channels=4, out_channels=8, kernel_size=(3, 3), padding=1, groups=4, bias=False, input_size=(5, 5)
    ),
    "3d-mixed": _c(
        dims=3,
        in_channels=2,
        out_channels=2,
        kernel_size=(1, 2, 3),
        stride=(1, 2, 1),
        padding=(0, 1, 1),
        input_size=(2, 4, 3),
    ),
    "3d-reflect": _c(
        dims=3,
        in_channels=1,
        out_channels=2,
        kernel_size=(2, 2, 2),
        padding=1,
        padding_mode="reflect",
        input_size=(2, 3, 2),
    ),
    "1d-T": _c(
        dims=1,
        in_channels=2,
        out_channels=3,
        kernel_size=(3,),
        stride=(2,),
        transposed=True,
        output_padding=(1,),
        input_size=(4,),
    ),
    "2d-T-pad": _c(
        dims=2,
        in_channels=4,
        out_channels=2,
        kernel_size=(4, 4),
        stride=(2,),
        padding=1,
        transposed=True,
        output_padding=(0, 1),
        groups=2,
        input_size=(3, 3),
    ),
    "2d-T-dilated-op": _c(
        dims=2,
        in_channels=2,
        out_channels=2,
        kernel_size=(3, 2),
        dilation=(3,),
        padding=(1, 0),
        transposed=True,
        output_padding=(2, 1),
        input_size=(2, 3),
    ),
    "2d-T-asym": _c(
        dims=2,
        in_channels=2,
        out_channels=3,
        kernel_size=(3, 3),
        stride=(2,),
        padding=((2, 0), (0, 1)),
        transposed=True,
        output_padding=(1, 0),
        input_size=(3, 2),
    ),
    # stride > kernel in a transpose: outputs the kernel never reaches stay zero (found by the sweep)
    "1d-T-stride-gt-kernel": _c(
        dims=1,
        in_channels=1,
        out_channels=1,
        kernel_size=(1,),
        stride=(2,),
        transposed=True,
        bias=False,
        batch=1,
        input_size=(2,),
    ),
    "2d-T-stride-gt-kernel": _c(
        dims=2,
        in_channels=2,
        out_channels=2,
        kernel_size=(2, 1),
        stride=(3, 2),
        transposed=True,
        output_padding=(2, 1),
        input_size=(2, 3),
    ),
    "3d-T": _c(
        dims=3,
        in_channels=2,
        out_channels=2,
        kernel_size=(2, 2, 1),
        stride=(2, 1, 2),
        transposed=True,
        bias=False,
        input_size=(2, 2, 3),
    ),
}


def load_real_layers() -> list[dict[str, Any]]:
    """The layers of ``data/conv_layers.json`` (the project's own copy)."""
    return json.loads(DATA.read_text())["layers"]


def reduce_real_layer(layer: dict[str, Any], *, max_channels: int = 8, max_size: int = 10) -> ConvConfig:
    """The layer at a test size: batch 2, spatial sizes ≤ ``max_size`` where the layer allows it,
    channels cut to ``max_channels`` per group count while keeping the group/depthwise structure."""
    d = layer["dims"]
    groups = layer["groups"]
    cin, cout = layer["in_channels"], layer["out_channels"]
    depthwise = groups == cin
    if depthwise:
        g = min(groups, 4)
        new_cin, new_cout = g, g * (cout // cin)
    elif groups > 1:
        g = min(groups, 4)
        new_cin = g * min(cin // groups, 2)
        new_cout = g * min(cout // groups, 2)
    else:
        g = 1
        new_cin, new_cout = min(cin, max_channels), min(cout, max_channels)
    kernel = tuple(layer["kernel_size"])
    stride = tuple(layer["stride"])
    dilation = tuple(layer["dilation"])
    padding = layer["padding"]
    padding = padding if isinstance(padding, str) else tuple(padding)
    pairs = ((0, 0),) * d if isinstance(padding, str) else tuple((p, p) for p in padding)
    transposed = bool(layer.get("transposed", False))
    sizes = []
    for size, k, s, dl, (left, right) in zip(layer["input_size"], kernel, stride, dilation, pairs):
        if transposed:
            small = min(size, 4)
        else:
            # enough input for two outputs, never more than the real layer had
            needed = dl * (k - 1) + 1 + s - left - right
            small = min(size, max(max_size, needed))
        sizes.append(small)
    return ConvConfig(
        dims=d,
        in_channels=new_cin,
        out_channels=new_cout,
        kernel_size=kernel,
        stride=stride,
        dilation=dilation,
        padding=padding,
        groups=g,
        bias=layer["bias"],
        transposed=transposed,
        output_padding=tuple(layer.get("output_padding", ())) if transposed else (),
        batch=2,
        input_size=tuple(sizes),
    )
