"""Normalization layers as diagrams: batch, instance, group, layer and RMS norm (one module per family)."""

from tnderiv.layers.norm.batch import BatchNorm, InstanceNorm
from tnderiv.layers.norm.group import GroupNorm
from tnderiv.layers.norm.layer import LayerNorm, RMSNorm
from tnderiv.layers.norm.structure import NormStructure, Stats

__all__ = ["BatchNorm", "GroupNorm", "InstanceNorm", "LayerNorm", "NormStructure", "RMSNorm", "Stats"]
