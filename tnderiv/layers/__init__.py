"""Layer specs and their diagrams: one module per layer family."""

from tnderiv.layers.base import Layer, LayerNetwork, register_module, spec_of
from tnderiv.layers.conv import Conv
from tnderiv.layers.custom import DiagramLayer
from tnderiv.layers.linear import Linear
from tnderiv.layers.norm import BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RMSNorm

__all__ = [
    "BatchNorm",
    "Conv",
    "DiagramLayer",
    "GroupNorm",
    "InstanceNorm",
    "Layer",
    "LayerNetwork",
    "LayerNorm",
    "Linear",
    "RMSNorm",
    "register_module",
    "spec_of",
]
