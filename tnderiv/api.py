"""Public entry points: check the user's tensors, derive the quantity's diagram, run its cached plan."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from tnderiv.calculus import derive, parse_quantity
from tnderiv.ir import Diagram, DiagramSum, Expression, terms_of
from tnderiv.layers.base import LayerNetwork, spec_of
from tnderiv.plan.backends import backend_of
from tnderiv.plan.bind import OUTPUT
from tnderiv.plan.compiled import Plan, get_plan

PARAMS = ("weight", "bias")
BUFFERS = ("running_mean", "running_var")  # statistics of normalization modules, used by their forward


def _module_params(layer: Any, tensors: dict[str, Any]) -> dict[str, Any]:
    """Fill missing ``weight``/``bias`` from a torch module's own parameters (detached)."""
    try:
        import torch.nn
    except ImportError:  # pragma: no cover
        return tensors
    if isinstance(layer, torch.nn.Module):
        for name in PARAMS + BUFFERS:
            # only tensors: some modules use these names for flags (nn.LSTM.bias is a bool)
            if tensors.get(name) is None and isinstance(getattr(layer, name, None), torch.Tensor):
                tensors[name] = getattr(layer, name).detach()
    return tensors


def check_tensors(tensors: Mapping[str, Any]) -> Any:
    """Raise unless all tensors are floating arrays of one backend, dtype and device; returns the first."""
    first_name, first = None, None
    for name, array in tensors.items():
        backend = backend_of(array, name)
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


def run_quantity(
    layer: Any,
    quantity: str,
    tensors: Mapping[str, Any],
    *,
    output_shape: Sequence[int] | None = None,
    optimize: Any = "auto",
) -> Any:
    """Evaluate ``quantity`` of ``layer`` with the given tensors (by operand name)."""
    spec = spec_of(layer)  # an unsupported module raises here, naming its type, before anything is read
    given = _module_params(layer, {k: v for k, v in tensors.items() if v is not None})
    like = check_tensors(given)
    shapes = {name: tuple(array.shape) for name, array in given.items()}
    rank_shapes = dict(shapes)
    if output_shape is not None and quantity.startswith("vjp_"):
        rank_shapes.setdefault(quantity[4:], tuple(output_shape))
    if "tangent" in shapes and quantity.startswith("jvp_"):
        # the tangent is shaped like the operand: it tells the rank of x (weight-sharing legs of Linear)
        rank_shapes.setdefault(quantity[4:], shapes["tangent"])
    network = _network(layer, rank_shapes)
    for name in PARAMS:
        if tensors.get(name) is not None and name not in network.operands:
            raise ValueError(f"{name}= was given but {spec} has no {name}; its operands are {list(network.operands)}")
    if output_shape is not None and quantity.startswith("vjp_"):
        wrt = quantity[4:]
        axes = _forward_axes(network, wrt)
        if axes is not None and len(output_shape) != len(axes):
            expected = "[" + ", ".join(" ".join(a) for a in axes) + "]"
            raise ValueError(
                f"the shape {tuple(output_shape)} given for {wrt} (x_shape= or {wrt}=) has {len(output_shape)} axes; "
                f"expected {len(axes)} axes {expected}"
            )
    expr = derive(network, quantity)
    needed = expr.operand_names
    if network.prepare is not None and any(name in network.derived for name in needed):
        given.update(network.prepare(given))
        shapes.update({name: tuple(given[name].shape) for name in network.derived if name in given})
    missing = [name for name in needed if name not in given]
    if missing:
        args = ", ".join(f"{name}=..." for name in missing)
        raise ValueError(f"{quantity} of {type(layer).__name__} needs {args}")
    if like is None:
        raise ValueError(f"{quantity} needs at least one tensor")
    plan_shapes = {name: shapes[name] for name in needed}
    if output_shape is not None:
        plan_shapes[OUTPUT] = tuple(int(s) for s in output_shape)
    plan = get_plan(expr, plan_shapes, like, optimize, network.check_sizes)
    return plan({name: given[name] for name in needed})


def _forward_axes(network: LayerNetwork, name: str) -> tuple[tuple[str, ...], ...] | None:
    """Axis groups of operand ``name`` in the forward diagram (None where it enters only through derived operands)."""
    try:
        return network.operand_groups(name)
    except KeyError:
        return None


