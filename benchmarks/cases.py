"""The benchmarked layers: the real-layer suite, dense layers with weight sharing, and correctness probes.

A case is a plain description (a torch module's constructor arguments plus the input shape); nothing
here depends on tnderiv, so that every implementation starts from the same torch module.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

SUITE = Path(__file__).resolve().parents[1] / "data" / "conv_layers.json"
CPU_BATCH, GPU_BATCH = 8, 32
NUM_CLASSES = 10  # columns of the loss-Hessian square root for the GGN benchmarks


@dataclass(frozen=True)
class Case:
    """One layer at one size. ``kind``: ``"conv"`` (torch ``Conv{d}d``/``ConvTranspose{d}d``) or ``"linear"``.

    ``args`` are the module's keyword arguments; ``input_shape`` excludes the batch axis.
    ``category`` follows the einconv paper (general, dense, downsampling, depthwise, mixed,
    transposed) plus ``linear`` for dense layers with weight sharing and ``probe`` for the small
    correctness probes.
    """

    id: str
    category: str
    kind: str
    args: tuple[tuple[str, Any], ...]
    batch: int
    input_shape: tuple[int, ...]
    note: str = ""
    tags: tuple[str, ...] = field(default=())

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.args)

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (self.batch, *self.input_shape)

    @property
    def dims(self) -> int:
        return int(self.kwargs.get("dims", 0))

    @property
    def transposed(self) -> bool:
        return bool(self.kwargs.get("transposed", False))

    def module(self, dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0) -> torch.nn.Module:
        """A fresh torch module with seeded parameters."""
        torch.manual_seed(seed)
        kw = self.kwargs
        if self.kind == "linear":
            module: torch.nn.Module = torch.nn.Linear(kw["in_features"], kw["out_features"], bias=kw.get("bias", True))
        else:
            dims = kw["dims"]
            common = dict(
                stride=kw["stride"], dilation=kw["dilation"], groups=kw["groups"], bias=kw["bias"],
            )
            if kw.get("transposed"):
                cls = {1: torch.nn.ConvTranspose1d, 2: torch.nn.ConvTranspose2d, 3: torch.nn.ConvTranspose3d}[dims]
                module = cls(kw["in_channels"], kw["out_channels"], kw["kernel_size"], padding=kw["padding"],
                             output_padding=kw.get("output_padding", 0), **common)
            else:
                cls = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[dims]
                module = cls(kw["in_channels"], kw["out_channels"], kw["kernel_size"], padding=kw["padding"],
                             padding_mode=kw.get("padding_mode", "zeros"), **common)
        return module.to(dtype=dtype, device=device)

    def output_shape(self) -> tuple[int, ...]:
        with torch.device("meta"):
            module = self.module(device="meta")
            return tuple(module(torch.empty(self.x_shape, device="meta")).shape)

    def describe(self) -> str:
        """A compact hyperparameter string, e.g. ``Conv2d 64→128 k3 s2 p1``."""
        kw = self.kwargs
        if self.kind == "linear":
            return f"Linear {kw['in_features']}→{kw['out_features']} on [{', '.join(map(str, self.x_shape))}]"
        name = f"ConvTranspose{kw['dims']}d" if kw.get("transposed") else f"Conv{kw['dims']}d"
        parts = [f"{kw['in_channels']}→{kw['out_channels']}", "k" + _compact(kw["kernel_size"])]
        if any(s != 1 for s in kw["stride"]):
            parts.append("s" + _compact(kw["stride"]))
        padding = kw["padding"]
        if isinstance(padding, str) or any(p != 0 for p in padding):
            parts.append("p" + (padding if isinstance(padding, str) else _compact(padding)))
        if any(d != 1 for d in kw["dilation"]):
            parts.append("d" + _compact(kw["dilation"]))
        if kw["groups"] != 1:
            parts.append(f"g{kw['groups']}")
        if kw.get("padding_mode", "zeros") != "zeros":
            parts.append(kw["padding_mode"])
        return f"{name} {' '.join(parts)} on [{', '.join(map(str, self.x_shape))}]"


def _compact(values: Sequence[int]) -> str:
    return str(values[0]) if len(set(values)) == 1 else "x".join(map(str, values))


def _conv_case(entry: dict[str, Any], batch: int, halve: bool) -> Case:
    dims = int(entry["dims"])
    sizes = tuple(int(s) for s in entry["input_size"])
    args: dict[str, Any] = dict(
        dims=dims,
        in_channels=int(entry["in_channels"]),
        out_channels=int(entry["out_channels"]),
        kernel_size=tuple(entry["kernel_size"]),
        stride=tuple(entry["stride"]),
        padding=entry["padding"] if isinstance(entry["padding"], str) else tuple(entry["padding"]),
        dilation=tuple(entry["dilation"]),
        groups=int(entry["groups"]),
        bias=bool(entry["bias"]),
        padding_mode=entry.get("padding_mode", "zeros"),
    )
    if entry.get("transposed"):
        args.update(transposed=True, output_padding=tuple(entry.get("output_padding", (0,) * dims)))
        args.pop("padding_mode")
    case = Case(
        id=f"{entry['net']}/{entry['name']}",
        category=entry["category"],
        kind="conv",
        args=tuple(args.items()),
        batch=batch,
        input_shape=(args["in_channels"], *sizes),
    )
    if halve:
        halved = replace(case, input_shape=(args["in_channels"], *(max(1, s // 2) for s in sizes)))
        try:
            if all(s > 0 for s in halved.output_shape()):
                return halved
        except RuntimeError:
            pass
    return case


def suite_cases(device: str = "cpu", batch: int | None = None, path: Path = SUITE) -> list[Case]:
    """The real-layer suite: on CPU batch 8 and halved spatial sizes, on GPU batch 32 at full size."""
    cpu = device == "cpu"
    batch = batch if batch is not None else (CPU_BATCH if cpu else GPU_BATCH)
    entries = json.loads(path.read_text())["layers"]
    return [_conv_case(entry, batch, halve=cpu) for entry in entries]


def dense_cases(device: str = "cpu", batch: int | None = None) -> list[Case]:
    """Transformer dense layers with a sequence (weight-sharing) axis: BERT-base MLP and attention projections."""
    batch = batch if batch is not None else (CPU_BATCH if device == "cpu" else GPU_BATCH)
    seq = 128 if device == "cpu" else 512
    layers = (
        ("bert-base/mlp.up", 768, 3072),
        ("bert-base/mlp.down", 3072, 768),
        ("bert-base/attn.qkv", 768, 2304),
        ("bert-base/attn.out", 768, 768),
    )
    return [
        Case(id=name, category="linear", kind="linear",
             args=(("in_features", fin), ("out_features", fout), ("bias", True)),
             batch=batch, input_shape=(seq, fin))
        for name, fin, fout in layers
    ]


def _probe(name: str, note: str, batch: int = 2, size: tuple[int, ...] = (9, 8), **kw: Any) -> Case:
    dims = len(size)
    args: dict[str, Any] = dict(dims=dims, in_channels=4, out_channels=6, kernel_size=(3,) * dims, stride=(1,) * dims,
                                padding=(1,) * dims, dilation=(1,) * dims, groups=1, bias=True, padding_mode="zeros")
    args.update(kw)
    for key in ("kernel_size", "stride", "dilation", "output_padding"):
        if key in args and isinstance(args[key], int):
            args[key] = (args[key],) * dims
    if isinstance(args["padding"], int):
        args["padding"] = (args["padding"],) * dims
    if args.get("transposed"):
        args.pop("padding_mode")
    return Case(id=f"probe/{name}", category="probe", kind="conv", args=tuple(args.items()), batch=batch,
                input_shape=(args["in_channels"], *size), note=note)


def probe_cases() -> list[Case]:
    """Small layers with the settings where peers are known to struggle (checked, not timed)."""
    return [
        _probe("zeros", "plain zero padding (control)"),
        _probe("reflect", "padding_mode='reflect'", padding_mode="reflect"),
        _probe("circular", "padding_mode='circular'", padding_mode="circular"),
        _probe("replicate", "padding_mode='replicate'", padding_mode="replicate"),
        _probe("same-even", "padding='same' with an even kernel (asymmetric padding)", padding="same", kernel_size=4),
        _probe("same-dilated", "padding='same' with dilation 2", padding="same", dilation=2),
        _probe("groups", "groups=2", groups=2),
        _probe("strided-dilated", "stride 2, dilation 2", stride=2, dilation=2, padding=2),
        _probe("conv1d-reflect", "Conv1d, padding_mode='reflect'", size=(11,), padding_mode="reflect"),
        _probe("conv3d-circular", "Conv3d, padding_mode='circular', groups=2", size=(5, 4, 6),
               padding_mode="circular", groups=2, kernel_size=(3, 2, 3), padding=(1, 1, 1)),
        _probe("transposed", "ConvTranspose2d, stride 2, output_padding 1", transposed=True, stride=2,
               output_padding=1, padding=1),
    ]


def select(cases: Sequence[Case], patterns: Sequence[str] | None) -> list[Case]:
    """Cases whose id or category contains one of ``patterns`` (all when none)."""
    if not patterns:
        return list(cases)
    return [c for c in cases if any(p in c.id or p == c.category for p in patterns)]


def conv_flops(case: Case) -> int:
    """Multiply-adds ×2 of the layer's forward (== input VJP == weight VJP == per-sample gradients)."""
    kw = case.kwargs
    if case.kind == "linear":
        return 2 * math.prod(case.x_shape[:-1]) * kw["in_features"] * kw["out_features"]
    out = case.output_shape()
    spatial = math.prod(case.x_shape[2:]) if case.transposed else math.prod(out[2:])
    c_in, c_out, g = kw["in_channels"], kw["out_channels"], kw["groups"]
    per_position = (c_out // g) * c_in if case.transposed else (c_in // g) * c_out
    return 2 * case.batch * spatial * per_position * math.prod(kw["kernel_size"])
