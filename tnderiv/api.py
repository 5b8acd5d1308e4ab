"""Public entry points: check the user's tensors, derive the quantity's diagram, run its cached plan."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, TypeVar

from tnderiv.calculus import derive, parse_quantity
from tnderiv.calculus.stats import STATISTICS
from tnderiv.ir import Diagram, DiagramSum, Expression, terms_of
from tnderiv.layers.base import MODULE_SPECS, LayerNetwork, spec_of
from tnderiv.plan.backends import backend_of
from tnderiv.plan.bind import OUTPUT
from tnderiv.plan.cache import LRUCache, register_cache
from tnderiv.plan.cache import clear_caches as clear_all_caches
from tnderiv.plan.compiled import Plan, get_plan
from tnderiv.plan.empty import empty_value, filled, has_empty
from tnderiv.plan.keys import call_key
from tnderiv.plan.memory import needs_check

T = TypeVar("T")
PARAMS = ("weight", "bias")
COMPLEX_UNSUPPORTED = (
    "complex dtypes are not supported; tnderiv's derivatives are real (torch's complex autograd conjugates, "
    "which these diagrams do not); pass real and imaginary parts as separate real tensors"
)
BUFFERS = ("running_mean", "running_var")  # statistics of normalization modules, used by their forward


def _module_params(layer: Any, tensors: dict[str, Any]) -> dict[str, Any]:
    """Fill missing ``weight``/``bias`` (and running statistics) from a torch module's own tensors.

    Parameters are not detached: results are differentiable w.r.t. them, like ``module(x)`` is.
    """
    # the module's registries, not getattr: only registered tensors count (nn.LSTM.bias is a bool flag)
    for registry, names in ((getattr(layer, "_parameters", None), PARAMS), (getattr(layer, "_buffers", None), BUFFERS)):
        if registry:
            for name in names:
                if tensors.get(name) is None and registry.get(name) is not None:
                    tensors[name] = registry[name]
    return tensors


def check_tensors(tensors: Mapping[str, Any]) -> Any:
    """Raise unless all tensors are floating arrays of one backend, dtype and device; returns the first."""
    first_name, first = None, None
    for name, array in tensors.items():
        backend = backend_of(array, name)
        if backend.is_complex(array):
            raise TypeError(f"{name} has dtype {array.dtype}: {COMPLEX_UNSUPPORTED}")
        if not backend.is_floating(array):
            raise TypeError(f"{name} has dtype {array.dtype}; expected a floating-point dtype")
        if first is None:
            first_name, first = name, array
            continue
        first_backend = backend_of(first)
        if backend is not first_backend:
            raise TypeError(f"{name} is a {backend.name} array but {first_name} is a {first_backend.name} array")
        if backend.dtype_key(array) != first_backend.dtype_key(first):
            raise TypeError(f"{name} has dtype {array.dtype} but {first_name} has {first.dtype}; expected one dtype")
        if backend.device_key(array) != first_backend.device_key(first):
            raise ValueError(
                f"{name} is on {backend.device_key(array)} but {first_name} is on {first_backend.device_key(first)}; "
                "expected one device"
            )
    return first


def _network(layer: Any, shapes: Mapping[str, tuple[int, ...]]) -> LayerNetwork:
    return spec_of(layer).network(shapes)


class _Call:
    """A warm call: the plan of one quantity for one set of tensor shapes, dtypes and devices."""

    __slots__ = ("label", "nbytes", "needed", "plan", "prepare")

    def __init__(self, needed: tuple[str, ...], plan: Plan, prepare: Any, label: str) -> None:
        self.needed, self.plan, self.prepare, self.label = needed, plan, prepare, label
        self.nbytes = plan.needed_bytes

    def __call__(self, given: dict[str, Any]) -> Any:
        if needs_check(self.nbytes):  # one comparison on warm calls; the budget may have changed since planning
            self.plan.check_memory(self.label)
        if self.prepare is not None:
            given.update(self.prepare(given))
        return self.plan.execute({name: given[name] for name in self.needed})


class _EmptyCall:
    """A warm call with an empty operand: a result of known shape and fill value (see ``plan.empty``).

    Tensors that require grad are attached with weight 0, so gradients flow (as zeros), like torch's own layers.
    """

    __slots__ = ("fill", "shape")

    def __init__(self, shape: tuple[int, ...], fill: float) -> None:
        self.shape, self.fill = shape, fill

    def __call__(self, given: dict[str, Any]) -> Any:
        like = next(iter(given.values()))
        out = filled(like, self.shape, self.fill)
        tracked = [t for t in given.values() if getattr(t, "requires_grad", False)]
        if tracked and _grad_enabled():
            out = out + sum(t.sum() for t in tracked) * 0.0
        return out


def _grad_enabled() -> bool:
    import torch

    return torch.is_grad_enabled()


CALL_CACHE: LRUCache[_Call | _EmptyCall] = LRUCache(maxsize=512)
def _plans_per_call() -> int:
    """What one call-cache entry keeps alive at most: a warm call one plan; a KFAC side four (its factor's half and
    Gram, the bias cross term's); a parameter's statistics two per statistic (half and Gram), one request holding
    each registered statistic at most once."""
    return max(4, 2 * len(STATISTICS))


register_cache("calls", "warm calls by call_key (spec and quantity, shapes, dtypes, devices, options), KFAC sides", lambda: CALL_CACHE, _plans_per_call)
register_cache("derivations", "derived diagrams by (layer network, quantity, simplify)", lambda: derive)
register_cache("module specs", "specs of torch modules and their settings (weak keys: max 0 = one per live module)", lambda: MODULE_SPECS)


def cached_call(key: Hashable | None, build: Callable[[], T]) -> T:
    """The warm call under ``key`` (a ``call_key``), built on a miss; ``None`` (an unusual argument): built, not kept."""
    return build() if key is None else CALL_CACHE.get_or_build(key, build)  # type: ignore[arg-type,return-value]


def clear_caches() -> None:
    """Forget everything cached (``tnderiv.cache_info()`` lists it): warm calls (KFAC sides included), compiled plans,
    constants on the host and on devices, derived diagrams. The next call of each quantity plans again."""
    clear_all_caches()


def run_quantity(
    layer: Any,
    quantity: str,
    tensors: Mapping[str, Any],
    *,
    output_shape: Sequence[int] | None = None,
    optimize: Any = "auto",
    simplify: bool = True,
    memory_limit: int | None = None,
    spec: Any = None,
) -> Any:
    """Evaluate ``quantity`` of ``layer`` with the given tensors (by operand name).

    ``simplify=False`` runs the diagram as derived (no rewrite rules, for comparison);
    ``memory_limit`` (bytes) splits the contraction so that no intermediate exceeds it; ``spec`` is
    ``spec_of(layer)`` when the caller has just read it (a module's settings are then not read again).

    The first call with given shapes, dtypes and devices checks everything and plans; later calls
    look the plan up under (spec, quantity, shapes, dtypes, devices, optimizer) and run it.
    """
    if spec is None:
        spec = spec_of(layer)  # an unsupported module raises here, naming its type, before anything is read
    given = _module_params(layer, {k: v for k, v in tensors.items() if v is not None})
    options = (bool(simplify), memory_limit)
    key = call_key((spec, quantity), given, optimize, output_shape, options)
    build = lambda: _build_call(layer, spec, quantity, tensors, given, output_shape, optimize, options)  # noqa: E731
    return cached_call(key, build)(given)


def _build_call(
    layer: Any,
    spec: Any,
    quantity: str,
    tensors: Mapping[str, Any],
    given: dict[str, Any],
    output_shape: Sequence[int] | None,
    optimize: Any,
    options: tuple[bool, Any],
) -> _Call | _EmptyCall:
    """The cold path: check the tensors, derive the quantity's diagram and plan it."""
    like = check_tensors(given)
    shapes = {name: tuple(array.shape) for name, array in given.items()}
    kind, _, wrt = quantity.partition("_")
    network = spec.network(_rank_shapes(kind, wrt, shapes, output_shape))
    _check_request(network, spec, quantity, kind, wrt, tensors)
    output_shape = _checked_output_shape(network, kind, wrt, output_shape, given)
    simplify, memory_limit = options
    expr = derive(network, quantity, simplify)
    needed = expr.operand_names
    prepare = _derived_operands(network, needed, given, shapes)
    missing = [name for name in needed if name not in shapes]
    if missing:
        raise ValueError(_missing_message(quantity, spec, missing))
    if like is None:
        raise ValueError(f"{quantity} needs at least one tensor")
    plan_shapes = {name: shapes[name] for name in needed}
    if output_shape is not None:
        plan_shapes[OUTPUT] = tuple(int(s) for s in output_shape)
    if has_empty(plan_shapes) or has_empty(shapes):
        return _EmptyCall(*empty_value(expr, plan_shapes, network.check_sizes))
    plan = get_plan(expr, plan_shapes, like, optimize, network.check_sizes, simplify=simplify, memory_limit=memory_limit)
    return _Call(tuple(needed), plan, prepare, f"{quantity} of {spec}")


def _rank_shapes(kind: str, wrt: str, shapes: dict[str, tuple[int, ...]], output_shape: Sequence[int] | None) -> dict[str, tuple[int, ...]]:
    """The shapes that tell the network its ranks (a dense layer's weight-sharing legs), the result's and a tangent's included."""
    rank_shapes = dict(shapes)
    if output_shape is not None and kind == "vjp":
        rank_shapes.setdefault(wrt, tuple(output_shape))
    if "tangent" in shapes and kind == "jvp":
        # the tangent is shaped like the operand: it tells the rank of x (weight-sharing legs of Linear)
        rank_shapes.setdefault(wrt, shapes["tangent"])
    return rank_shapes


def _check_request(network: LayerNetwork, spec: Any, quantity: str, kind: str, wrt: str, tensors: Mapping[str, Any]) -> None:
    """Raise for an unknown operand in the quantity, or a weight/bias given to a layer without one."""
    if kind in ("vjp", "jvp") and wrt not in network.operands:
        raise ValueError(f"unknown operand {wrt!r} in quantity {quantity!r}; this layer has {list(network.operands)}")
    for name in PARAMS:
        if tensors.get(name) is not None and name not in network.operands:
            raise ValueError(f"{name}= was given but {spec} has no {name}; its operands are {list(network.operands)}")


def _checked_output_shape(
    network: LayerNetwork, kind: str, wrt: str, output_shape: Sequence[int] | None, given: dict[str, Any]
) -> Sequence[int] | None:
    """The result's shape where the operands do not tell it (a parameter's JVP), checked against the operand's axes (VJPs)."""
    if kind == "jvp" and wrt in network.params and output_shape is None:
        # a parameter's tangent (e.g. a bias broadcast over n, o..) does not tell the output's shape
        return _output_shape(network, dict(given))
    if output_shape is not None and kind == "vjp":
        axes = _forward_axes(network, wrt)
        if axes is not None and len(output_shape) != len(axes):
            expected = "[" + ", ".join(" ".join(a) for a in axes) + "]"
            raise ValueError(
                f"the shape {tuple(output_shape)} given for {wrt} (x_shape= or {wrt}=) has {len(output_shape)} axes; "
                f"expected {len(axes)} axes {expected}"
            )
    return output_shape


def _derived_operands(network: LayerNetwork, needed: Sequence[str], given: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> Any:
    """``network.prepare`` where the diagram reads operands the forward derives (x̂), whose shapes join ``shapes``; else None."""
    if network.prepare is None or not any(name in network.derived for name in needed):
        return None
    derived = dict(given)
    derived.update(network.prepare(derived))
    shapes.update({name: tuple(derived[name].shape) for name in network.derived if name in derived})
    return network.prepare


def _missing_message(quantity: str, spec: Any, missing: list[str]) -> str:
    """What a call lacks, and how to give it (a spec's bias is on by default, as in torch)."""
    args = ", ".join(f"{name}=<tensor>" for name in missing)
    message = f"{quantity} of {spec} needs {args}"
    if "bias" in missing and getattr(spec, "bias", None) is True:
        message += f"; {type(spec).__name__} specs have a bias unless made with bias=False (like torch): pass bias=, or use bias=False"
    return message


def _forward_axes(network: LayerNetwork, name: str) -> tuple[tuple[str, ...], ...] | None:
    """Axis groups of operand ``name`` in the forward diagram (None where it enters only through derived operands)."""
    try:
        return network.operand_groups(name)
    except KeyError:
        return None


def evaluate(
    layer: Any, quantity: str, *, optimize: Any = "auto", simplify: bool = True, memory_limit: int | None = None, **operands: Any
) -> Any:
    """Any quantity by name with operands by name, e.g. ``evaluate(layer, "vjp_x1", grad_out=g, x2=b, weight=w)``."""
    return run_quantity(layer, quantity, operands, optimize=optimize, simplify=simplify, memory_limit=memory_limit)


def forward(
    layer: Any,
    x: Any,
    weight: Any = None,
    bias: Any = None,
    *,
    optimize: Any = "auto",
    simplify: bool = True,
    memory_limit: int | None = None,
    **operands: Any,
) -> Any:
    """The layer's output ``[N, C_out, *O]`` (``[N, *S, out_features]`` for dense layers).

    Other operands go by name in ``operands`` (``running_mean=``, ``running_var=`` of normalization layers).
    """
    tensors = {"x": x, "weight": weight, "bias": bias, **operands}
    return run_quantity(layer, "forward", tensors, optimize=optimize, simplify=simplify, memory_limit=memory_limit)


def vjp(
    layer: Any,
    wrt: str,
    grad_out: Any,
    *,
    x: Any = None,
    weight: Any = None,
    bias: Any = None,
    x_shape: Sequence[int] | None = None,
    optimize: Any = "auto",
    simplify: bool = True,
    memory_limit: int | None = None,
    **operands: Any,
) -> Any:
    """``grad_out`` (shaped like the output) pulled back to operand ``wrt``; the result is shaped like ``wrt``.

    ``vjp(spec, "x", grad_out, weight=w, x_shape=x.shape)`` (or ``x=x``), ``vjp(spec, "weight", grad_out, x=x)``,
    ``vjp(spec, "bias", grad_out)``. Other operands of custom layers go by name in ``operands``.
    """
    tensors = {"grad_out": grad_out, "x": x, "weight": weight, "bias": bias, **operands}
    _check_wrt_name(wrt)
    out_shape = tuple(x_shape) if (wrt == "x" and x_shape is not None) else None
    if tensors.get(wrt) is not None:
        out_shape = tuple(tensors[wrt].shape)
    # wrt's own value stays: only what the derived diagram uses is read (a linearization, or an operand
    # that occurs twice, needs the point the derivative is taken at)
    return run_quantity(
        layer, f"vjp_{wrt}", tensors, output_shape=out_shape, optimize=optimize, simplify=simplify, memory_limit=memory_limit
    )


def jvp(
    layer: Any,
    wrt: str,
    tangent: Any,
    *,
    x: Any = None,
    weight: Any = None,
    bias: Any = None,
    optimize: Any = "auto",
    simplify: bool = True,
    memory_limit: int | None = None,
    **operands: Any,
) -> Any:
    """The output's change when operand ``wrt`` moves along ``tangent`` (shaped like ``wrt``): the output's shape."""
    tensors = {"tangent": tangent, "x": x, "weight": weight, "bias": bias, **operands}
    _check_wrt_name(wrt)
    return run_quantity(layer, f"jvp_{wrt}", tensors, optimize=optimize, simplify=simplify, memory_limit=memory_limit)


def _output_shape(network: LayerNetwork, tensors: dict[str, Any]) -> tuple[int, ...] | None:
    """The forward's output shape as told by the given tensors (running ``prepare`` for derived operands), or None."""
    from tnderiv.plan.bind import bind_sizes

    given = {k: v for k, v in tensors.items() if v is not None}
    names = network.forward.operand_names
    try:
        if network.prepare is not None and any(n in network.derived and n not in given for n in names):
            given.update(network.prepare(given))
        bindings = bind_sizes(network.forward, {n: tuple(given[n].shape) for n in names if n in given})
    except ValueError:
        return None
    term = terms_of(network.forward)[0]
    return tuple(math.prod(bindings.value(term.sizes[leg]) for leg in axis) for axis in term.open_axis_groups)


def per_sample_grad(
    layer: Any,
    x: Any,
    grad_out: Any,
    *,
    params: Sequence[str] | None = None,
    optimize: Any = "auto",
    simplify: bool = True,
    memory_limit: int | None = None,
    **operands: Any,
) -> dict[str, Any]:
    """Each sample's gradient of every parameter: ``{"weight": [N, *weight.shape], "bias": [N, *bias.shape]}``."""
    tensors = {"x": x, "grad_out": grad_out, **operands}
    spec = spec_of(layer)
    network = spec.network({k: tuple(v.shape) for k, v in tensors.items() if hasattr(v, "shape")})
    names = network.params if params is None else tuple(params)
    for name in names:
        if name not in network.params:
            raise ValueError(f"unknown parameter {name!r}; this layer has {list(network.params)}")
    return {
        name: run_quantity(
            layer, f"per_sample_grad_{name}", tensors, optimize=optimize, simplify=simplify, memory_limit=memory_limit, spec=spec
        )
        for name in names
    }


def diagram(layer: Any, quantity: str, *, simplify: bool = True, shapes: Mapping[str, Sequence[int]] | None = None) -> Expression:
    """The diagram (or sum of diagrams) of ``quantity`` for ``layer``; ``shapes`` picks the rank of dense inputs."""
    network = _network(layer, {k: tuple(v) for k, v in (shapes or {}).items()})
    return derive(network, quantity, simplify)


def plan(
    target: Any,
    shapes: Mapping[str, Sequence[int]],
    *,
    quantity: str | None = None,
    optimize: Any = "auto",
    simplify: bool = True,
    memory_limit: int | None = None,
    dtype: Any = None,
    device: Any = "cpu",
) -> Plan:
    """The compiled, inspectable plan of a diagram (or of ``quantity`` of a layer) for operand ``shapes``.

    ``str(plan)`` lists the steps with leg names, kernels, FLOPs and sizes; ``plan(**operands)`` runs it,
    after checking that the operands have the shapes, dtype and device it was made for (and that it fits
    the memory budget). ``simplify=False`` plans the diagram as derived; ``memory_limit`` (bytes) bounds
    every intermediate.
    """
    import torch

    shapes = {k: tuple(int(s) for s in v) for k, v in shapes.items()}
    check = None
    if isinstance(target, (Diagram, DiagramSum)):
        if quantity is not None:
            raise ValueError("quantity= is only for layers; a diagram is its own quantity")
        expr = target
    else:
        if quantity is None:
            raise ValueError("plan(layer, shapes) needs quantity=, e.g. quantity='vjp_weight'")
        network = _network(target, shapes)
        parse_quantity(quantity, network)
        expr = derive(network, quantity, simplify)
        check = network.check_sizes
    like = torch.empty(0, dtype=dtype or torch.get_default_dtype(), device=device)
    if like.is_complex():
        raise TypeError(f"dtype={like.dtype}: {COMPLEX_UNSUPPORTED}")
    if not like.is_floating_point():
        raise TypeError(f"dtype={like.dtype}: expected a floating-point dtype")
    return get_plan(expr, shapes, like, optimize, check, simplify=simplify, memory_limit=memory_limit)


def _check_wrt_name(wrt: Any) -> None:
    if not isinstance(wrt, str):
        raise TypeError(f"wrt must be an operand name (str), got {type(wrt).__name__}")