def evaluate(layer: Any, quantity: str, *, optimize: Any = "auto", **operands: Any) -> Any:
    """Any quantity by name with operands by name, e.g. ``evaluate(layer, "vjp_x1", grad_out=g, x2=b, weight=w)``."""
    return run_quantity(layer, quantity, operands, optimize=optimize)


def forward(layer: Any, x: Any, weight: Any = None, bias: Any = None, *, optimize: Any = "auto", **operands: Any) -> Any:
    """The layer's output ``[N, C_out, *O]`` (``[N, *S, out_features]`` for dense layers).

    Other operands go by name in ``operands`` (``running_mean=``, ``running_var=`` of normalization layers).
    """
    return run_quantity(layer, "forward", {"x": x, "weight": weight, "bias": bias, **operands}, optimize=optimize)


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
    **operands: Any,
) -> Any:
    """``grad_out`` (shaped like the output) pulled back to operand ``wrt``; the result is shaped like ``wrt``.

    ``vjp(spec, "x", grad_out, weight=w, x_shape=x.shape)`` (or ``x=x``), ``vjp(spec, "weight", grad_out, x=x)``,
    ``vjp(spec, "bias", grad_out)``. Other operands of custom layers go by name in ``operands``.
    """
    tensors = {"grad_out": grad_out, "x": x, "weight": weight, "bias": bias, **operands}
    _check_wrt(layer, "vjp", wrt, tensors)
    out_shape = tuple(x_shape) if (wrt == "x" and x_shape is not None) else None
    if tensors.get(wrt) is not None:
        out_shape = tuple(tensors[wrt].shape)
    # wrt's own value stays: only what the derived diagram uses is read (a linearization, or an operand
    # that occurs twice, needs the point the derivative is taken at)
    return run_quantity(layer, f"vjp_{wrt}", tensors, output_shape=out_shape, optimize=optimize)


def jvp(
    layer: Any,
    wrt: str,
    tangent: Any,
    *,
    x: Any = None,
    weight: Any = None,
    bias: Any = None,
    optimize: Any = "auto",
    **operands: Any,
) -> Any:
    """The output's change when operand ``wrt`` moves along ``tangent`` (shaped like ``wrt``): the output's shape."""
    tensors = {"tangent": tangent, "x": x, "weight": weight, "bias": bias, **operands}
    network = _check_wrt(layer, "jvp", wrt, tensors)
    # a parameter's tangent (e.g. a bias broadcast over n, o..) does not tell the output's shape
    out_shape = _output_shape(network, _module_params(layer, dict(tensors))) if wrt in network.params else None
    return run_quantity(layer, f"jvp_{wrt}", tensors, output_shape=out_shape, optimize=optimize)


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
    **operands: Any,
) -> dict[str, Any]:
    """Each sample's gradient of every parameter: ``{"weight": [N, *weight.shape], "bias": [N, *bias.shape]}``."""
    tensors = {"x": x, "grad_out": grad_out, **operands}
    network = _network(layer, {k: tuple(v.shape) for k, v in tensors.items() if hasattr(v, "shape")})
    names = network.params if params is None else tuple(params)
    for name in names:
        if name not in network.params:
            raise ValueError(f"unknown parameter {name!r}; this layer has {list(network.params)}")
    return {name: run_quantity(layer, f"per_sample_grad_{name}", tensors, optimize=optimize) for name in names}


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
    dtype: Any = None,
    device: Any = "cpu",
) -> Plan:
    """The compiled, inspectable plan of a diagram (or of ``quantity`` of a layer) for operand ``shapes``.

    ``str(plan)`` lists the steps with leg names, FLOPs and sizes; ``plan(**operands)`` runs it.
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
        expr = derive(network, quantity)
        check = network.check_sizes
    like = torch.empty(0, dtype=dtype or torch.get_default_dtype(), device=device)
    return get_plan(expr, shapes, like, optimize, check)


def _check_wrt(layer: Any, kind: str, wrt: str, tensors: Mapping[str, Any]) -> LayerNetwork:
    if not isinstance(wrt, str):
        raise TypeError(f"wrt must be an operand name (str), got {type(wrt).__name__}")
    shapes = {k: tuple(v.shape) for k, v in tensors.items() if hasattr(v, "shape")}
    network = _network(layer, shapes)
    if wrt not in network.operands:
        raise ValueError(f"unknown operand {wrt!r} for {kind}; this layer has {list(network.operands)}")
    return network
