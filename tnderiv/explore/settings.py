"""What the explorer looks at: the starting layer or diagram, and the settings a request may change.

A ``Target`` is what ``tnderiv explore``/``tnderiv.explore`` was started with (a layer spec text,
a layer object or a diagram). ``Settings`` are the values the page may send: a layer spec in the
``render`` syntax (``conv2d:stride=2``), the quantity, the size symbols (``N``, ``I0``, …),
``simplify`` and the term of a sum. ``resolve`` turns both into a derived expression and operand
shapes, raising the library's own errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sympy

from tnderiv.calculus import QUANTITIES
from tnderiv.ir import Diagram, DiagramSum, Expression, size_symbol, terms_of
from tnderiv.layers.base import spec_of
from tnderiv.layers.conv import Conv
from tnderiv.layers.linear import Linear
from tnderiv.plan.bind import OUTPUT, Bindings, axis_groups_by_name, bind_sizes
from tnderiv.render.spec import LAYER_KINDS, parse_spec

MAX_SIZE = 4096  # largest value of one size symbol the page may ask for
MAX_SPEC = 400  # characters of a layer spec
MAX_NAME = 200  # characters of a quantity or size name
Shapes = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class Settings:
    """One request's settings; ``spec=None`` means the target's own layer or diagram."""

    spec: str | None = None
    quantity: str | None = None
    sizes: tuple[tuple[str, int], ...] = ()
    simplify: bool = True
    term: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "quantity": self.quantity, "sizes": dict(self.sizes), "simplify": self.simplify,
                "term": self.term}  # fmt: skip


SETTING_KEYS = ("spec", "quantity", "sizes", "simplify", "term")


def settings_from_json(data: Any, extra: Sequence[str] = ()) -> Settings:
    """Check a request body (a JSON object) and return its settings; raises ``ValueError`` naming the key."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object with keys {list(SETTING_KEYS)}, got {type(data).__name__}")
    unknown = sorted(set(data) - set(SETTING_KEYS) - set(extra))
    if unknown:
        raise ValueError(f"unknown keys {unknown}; valid keys are {sorted(set(SETTING_KEYS) | set(extra))}")
    spec = data.get("spec")
    if spec is not None and (not isinstance(spec, str) or len(spec) > MAX_SPEC):
        raise ValueError(f"spec={spec!r}: expected a layer spec string (at most {MAX_SPEC} characters) or null")
    quantity = data.get("quantity")
    if quantity is not None and (not isinstance(quantity, str) or not 0 < len(quantity) <= MAX_NAME):
        raise ValueError(f"quantity={quantity!r}: expected a quantity name such as 'vjp_weight', or null")
    sizes = data.get("sizes", {})
    if not isinstance(sizes, dict):
        raise ValueError(f"sizes={sizes!r}: expected an object {{symbol: int}}")
    checked = []
    for name, value in sizes.items():
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
            raise ValueError(f"sizes key {name!r}: expected a size symbol such as 'N' or 'I0'")
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_SIZE:
            raise ValueError(f"sizes[{name!r}]={value!r}: expected an int from 1 to {MAX_SIZE}")
        checked.append((name, value))
    simplify = data.get("simplify", True)
    if not isinstance(simplify, bool):
        raise ValueError(f"simplify={simplify!r}: expected true or false")
    term = data.get("term", 0)
    if not isinstance(term, int) or isinstance(term, bool) or term < 0:
        raise ValueError(f"term={term!r}: expected an int ≥ 0 (the term of a sum)")
    return Settings(spec, quantity, tuple(sorted(checked)), simplify, term)


@dataclass(frozen=True)
class Target:
    """What the explorer was started with: a layer (with its spec text when it has one) or a diagram."""

    layer: Any = None
    diagram: Expression | None = None
    spec: str | None = None
    rank_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.spec is not None:
            return self.spec
        return type(self.layer).__name__ if self.layer is not None else "diagram"


def make_target(layer_or_diagram: Any) -> Target:
    """A target from a spec string, a layer spec or module, or a ``Diagram``/``DiagramSum``."""
    if isinstance(layer_or_diagram, str):
        layer, shapes = parse_spec(layer_or_diagram)
        return Target(layer=layer, spec=layer_or_diagram.strip(), rank_shapes=shapes)
    if isinstance(layer_or_diagram, (Diagram, DiagramSum)):
        return Target(diagram=layer_or_diagram)
    spec = spec_of(layer_or_diagram)  # raises naming an unsupported type
    return Target(layer=layer_or_diagram, spec=spec_text(spec))


def _axes(values: tuple[int, ...]) -> str:
    return str(values[0]) if len(set(values)) == 1 else "x".join(str(v) for v in values)


def spec_text(spec: Any) -> str | None:
    """The ``render`` syntax spelling of a ``Conv`` or ``Linear`` spec (``None`` if it has none)."""
    if isinstance(spec, Linear):
        return f"linear:in={spec.in_features},out={spec.out_features},bias={str(spec.bias).lower()}"
    if not isinstance(spec, Conv):
        return None
    if any(left != right for left, right in spec.padding):
        return None  # asymmetric padding has no spelling in the syntax
    kind = f"conv_transpose{spec.dims}d" if spec.transposed else f"conv{spec.dims}d"
    parts = [
        f"in={spec.in_channels}", f"out={spec.out_channels}", f"kernel={_axes(spec.kernel_size)}",
        f"stride={_axes(spec.stride)}", f"padding={_axes(tuple(p[0] for p in spec.padding))}",
        f"dilation={_axes(spec.dilation)}", f"groups={spec.groups}", f"bias={str(spec.bias).lower()}",
        f"padding_mode={getattr(spec.padding_mode, 'value', spec.padding_mode)}",
    ]  # fmt: skip
    if spec.transposed:
        parts.append(f"output_padding={_axes(spec.output_padding)}")
    return f"{kind}:" + ",".join(parts)


