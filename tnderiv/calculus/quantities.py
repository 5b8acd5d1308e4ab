"""The registry of derivable quantities: a name → how to derive it from a layer's network."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, get_args

from tnderiv.calculus.surgery import jvp, vjp
from tnderiv.ir import Expression, Registry
from tnderiv.layers.base import LayerNetwork
from tnderiv.simplify import simplify

Builder = Callable[[LayerNetwork, str | None], Expression]
WrtKind = Literal["none", "operand", "param"]  # no operand; any operand (inputs or params); a parameter
WRT_KINDS: tuple[WrtKind, ...] = get_args(WrtKind)


@dataclass(frozen=True)
class QuantityKind:
    """A family of quantities; ``wrt`` says which operands it may be taken with respect to."""

    name: str
    build: Builder
    doc: str
    wrt: WrtKind = "none"
    default_wrt: str | None = None


QUANTITIES: Registry[str, QuantityKind] = Registry("quantity", plural="quantities", on_replace=lambda: derive.cache_clear())


def register_quantity(
    name: str, *, wrt: WrtKind = "none", default_wrt: str | None = None, replace: bool = False
) -> Callable[[Builder], Builder]:
    """Register a builder ``(network, wrt) → expression`` under ``name`` (docstring: one line with shapes).

    A name registered before raises ``DuplicateNameError`` unless ``replace=True`` (which also drops
    the cached derivations).
    """

    if wrt not in WRT_KINDS:
        raise ValueError(f"wrt={wrt!r}: expected one of {list(WRT_KINDS)}")

    def decorate(build: Builder) -> Builder:
        QUANTITIES.register(name, QuantityKind(name, build, (build.__doc__ or "").strip(), wrt, default_wrt), replace=replace)
        return build

    return decorate


def parse_quantity(quantity: str, network: LayerNetwork) -> tuple[QuantityKind, str | None]:
    """Split ``'vjp_weight'`` into the kind ``vjp`` and ``'weight'``; raise naming valid choices."""
    if not isinstance(quantity, str):
        raise TypeError(f"quantity must be a str, got {type(quantity).__name__}")
    for name in sorted(QUANTITIES, key=len, reverse=True):
        kind = QUANTITIES[name]
        if quantity == name:
            if kind.wrt != "none" and kind.default_wrt is None:
                raise ValueError(f"quantity {quantity!r} needs an operand, e.g. {_examples(kind, network)}")
            return kind, kind.default_wrt if kind.wrt != "none" else None
        if kind.wrt != "none" and quantity.startswith(name + "_"):
            wrt = quantity[len(name) + 1 :]
            allowed = network.operands if kind.wrt == "operand" else network.params
            if wrt not in allowed:
                what = "operand" if kind.wrt == "operand" else "parameter"
                raise ValueError(f"unknown {what} {wrt!r} in quantity {quantity!r}; this layer has {list(allowed)}")
            return kind, wrt
    raise QUANTITIES.unknown(quantity, where="(with _<operand> where needed)")


def _examples(kind: QuantityKind, network: LayerNetwork) -> str:
    allowed = network.operands if kind.wrt == "operand" else network.params
    return ", ".join(f"{kind.name}_{name!s}" for name in allowed)


@lru_cache(maxsize=512)
def derive(network: LayerNetwork, quantity: str, simplified: bool = True) -> Expression:
    """The (simplified) diagram of ``quantity`` for ``network``."""
    kind, wrt = parse_quantity(quantity, network)
    expr = kind.build(network, wrt)
    if simplified:
        result = simplify(expr)
        assert not isinstance(result, tuple)
        return result  # type: ignore[return-value]
    return expr


@register_quantity("forward")
def _forward(network: LayerNetwork, wrt: str | None) -> Expression:
    """The layer's output ``[N, C_out, *O]``."""
    return network.forward


@register_quantity("vjp", wrt="operand")
def _vjp(network: LayerNetwork, wrt: str | None) -> Expression:
    """``grad_out`` pulled back to an operand: the operand's shape."""
    assert wrt is not None
    if wrt in network.linearized:
        # transpose the linearization: cut the tangent, attach grad_out
        return vjp(network.linearized[wrt], "tangent")
    return vjp(network.forward, wrt)


@register_quantity("jvp", wrt="operand")
def _jvp(network: LayerNetwork, wrt: str | None) -> Expression:
    """The output's change along ``tangent`` (shaped like the operand): the output's shape."""
    assert wrt is not None
    if wrt in network.linearized:
        return network.linearized[wrt]
    return jvp(network.forward, wrt)


@register_quantity("per_sample_grad", wrt="param", default_wrt="weight")
def _per_sample_grad(network: LayerNetwork, wrt: str | None) -> Expression:
    """Gradient of each sample's loss: ``[N, *param.shape]``."""
    assert wrt is not None
    if network.couples_batch:
        raise ValueError("per-sample gradients are undefined for this layer: its output couples the samples of a batch")
    return vjp(network.forward, wrt, keep_open=(network.batch_leg,))
