"""What every layer provides: its network (forward diagram + roles of operands) and size checks."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import sympy

from tnderiv.ir import Expression, Registry, terms_of

Shapes = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True, eq=False)
class LayerNetwork:
    """A layer as a diagram: ``output = forward(inputs, params)``.

    ``inputs`` are data operands (``x``), ``params`` trainable operands (``weight``, ``bias``).
    ``batch_leg`` is the leg of independent samples; ``shared_legs`` are weight-sharing legs
    (spatial outputs ``o0..`` of a convolution, sequence legs ``s0..`` of a dense layer).
    ``check_sizes`` raises for bound sizes the layer cannot take (impossible output sizes, ...).

    Layers that are not multilinear in an input (normalization) give ``linearized[input]``: the JVP
    diagram in a ``tangent`` operand shaped like the input; VJPs follow by transposing it. Operands
    computed from the user's tensors in the forward (``x_hat``, ``inv_std``) are listed in ``derived``
    and produced by ``prepare(tensors) → {name: tensor}``. ``couples_batch`` marks layers whose
    output mixes samples (train-mode batch norm): per-sample quantities are then undefined.
    """

    forward: Expression
    inputs: tuple[str, ...]
    params: tuple[str, ...]
    batch_leg: str = "n"
    shared_legs: tuple[str, ...] = ()
    check_sizes: Callable[[Mapping[sympy.Symbol, int]], None] | None = field(default=None, compare=False)
    couples_batch: bool = False
    linearized: Mapping[str, Expression] = field(default_factory=dict)
    derived: tuple[str, ...] = ()
    prepare: Callable[[Mapping[str, Any]], dict[str, Any]] | None = field(default=None, compare=False)

    @property
    def operands(self) -> tuple[str, ...]:
        return self.inputs + self.params

    def operand_groups(self, name: str) -> tuple[tuple[str, ...], ...]:
        """Axis groups of operand ``name`` as it appears in the forward diagram."""
        for term in terms_of(self.forward):
            for node in term.nodes:
                if node.name == name:
                    return node.axis_groups
        raise KeyError(name)


@runtime_checkable
class Layer(Protocol):
    """A layer spec: a frozen, hashable description that builds its network."""

    def network(self, shapes: Shapes) -> LayerNetwork:
        """The network for operands of these (user-layout) shapes; shapes may be partial."""
        ...


_FROM_MODULE: Registry[type, Callable[[Any], Layer]] = Registry("module type", on_replace=lambda: _MODULE_SPECS.clear())


def register_module(*module_types: type, replace: bool = False) -> Callable[[Callable[[Any], Layer]], Callable[[Any], Layer]]:
    """Register a converter from ``torch.nn`` module types to a layer spec.

    A type registered before raises ``DuplicateNameError`` (naming it) unless ``replace=True``.
    """
    for module_type in module_types:
        if not isinstance(module_type, type):
            raise TypeError(f"register_module({module_type!r}): expected module classes such as torch.nn.Linear")

    def decorate(convert: Callable[[Any], Layer]) -> Callable[[Any], Layer]:
        taken = [t for t in module_types if t in _FROM_MODULE and not replace]
        if taken:
            raise _FROM_MODULE.duplicate(taken[0])
        for module_type in module_types:
            _FROM_MODULE.register(module_type, convert, replace=replace)
        return convert

    return decorate


def spec_of(layer: Any) -> Layer:
    """The spec of a spec or of a supported ``torch.nn`` module; raises naming unsupported types.

    A module's spec is remembered per module together with a snapshot of its settings (its public
    attributes: ``stride``, ``padding``, ``padding_mode``, ``groups``, ``eps``, ``training``, ... and
    which parameters and buffers are set): a module changed after its first use gets a new spec.
    """
    if not _is_module(layer):
        if callable(getattr(layer, "network", None)):
            return layer
    else:
        cached = _MODULE_SPECS.get(layer)
        if cached is not None and cached.matches(layer):
            return cached.spec
    for module_type in type(layer).__mro__:
        if module_type in _FROM_MODULE:
            spec = _FROM_MODULE[module_type](layer)
            if _is_module(layer):
                _MODULE_SPECS[layer] = _Remembered.of(layer, spec)
            return spec
    supported = ", ".join(sorted(t.__name__ for t in _FROM_MODULE))
    raise TypeError(f"unsupported layer of type {type(layer).__name__}; supported modules: {supported}, or a tnderiv spec")


# values of public module attributes that a converter may read (tensors and submodules are not settings);
# checked once per conversion, so subclasses (torch.Size, str enums) count too
_SETTING_TYPES = (int, float, str, tuple, list, type(None))


@dataclass(frozen=True)
class _Remembered:
    """A module's spec and the snapshot of the settings it was read from.

    The snapshot holds the public plain attributes (hyperparameters, ``training``), the identity of
    each parameter and buffer (``bias=None`` changes it), and the number of attributes (one added later counts).
    """

    spec: Layer
    names: tuple[str, ...]
    values: list[Any]
    length: int

    @staticmethod
    def of(module: Any, spec: Layer) -> _Remembered:
        state = module.__dict__
        names = tuple(k for k, v in state.items() if k[0] != "_" and isinstance(v, _SETTING_TYPES))
        return _Remembered(spec, names, _settings(module, names), len(state))

    def matches(self, module: Any) -> bool:
        return len(module.__dict__) == self.length and _settings(module, self.names) == self.values


def _settings(module: Any, names: tuple[str, ...]) -> list[Any]:
    # parameters and buffers by identity: setting one to None (or back) always changes it; tensors never compare by value
    return [*map(module.__dict__.get, names), *map(id, module._parameters.values()), *map(id, module._buffers.values())]


_MODULE_SPECS: weakref.WeakKeyDictionary[Any, _Remembered] = weakref.WeakKeyDictionary()


class _SpecMemo:
    """The module → spec memo seen as a cache (``cache_info``/``cache_clear``, like ``functools.lru_cache``)."""

    def cache_info(self) -> tuple[int, int, int, int]:
        """``(hits, misses, maxsize, currsize)``: hits and misses are not counted; no bound of its own (weak keys)."""
        return _SpecMemoInfo(0, 0, 0, len(_MODULE_SPECS))

    def cache_clear(self) -> None:
        _MODULE_SPECS.clear()


@dataclass(frozen=True)
class _SpecMemoInfo:
    hits: int
    misses: int
    maxsize: int
    currsize: int


MODULE_SPECS = _SpecMemo()


def _is_module(obj: Any) -> bool:
    try:
        import torch.nn
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, torch.nn.Module)
