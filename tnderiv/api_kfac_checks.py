"""Argument checks of the KFAC entry points: tensors, flags, ``grad_out``'s kind, ``structure=`` and ``K=``.

Each raises before any work, naming the argument, its value and what was expected.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch

from tnderiv.api import BUFFERS, check_tensors
from tnderiv.calculus.structured import Structure
from tnderiv.ir import terms_of
from tnderiv.layers.base import LayerNetwork


def output_rank(network: LayerNetwork) -> int:
    """Axes of the layer's output ``[N, *output]``."""
    return len(terms_of(network.forward)[0].open_axis_groups)


def is_sqrt(network: LayerNetwork, grad_out: Any, hessian_sqrt: bool | None) -> bool:
    """Whether ``grad_out`` is a loss-Hessian square root ``[M, N, *output]`` (else ``[N, *output]``), by its axes."""
    rank = output_rank(network)
    if hessian_sqrt is not None:
        expected = rank + 1 if hessian_sqrt else rank
        if grad_out.ndim != expected:
            what = "a loss-Hessian square root [M, N, *output]" if hessian_sqrt else "an output gradient [N, *output]"
            raise ValueError(f"grad_out has shape {tuple(grad_out.shape)}; {what} needs {expected} axes for this layer")
        return hessian_sqrt
    if grad_out.ndim == rank:
        return False
    if grad_out.ndim == rank + 1:
        return True
    raise ValueError(
        f"grad_out has shape {tuple(grad_out.shape)}; expected the output gradient with {rank} axes [N, *output] "
        f"or a loss-Hessian square root with {rank + 1} axes [M, N, *output]"
    )


def check_torch(tensors: Mapping[str, Any]) -> None:
    """Validate like every entry point, then require torch tensors (the Kronecker operator uses torch.linalg)."""
    check_tensors(tensors)
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} is a {type(value).__module__}.{type(value).__name__}; KFAC needs torch tensors")
        if 0 in value.shape:
            raise ValueError(
                f"{name} has shape {tuple(value.shape)} with an empty axis; KFAC needs at least one sample and position "
                "(its factors average over them)"
            )


def input_tensors(layer: Any, x: Any, operands: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``x``, other operands by name and a module's running statistics, checked (torch, one dtype and device)."""
    tensors = {"x": x, **{name: value for name, value in operands.items() if value is not None}}
    if isinstance(layer, torch.nn.Module):
        for name in BUFFERS:
            if name not in tensors and isinstance(getattr(layer, name, None), torch.Tensor):
                tensors[name] = getattr(layer, name).detach()
    check_torch({**tensors, **(extra or {})})
    return tensors


def deprecated_bias(bias: Any, bias_mode: str) -> str:
    """``bias_mode``, or the mode given by the deprecated spelling ``bias="separate"|"append"`` (with a warning)."""
    if bias is None:
        return bias_mode
    if not isinstance(bias, str):
        raise TypeError(
            f"bias={type(bias).__name__}: KFAC does not take the bias's values; bias_mode= chooses how its block is "
            "formed ('separate' or 'append')"
        )
    warnings.warn(f"bias={bias!r} is deprecated; pass bias_mode={bias!r} (bias= means the bias tensor elsewhere)", DeprecationWarning, stacklevel=3)
    return bias


def check_flag(name: str, value: Any) -> None:
    """Raise unless the flag ``name`` is a bool."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}={value!r}: expected a bool")


def structured_request(structure: Any, K: Any, unreduced: bool) -> Structure | None:
    """The parsed structure, or None for today's dense factor (``structure="dense"`` without ``K``)."""
    if structure == "dense" and K is None:
        return None
    struct = Structure.parse(structure)
    if struct.kind == "dense" and K is None:
        return None
    if unreduced:
        raise ValueError(
            f"structure={structure!r} (or K=) with unreduced=True is not supported; "
            "take the half with unreduced=True and pass its rows to tnderiv.structured_gram"
        )
    return struct


def check_k(K: Any, groups: int, d: int) -> list[Any]:
    """``K`` per group: one ``[d, d]`` tensor or structured matrix (``rmatmat``) for all groups, or a list of ``G``."""
    ks = list(K) if isinstance(K, (list, tuple)) else [K] * groups
    if len(ks) != groups:
        raise ValueError(f"K is a list of {len(ks)}; expected one K for all groups or a list of {groups} (one per group)")
    for k in ks:
        if isinstance(k, torch.Tensor):
            if tuple(k.shape) != (d, d):
                raise ValueError(f"K has shape {list(k.shape)}; expected [{d}, {d}] (the factor's dimension)")
        elif k is not None and not callable(getattr(k, "rmatmat", None)):
            raise TypeError(f"K must be a [{d}, {d}] tensor or a structured matrix with rmatmat, got {type(k).__name__}")
    return ks


__all__ = [
    "check_flag",
    "check_k",
    "check_torch",
    "deprecated_bias",
    "input_tensors",
    "is_sqrt",
    "output_rank",
    "structured_request",
]
