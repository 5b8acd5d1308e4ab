"""A layer given only by its diagram: every quantity then works for it without further code."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from tnderiv.ir import Expression, terms_of
from tnderiv.layers.base import LayerNetwork, Shapes


@dataclass(frozen=True)
class DiagramLayer:
    """A layer whose forward is ``forward`` (a diagram or sum) in operands ``inputs`` and ``params``.

    Example (bilinear): ``y[n, o] = Σ x1[n, i] weight[o, i, j] x2[n, j]``.
    """

    forward: Expression
    inputs: tuple[str, ...]
    params: tuple[str, ...]
    batch_leg: str = "n"
    shared_legs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = {n for term in terms_of(self.forward) for n in term.operand_names}
        missing = set(self.inputs + self.params) - names
        if missing:
            raise ValueError(f"operands {sorted(missing)} are not in the diagram, which has {sorted(names)}")
        unnamed = names - set(self.inputs + self.params)
        if unnamed:
            raise ValueError(f"operands {sorted(unnamed)} of the diagram are neither inputs nor params")

    def network(self, shapes: Shapes) -> LayerNetwork:
        return _diagram_network(self)


@lru_cache(maxsize=256)
def _diagram_network(layer: DiagramLayer) -> LayerNetwork:
    # one network object per layer, so that derivations cached per network are reused
    return LayerNetwork(layer.forward, layer.inputs, layer.params, layer.batch_leg, layer.shared_legs)
