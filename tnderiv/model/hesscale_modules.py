"""What Hessian-diagonal backpropagation does with each module of a sequential model: its role, or an error naming it.

Roles, by the structure of the module's Jacobian ``J`` (what ``(J ⊙ J)ᵀ d`` needs):

- ``LAYER``: ``Linear``, ``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d`` — tnderiv layers; the parameter and input
  diagonals come from the derived ``hadamard_vjp`` quantity.
- ``ELEMENTWISE``: activations acting on each entry alone (``ELEMENTWISE_TYPES``, or modules the user marks);
  ``f′`` and ``f″`` from ``torch.func``.
- ``SELECT``: ``J`` is 0/1 with one 1 per output (max pooling, flatten, identity), so ``J ⊙ J = J``.
- ``DIAGONAL``: ``J`` is diagonal (dropout, with the forward's mask), so ``(J ⊙ J)ᵀ d = Jᵀ (Jᵀ d)``.
- ``AVG_POOL``: a depthwise convolution with constant weights ``1/divisor`` (a tnderiv ``Conv``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from tnderiv.layers import Conv, spec_of


class Role(str, enum.Enum):
    """How a module's Jacobian enters the diagonal recursion (see the module docstring)."""

    LAYER = "layer"
    ELEMENTWISE = "elementwise"
    SELECT = "select"
    DIAGONAL = "diagonal"
    AVG_POOL = "avg_pool"


# activations that act on every entry alone, with no parameters (f′, f″ come from torch.func)
ELEMENTWISE_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Softsign,
    nn.Hardtanh,  # and its subclass ReLU6
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.LogSigmoid,
    nn.Tanhshrink,
    nn.Softshrink,
    nn.Hardshrink,
    nn.Threshold,
)
LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
SELECT_TYPES: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Flatten,
    nn.Unflatten,
    nn.Identity,
)
DIAGONAL_TYPES: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
AVG_POOL_TYPES: tuple[type[nn.Module], ...] = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)

_MARKED: set[type[nn.Module]] = set()


def mark_elementwise(*module_types: type[nn.Module]) -> None:
    """Treat modules of these types as elementwise activations (parameter-free, each output entry from its input entry)."""
    for t in module_types:
        if not (isinstance(t, type) and issubclass(t, nn.Module)):
            raise TypeError(f"mark_elementwise expects torch.nn.Module subclasses, got {t!r}")
    _MARKED.update(module_types)


@dataclass(frozen=True, eq=False)
class Step:
    """One module of the flattened model: its dotted path (as in ``named_modules``), the module and its role."""

    path: str
    module: nn.Module
    role: Role


def flatten_model(model: Any, elementwise: Iterable[Any] = ()) -> list[Step]:
    """The modules of a (nested) ``nn.Sequential`` in order, each with its role; raises naming an unsupported module."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(
            f"model must be a torch.nn.Sequential (nested Sequentials are flattened), got {type(model).__name__}"
        )
    marked_types, marked_modules = _marks(elementwise)
    steps: list[Step] = []
    _walk(model, "", steps, marked_types, marked_modules)
    if not steps:
        raise ValueError("model is an empty nn.Sequential")
    return steps


def _marks(elementwise: Iterable[Any]) -> tuple[tuple[type, ...], set[int]]:
    if isinstance(elementwise, (type, nn.Module)):
        elementwise = (elementwise,)
    types, modules = [], set()
    for item in elementwise:
        if isinstance(item, type) and issubclass(item, nn.Module):
            types.append(item)
        elif isinstance(item, nn.Module):
            modules.add(id(item))
        else:
            raise TypeError(f"elementwise= expects torch.nn.Module types or instances, got {item!r}")
    return tuple(types) + tuple(_MARKED), modules


def _walk(seq: nn.Sequential, prefix: str, steps: list[Step], marked: tuple[type, ...], instances: set[int]) -> None:
    for name, child in seq.named_children():
        path = f"{prefix}{name}"
        if isinstance(child, nn.Sequential):
            _walk(child, path + ".", steps, marked, instances)
        else:
            steps.append(Step(path, child, classify(path, child, marked, instances)))


def classify(path: str, module: nn.Module, marked: tuple[type, ...] = (), instances: set[int] | None = None) -> Role:
    """The role of ``module`` (at ``path``); raises a ``TypeError``/``ValueError`` naming the module and the setting."""
    where = f"module {path!r} ({type(module).__name__})"
    if isinstance(module, LAYER_TYPES):
        spec_of(module)  # raises for settings tnderiv does not support
        return Role.LAYER
    if isinstance(module, ELEMENTWISE_TYPES) or isinstance(module, marked) or id(module) in (instances or set()):
        if any(True for _ in module.parameters()):
            raise ValueError(f"{where} is marked elementwise but has parameters; elementwise modules must be parameter-free")
        return Role.ELEMENTWISE
    if isinstance(module, SELECT_TYPES):
        if getattr(module, "return_indices", False):
            raise ValueError(f"{where} has return_indices=True; expected a module that returns one tensor")
        return Role.SELECT
    if isinstance(module, DIAGONAL_TYPES):
        return Role.DIAGONAL
    if isinstance(module, AVG_POOL_TYPES):
        if module.ceil_mode:
            raise ValueError(f"{where} has ceil_mode=True, whose last windows have other divisors; expected ceil_mode=False")
        padded = any(p != 0 for p in _tuple(module.padding, 1))
        if padded and not module.count_include_pad and getattr(module, "divisor_override", None) is None:
            raise ValueError(
                f"{where} has count_include_pad=False with padding={module.padding}, so border windows have other "
                "divisors; expected count_include_pad=True, padding=0 or a divisor_override"
            )
        return Role.AVG_POOL
    supported = ", ".join(t.__name__ for t in LAYER_TYPES + ELEMENTWISE_TYPES + SELECT_TYPES + DIAGONAL_TYPES + AVG_POOL_TYPES)
    raise TypeError(
        f"{where} is not supported by hessian_diagonal; supported modules: {supported}, nested nn.Sequential, "
        "and modules marked elementwise (elementwise=[...] or mark_elementwise)"
    )


def avg_pool_as_conv(module: nn.Module, channels: int) -> tuple[Conv, float]:
    """The depthwise ``Conv`` spec of an average pooling over ``channels`` channels, and its constant weight ``1/divisor``."""
    dims = _dims(module)
    kernel = _tuple(module.kernel_size, dims)
    stride = _tuple(module.stride if module.stride is not None else module.kernel_size, dims)
    padding = _tuple(module.padding, dims)
    divisor = getattr(module, "divisor_override", None) or _prod(kernel)
    spec = Conv(channels, channels, kernel, dims=dims, stride=stride, padding=padding, groups=channels, bias=False)
    return spec, 1.0 / divisor


def _dims(module: nn.Module) -> int:
    for t, d in ((nn.AvgPool1d, 1), (nn.AvgPool2d, 2), (nn.AvgPool3d, 3)):
        if isinstance(module, t):
            return d
    raise TypeError(f"expected an average pooling module, got {type(module).__name__}")


def _tuple(value: Any, dims: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value),) * dims


def _prod(values: tuple[int, ...]) -> int:
    out = 1
    for v in values:
        out *= v
    return out


__all__ = [
    "AVG_POOL_TYPES",
    "DIAGONAL_TYPES",
    "ELEMENTWISE_TYPES",
    "LAYER_TYPES",
    "SELECT_TYPES",
    "Role",
    "Step",
    "avg_pool_as_conv",
    "classify",
    "flatten_model",
    "mark_elementwise",
]