def quantities_of(layer: Any, rank_shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Every quantity name the registry can spell for ``layer`` (derivable or not: errors say why)."""
    network = spec_of(layer).network(dict(rank_shapes))
    names = []
    for name, kind in sorted(QUANTITIES.items()):
        if kind.wrt == "none":
            names.append(name)
        elif kind.wrt == "operand":
            names.extend(f"{name}_{op}" for op in network.operands)
        else:
            names.extend(f"{name}_{p}" for p in network.params)
    return names


@dataclass(frozen=True)
class Resolved:
    """A request's settings made concrete: the layer, the derived expression (raw and simplified), sizes, shapes."""

    layer: Any
    spec: str | None
    quantity: str | None
    raw: Expression
    expr: Expression
    sizes: dict[str, int]
    shapes: Shapes
    rank_shapes: Mapping[str, tuple[int, ...]]
    settings: Settings

    @property
    def terms(self) -> tuple[Diagram, ...]:
        return terms_of(self.expr)

    def term_shapes(self, index: int) -> Shapes:
        """The shapes one term of the expression needs, planned alone (its operands and the output)."""
        if len(self.terms) == 1:
            return dict(self.shapes)
        term = self.terms[index]
        shapes = {name: self.shapes[name] for name in term.operand_names}
        shapes[OUTPUT] = self.shapes[OUTPUT]
        return shapes


def _bindings(sizes: Mapping[str, int]) -> Bindings:
    return Bindings({size_symbol(name): value for name, value in sizes.items()})


def _shape_of(group: tuple[Any, Mapping[str, Any]], bindings: Bindings) -> tuple[int, ...]:
    axes, leg_sizes = group
    return tuple(bindings.value(sympy.Mul(*(sympy.sympify(leg_sizes[leg]) for leg in legs))) for legs in axes)


def default_size(symbol: str) -> int:
    """A small default for a size symbol: batch 4, spatial sizes 8, anything else 3."""
    if symbol == "N":
        return 4
    return 8 if symbol.startswith("I") else 3


def symbols_of(expr: Expression) -> list[str]:
    """The size symbols of ``expr``, sorted by name."""
    found = {str(s) for term in terms_of(expr) for size in term.sizes.values() for s in sympy.sympify(size).free_symbols}
    return sorted(found)


def sizes_from_shapes(expr: Expression, shapes: Mapping[str, Sequence[int]], check: Any = None) -> dict[str, int]:
    """Symbol values bound from operand shapes (the library's own checks and errors)."""
    bound = bind_sizes(expr, {k: tuple(int(s) for s in v) for k, v in shapes.items()}, check)
    return {str(k): int(v) for k, v in bound.symbols().items()}


def resolve(target: Target, settings: Settings) -> Resolved:
    """Derive the quantity for ``settings`` and compute every operand's shape; raises the library's errors."""
    if settings.spec is not None and settings.spec.strip() != (target.spec or ""):
        layer, rank_shapes = parse_spec(settings.spec)
        spec: str | None = settings.spec.strip()
    else:
        layer, rank_shapes, spec = target.layer, target.rank_shapes, target.spec
    if layer is None:
        if settings.quantity is not None:
            raise ValueError(f"quantity={settings.quantity!r}: a diagram is its own quantity; expected none")
        assert target.diagram is not None
        raw = target.diagram
        expr = _simplified(raw) if settings.simplify else raw
        quantity = None
    else:
        from tnderiv.api import diagram

        quantity = settings.quantity or "vjp_weight"
        raw = diagram(layer, quantity, simplify=False, shapes=rank_shapes)
        expr = diagram(layer, quantity, simplify=True, shapes=rank_shapes) if settings.simplify else raw
    given = dict(settings.sizes)
    sizes = {name: given.get(name, default_size(name)) for name in symbols_of(expr)}
    bindings = _bindings(sizes)
    # the output's shape too: a VJP w.r.t. the input cannot tell the input's size from grad_out alone
    shapes = {name: _shape_of(groups[0], bindings) for name, groups in axis_groups_by_name(expr).items()}
    if settings.term >= len(terms_of(expr)):
        raise ValueError(f"term={settings.term}: the expression has {len(terms_of(expr))} term(s)")
    return Resolved(layer, spec, quantity, raw, expr, sizes, shapes, rank_shapes, settings)


def _simplified(expr: Expression) -> Expression:
    from tnderiv.simplify import simplify

    return simplify(expr)


def spec_value(value: Any) -> str:
    """A value as the spec syntax writes it (``None``: empty, the layer's default)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "x".join(str(v) for v in value)
    return str(value)


def layer_kinds() -> dict[str, dict[str, str]]:
    """Each layer kind of the spec syntax with its keys and their defaults, as spec text (for the page's controls)."""
    # keys in the order the syntax declares them (in, out, kernel, stride, padding, …), not alphabetically
    return {name: {key: spec_value(v) for key, v in kind.defaults.items()} for name, kind in sorted(LAYER_KINDS.items())}
