"""Normalizing convolution hyperparameters and the sizes they imply, with clear errors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

import sympy

PadPairs = tuple[tuple[int, int], ...]
PaddingName = Literal["same", "valid"]  # torch's padding words: keep the input size (stride 1), no padding
PADDING_NAMES: tuple[PaddingName, ...] = get_args(PaddingName)
Padding = int | Sequence[int] | Sequence[tuple[int, int]] | PaddingName


def per_dim(name: str, value: Any, dims: int, *, minimum: int) -> tuple[int, ...]:
    """``value`` as a tuple of ``dims`` ints ≥ ``minimum``; raises naming ``name`` otherwise."""
    values = (value,) * dims if _is_int(value) else tuple(value) if isinstance(value, Sequence) else None
    if values is None or len(values) != dims or not all(_is_int(v) for v in values):
        raise ValueError(f"{name}={value!r}: expected an int or a tuple of {dims} ints")
    if any(v < minimum for v in values):
        raise ValueError(f"{name}={value!r}: every entry must be ≥ {minimum}")
    return tuple(int(v) for v in values)


def padding_pairs(padding: Padding, dims: int, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int]) -> PadPairs:
    """(left, right) padding per dimension from an int, a tuple, per-side pairs, ``'same'`` or ``'valid'``."""
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * dims
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError(f"padding='same' needs stride 1 in every dimension, got stride={tuple(stride)}")
            # like torch: the extra element of an odd total padding goes to the right
            return tuple((d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation))
        raise ValueError(f"padding={padding!r}: expected an int, a tuple, per-side pairs, or one of {list(PADDING_NAMES)}")
    if _is_int(padding):
        pairs: tuple[Any, ...] = ((padding, padding),) * dims
    elif isinstance(padding, Sequence) and len(padding) == dims:
        pairs = tuple((p, p) if _is_int(p) else tuple(p) if isinstance(p, Sequence) else (None,) for p in padding)
    else:
        raise ValueError(
            f"padding={padding!r}: expected an int, a tuple of {dims} ints, {dims} (left, right) pairs, 'same' or 'valid'"
        )
    if not all(len(p) == 2 and all(_is_int(v) and v >= 0 for v in p) for p in pairs):
        raise ValueError(f"padding={padding!r}: every padding must be a non-negative int or a (left, right) pair of them")
    return tuple((int(a), int(b)) for a, b in pairs)


def conv_output_size(i: sympy.Expr, k: int, s: int, d: int, pad: tuple[int, int]) -> sympy.Expr:
    """``O = floor((I + P_left + P_right − D·(K−1) − 1) / S) + 1``."""
    return sympy.floor((i + pad[0] + pad[1] - d * (k - 1) - 1) / sympy.Integer(s)) + 1


def transposed_output_size(i: sympy.Expr, k: int, s: int, d: int, pad: tuple[int, int], output_padding: int) -> sympy.Expr:
    """``O = (I − 1)·S − P_left − P_right + D·(K − 1) + output_padding + 1``."""
    return (i - 1) * s - pad[0] - pad[1] + d * (k - 1) + output_padding + 1


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
