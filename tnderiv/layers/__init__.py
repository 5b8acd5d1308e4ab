"""Layer specs and their diagrams: one module per layer family."""

from tnderiv.layers.base import Layer, LayerNetwork, register_module, spec_of
from tnderiv.layers.conv import Conv
from tnderiv.layers.custom import DiagramLayer
from tnderiv.layers.linear import Linear

__all__ = ["Conv", "DiagramLayer", "Layer", "LayerNetwork", "Linear", "register_module", "spec_of"]
