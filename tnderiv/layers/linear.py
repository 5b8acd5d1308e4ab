"""Dense layer with weight-sharing legs: ``y[n, s.., c_out] = Σ x[n, s.., c_in] weight[c_out, c_in] + bias[c_out]``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from tnderiv.ir import Diagram, DiagramSum, ones, operand, size_symbol
from tnderiv.layers.base import LayerNetwork, Shapes, register_module

# operands that reveal the number of weight-sharing legs, with their extra leading axes
_RANK_SOURCES = {"x": 0, "grad_out": 0, "y": 0, "sqrt_out": 1}


@dataclass(frozen=True)
class Linear:
    """Like ``torch.nn.Linear``; x: ``[N, *S, in_features]`` with any number of weight-sharing legs ``S``."""

    in_features: int
    out_features: int
    bias: bool = True

    def __post_init__(self) -> None:
        for name in ("in_features", "out_features"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r}: expected a positive int")
        object.__setattr__(self, "bias", bool(self.bias))

    def __str__(self) -> str:
        return f"Linear({self.in_features}→{self.out_features}{'' if self.bias else ', bias=False'})"

    def network(self, shapes: Shapes) -> LayerNetwork:
        """The network for inputs with ``len(shape) − 2`` weight-sharing legs (0 if no shape is known)."""
        rank = next((len(shapes[name]) - lead for name, lead in _RANK_SOURCES.items() if name in shapes), 2)
        if rank < 2:
            source = next(name for name in _RANK_SOURCES if name in shapes)
            raise ValueError(
                f"{source} has shape {tuple(shapes[source])}: a Linear layer needs [N, *S, features] (at least 2 axes)"
            )
        return _linear_network(self, rank - 2)

    @staticmethod
    def from_module(module: Any) -> Linear:
        """The spec of a ``torch.nn.Linear``."""
        import torch.nn as nn

        if not isinstance(module, nn.Linear):
            raise TypeError(f"Linear.from_module expects torch.nn.Linear, got {type(module).__name__}")
        return Linear(module.in_features, module.out_features, bias=module.bias is not None)


@lru_cache(maxsize=64)
def _linear_network(spec: Linear, shared: int) -> LayerNetwork:
    s = tuple(f"s{j}" for j in range(shared))
    sizes: dict[str, Any] = {"n": size_symbol("N"), "c_in": spec.in_features, "c_out": spec.out_features}
    sizes.update({leg: size_symbol(f"S{j}") for j, leg in enumerate(s)})
    out_legs = ("n", *s, "c_out")
    dense = Diagram((operand("x", "n", *s, "c_in"), operand("weight", "c_out", "c_in")), out_legs, sizes)
    forward: Diagram | DiagramSum = dense
    params: tuple[str, ...] = ("weight",)
    if spec.bias:
        forward = DiagramSum((dense, Diagram((operand("bias", "c_out"), ones("n", *s)), out_legs, sizes)))
        params += ("bias",)
    return LayerNetwork(forward, ("x",), params, shared_legs=s)


def _register() -> None:
    import torch.nn as nn

    register_module(nn.Linear)(Linear.from_module)


_register()
