"""memsave: a copy of a model whose layers keep only what the gradients requested at call time read.

``memsave(model)`` deep-copies the model and gives every module whose exact type has a
memory-saving forward (dense, convolution and transposed convolution 1–3d, batch/instance/group/
layer/RMS norm, ReLU, LeakyReLU, max pooling) a subclass of its own type with that forward: parameters,
buffers, ``state_dict`` keys and ``isinstance`` stay as they were. Every other module is untouched.
What a layer keeps is read off its VJP diagrams (:func:`required_operands`); ReLU and LeakyReLU,
whose derivative is a 0/1 pattern, keep a boolean mask, and max pooling the indices of its maxima.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch.nn as nn

from tnderiv.calculus import operands
from tnderiv.layers.base import spec_of
from tnderiv.model.memsave_conv import conv_forward, linear_forward
from tnderiv.model.memsave_norm import (
    batch_norm_forward,
    group_norm_forward,
    instance_norm_forward,
    layer_norm_forward,
    rms_norm_forward,
)
from tnderiv.model.memsave_pattern import leaky_relu_forward, max_pool_forward, relu_forward


def required_operands(layer: Any, wrt: str | Iterable[str], x_shape: Sequence[int] | None = None) -> tuple[str, ...]:
    """The operands the VJP diagrams of ``wrt`` read, ``grad_out`` excluded.

    ``layer``: a tnderiv spec or a supported ``torch.nn`` module (in its current train/eval mode);
    ``x_shape`` picks the rank where the network depends on it (weight-sharing legs, spatial legs).
    E.g. a convolution: ``("x",) → ("weight",)``, ``("weight",) → ("x",)``, ``("bias",) → ()``;
    normalization layers name derived operands (``x_hat``, ``inv_std``).
    """
    network = spec_of(layer).network({"x": tuple(x_shape)} if x_shape is not None else {})
    return operands.required_operands(network, wrt)


def _conv_forward(module: Any, x: Any) -> Any:
    return conv_forward(module, x)


def _conv_transpose_forward(module: Any, x: Any, output_size: Any = None) -> Any:
    return conv_forward(module, x, output_size)


FORWARDS: dict[type, Callable[..., Any]] = {
    nn.Linear: linear_forward,
    **{t: _conv_forward for t in (nn.Conv1d, nn.Conv2d, nn.Conv3d)},
    **{t: _conv_transpose_forward for t in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)},
    **{t: batch_norm_forward for t in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)},
    **{t: instance_norm_forward for t in (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)},
    nn.GroupNorm: group_norm_forward,
    nn.LayerNorm: layer_norm_forward,
    nn.RMSNorm: rms_norm_forward,
    nn.ReLU: relu_forward,
    nn.LeakyReLU: leaky_relu_forward,
    **{t: max_pool_forward for t in (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)},
}


def _memsave_class(cls: type) -> type:
    """``MemSave<cls>``: a subclass of ``cls`` with the memory-saving forward (a module attribute, so it pickles)."""
    name = f"MemSave{cls.__name__}"
    made = globals().get(name)
    if made is None:
        made = type(name, (cls,), {"forward": FORWARDS[cls], "__module__": __name__, "__qualname__": name})
        globals()[name] = made
    return made


MEMSAVE_CLASSES = frozenset(_memsave_class(cls) for cls in FORWARDS)


def memsave(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose supported modules save only what the requested gradients read.

    Outputs and gradients equal the original's; modules of other types (and subclasses of the
    supported ones, whose forward may differ) stay as they are.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    copied = copy.deepcopy(model)
    for _, module in copied.named_modules():
        if type(module) in FORWARDS:
            module.__class__ = _memsave_class(type(module))
    return copied
