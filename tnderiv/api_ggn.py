"""Public entry points for loss-Hessian square roots, GGN blocks/diagonals/Gram matrices and gradient statistics."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from tnderiv.api import _module_params, _network, cached_call, check_tensors, run_quantity
from tnderiv.calculus import derive
from tnderiv.calculus import ggn as _ggn  # noqa: F401  (registers the GGN quantities)
from tnderiv.calculus.gram import Glued, glued_ggn_diag, glued_statistic
from tnderiv.calculus.losses import check_loss_inputs, compute_sqrt, sqrt_bytes
from tnderiv.calculus.stats import STATISTICS, get_statistic
from tnderiv.ir import Expression
from tnderiv.plan.cache import register_cache
from tnderiv.plan.compiled import Plan
from tnderiv.plan.empty import empty_value, filled, has_empty
from tnderiv.plan.gram import GramPlan, Strategy, get_gram_plan
from tnderiv.plan.keys import PlanOptions, call_key
from tnderiv.plan.memory import SET_BUDGET, SMALLER_BATCH, check_fits, needs_check

GGNKind = Literal["block", "diag", "gram"]
GGN_KINDS: tuple[str, ...] = get_args(GGNKind)
STRATEGIES: tuple[str, ...] = get_args(Strategy)
DEFAULT_STATS = ("sum_grad_squared", "batch_l2", "variance", "batch_dot")


def ggn(
    layer: Any,
    x: Any,
    sqrt_out: Any,
    *,
    params: str | Sequence[str] | None = None,
    kind: GGNKind = "block",
    per_sample: bool = False,
    optimize: Any = "auto",
    simplify: bool = True,
    memory_limit: int | None = None,
    param: str | None = None,
    **operands: Any,
) -> Any:
    """GGN quantities of a parameter from a loss-Hessian square root ``sqrt_out`` ``[M, N, *output]``.

    ``params``: one parameter's name (``None``: ``"weight"``) → its tensor; a sequence of names → a dict
    ``{name: tensor}``. ``kind="block"``: ``[*param.shape, *param.shape]`` (``[N, *param.shape, *param.shape]``
    with ``per_sample=True``); ``"diag"``: ``[*param.shape]`` (``[N, *param.shape]``), the glued network or the
    squared columns as the planner scores them; ``"gram"``: the Gram matrix ``[M, N, M, N]`` of the
    backpropagated columns (no per-sample form). Other operands of custom layers go by name in ``operands``.
    ``memory_limit`` (bytes) splits intermediates over the batch; a result larger than the memory budget
    raises ``MemoryBudgetError`` before anything runs. ``param=`` is the deprecated spelling of ``params=``.
    """
    if not isinstance(kind, str) or kind not in GGN_KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {list(GGN_KINDS)}")
    if not isinstance(per_sample, bool):
        raise TypeError(f"per_sample={per_sample!r}: expected a bool")
    if per_sample and kind == "gram":
        raise ValueError("per_sample=True is not defined for kind='gram' (the Gram matrix already has the sample legs [M, N, M, N])")
    if param is not None:
        if params is not None:
            raise TypeError("ggn() got both param= and params=; pass params= only")
        warnings.warn(f"ggn(param={param!r}) is deprecated; pass params={param!r}", DeprecationWarning, stacklevel=2)
        params = param
    tensors = {"x": x, "sqrt_out": sqrt_out, **operands}
    network = _network(layer, {k: tuple(v.shape) for k, v in tensors.items() if hasattr(v, "shape")})
    if params is None or isinstance(params, str):
        names, single = ("weight" if params is None else params,), True
    elif isinstance(params, Sequence):
        names, single = tuple(params), False
    else:
        raise TypeError(f"params={params!r}: expected a parameter name or a sequence of them, e.g. ['weight', 'bias']")
    for name in names:
        _check_param(name, network.params)
    glued = None  # a diagonal runs through its glued form (plan.gram): the tensors are read and checked once
    if kind == "diag" and simplify:
        given = _module_params(layer, {k: v for k, v in tensors.items() if v is not None})
        like = check_tensors(given)
        if like is not None and not has_empty({k: tuple(v.shape) for k, v in given.items()}):
            glued = (given, like)
    out = {}
    for name in names:
        if glued is not None:
            out[name] = _ggn_diag(network, *glued, name, per_sample, optimize, memory_limit)
        else:
            quantity = f"{'per_sample_' if per_sample else ''}ggn_{kind}_{name}"
            out[name] = run_quantity(layer, quantity, tensors, optimize=optimize, simplify=simplify, memory_limit=memory_limit)
    return out[names[0]] if single else out


def _ggn_diag(network: Any, given: dict[str, Any], like: Any, param: str, per_sample: bool, optimize: Any, memory_limit: int | None) -> Any:
    """The GGN diagonal as a glued quantity: the glued network or the columns then ``Σ V²``, as the planner scores them."""

    def build() -> tuple[GramPlan, tuple[str, ...]]:
        form = glued_ggn_diag(network, param, per_sample)
        needed = tuple(dict.fromkeys((*form.glued.operand_names, *form.source.operand_names)))
        return _gram_plan(form, _inputs(network, needed, given), like, PlanOptions(optimize, True, memory_limit), network, "auto"), needed

    plan, needed = cached_call(call_key(("ggn diag", network, param, per_sample), given, optimize, memory_limit), build)
    plan.check_memory(f"the GGN diagonal of {param}")
    return plan.run(_inputs(network, needed, given))[0]


def loss_hessian_sqrt(
    loss: str,
    output: Any,
    target: Any,
    *,
    mc_samples: int = 0,
    reduction: str = "mean",
    generator: Any = None,
) -> Any:
    """``S`` of shape ``[M, N, *output.shape[1:]]`` with ``Σ_m S[m, n] S[m, n]ᵀ`` = the loss Hessian of sample ``n``.

    ``mc_samples=0``: exact (``M = ∏ output.shape[1:]`` columns, one per output entry); ``mc_samples > 0``:
    an unbiased Monte-Carlo estimate with ``M = mc_samples`` drawn with ``generator``. ``reduction``
    scales as torch's loss does. The size is estimated first: ``MemoryBudgetError`` if ``S`` would not fit
    the memory budget (``tnderiv.set_memory_budget``). ``N = 0`` gives an empty ``[M, 0, *F]``.
    """
    spec = check_loss_inputs(loss, output, target, mc_samples, reduction, generator)
    needed, shape = sqrt_bytes(output, mc_samples)
    if needs_check(needed):
        options = [] if mc_samples else [f"mc_samples=M Monte-Carlo columns ([M, {output.shape[0]}, ...]) instead of {shape[0]:,} exact ones"]
        what = f"S {list(shape)} and one temporary of its size"
        check_fits(f"loss_hessian_sqrt({loss!r})", needed, output.device, what, [*options, SMALLER_BATCH, SET_BUDGET])
    return compute_sqrt(spec, output, target, mc_samples, reduction, generator)


# ----- gradient statistics -------------------------------------------------------------------------
@dataclass(frozen=True)
class StatChoice:
    """How one statistic of one parameter was computed.

    ``strategy``: ``"glued"`` (the per-sample network contracted with its copy, nothing per-sample
    stored), ``"materialize"`` (per-sample gradients first, then the statistic on them) or ``"empty"``
    (an empty batch: nothing to compute; sums are 0, means ``nan``).
    ``glued_cost`` / ``materialize_cost``: the planner's score of each way on its own (see
    ``plan_cost``; materialize includes computing the per-sample gradients), ``*_flops`` their FLOPs;
    ``None`` where that way was not planned. ``plans``: the plans that ran (materialize: the
    per-sample-gradient plan, then the statistic's).
    """

    stat: str
    param: str
    strategy: Literal["glued", "materialize", "empty"]
    glued_cost: float | None = None
    materialize_cost: float | None = None
    glued_flops: int | None = None
    materialize_flops: int | None = None
    plans: tuple[Plan, ...] = ()

    def __repr__(self) -> str:
        return (
            f"StatChoice({self.stat}/{self.param}: {self.strategy}, glued cost {_fmt(self.glued_cost)}, "
            f"materialize cost {_fmt(self.materialize_cost)}, {len(self.plans)} plans)"
        )


@dataclass(frozen=True, eq=False)
class GradStats(Mapping[str, Mapping[str, Any]]):
    """``stats[stat][param]`` → tensor (a mapping), plus how each was computed: ``choices[stat][param]``, ``report()``."""

    tensors: Mapping[str, Mapping[str, Any]]
    choices: Mapping[str, Mapping[str, StatChoice]]

    def __repr__(self) -> str:
        parts = []
        for stat, per in self.tensors.items():
            shapes = ", ".join(f"{param} {list(t.shape)}" for param, t in per.items())
            parts.append(f"{stat}: {shapes}")
        return "GradStats(" + "; ".join(parts) + ")"

    def __getitem__(self, stat: str) -> Mapping[str, Any]:
        try:
            return self.tensors[stat]
        except KeyError:
            raise KeyError(f"statistic {stat!r} was not computed; computed: {sorted(self.tensors)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def strategy(self, stat: str, param: str = "weight") -> str:
        """``"glued"`` or ``"materialize"``."""
        return self.choices[stat][param].strategy

    def report(self, *, plans: bool = False) -> str:
        """One line per statistic and parameter: the strategy and both FLOP counts (``plans=True``: the plans too)."""
        lines = []
        for stat, per_param in self.choices.items():
            for param, c in per_param.items():
                lines.append(
                    f"{stat}[{param}]: {c.strategy} (glued cost={_fmt(c.glued_cost)} flops={_fmt(c.glued_flops)}; "
                    f"materialize cost={_fmt(c.materialize_cost)} flops={_fmt(c.materialize_flops)})"
                )
                if plans:
                    lines.extend("    " + line for p in c.plans for line in str(p).splitlines())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()


def grad_stats(
    layer: Any,
    x: Any,
    grad_out: Any,
    stats: Sequence[str] = DEFAULT_STATS,
    *,
    params: Sequence[str] | None = None,
    strategy: Strategy = "auto",
    optimize: Any = "auto",
    simplify: bool = True,
    memory_limit: int | None = None,
    **operands: Any,
) -> GradStats:
    """Quadratic statistics of the per-sample gradients ``g[n] = ∂(Σ_out grad_out[n]·y[n])/∂param`` (``Σ_n g[n] = ∇``).

    ``sum_grad_squared`` ``[*param]``, ``batch_l2`` ``[N]``, ``variance`` ``[*param]``
    (``(1/N)Σ g² − ((1/N)Σ g)²``), ``batch_dot`` ``[N, N]``. ``strategy="auto"`` picks, per parameter,
    the cheaper of contracting the glued network and materializing ``g`` (``plan_cost``); the result's
    ``choices`` / ``report()`` show the choice and both costs. ``simplify=False`` skips the plan-stage rewrites;
    ``memory_limit`` (bytes) splits intermediates over the batch; every plan is checked against the memory
    budget before any runs.
    """
    names = _check_stats(stats)
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r}: expected one of {list(STRATEGIES)}")
    tensors = {"x": x, "grad_out": grad_out, **operands}
    given = _module_params(layer, {k: v for k, v in tensors.items() if v is not None})
    like = check_tensors(given)
    if like is None:
        raise ValueError("grad_stats needs tensors")
    shapes = {k: tuple(v.shape) for k, v in given.items()}
    network = _network(layer, shapes)
    if isinstance(params, str):
        raise TypeError(f"params={params!r}: expected a sequence of parameter names, e.g. [{params!r}]")
    chosen = network.params if params is None else tuple(params)
    for name in chosen:
        _check_param(name, network.params)

    values: dict[str, dict[str, Any]] = {s: {} for s in names}
    choices: dict[str, dict[str, StatChoice]] = {s: {} for s in names}
    if has_empty(shapes):
        return _empty_stats(network, names, chosen, given, like)
    forced = None if strategy == "auto" else strategy
    opts = PlanOptions(optimize, simplify, memory_limit)
    for param in chosen:
        key = call_key(("grad_stats", network, names, param, forced), given, optimize, *opts.key())
        per = cached_call(key, lambda param=param: _plan_param(network, names, param, given, like, opts, forced))
        inputs = _inputs(network, per.needed, given)
        for stat in names:  # every plan that will run is checked against the memory budget before any runs
            per.plans[stat].check_memory(f"{stat} of {param}")
        half = None
        for stat in names:
            plan = per.plans[stat]
            if plan.strategy == "materialize":
                if half is None:  # the per-sample gradients once, shared by every statistic that materializes them
                    half = plan.half.execute(inputs)  # type: ignore[union-attr]
                values[stat][param] = plan.run_gram(half)
            else:
                values[stat][param] = plan.run(inputs)[0]
            choices[stat][param] = per.choices[stat]
    return GradStats(values, choices)


@dataclass(frozen=True)
class _ParamStats:
    """The statistics of one parameter, planned: the operands they read, a plan and a choice per statistic."""

    needed: tuple[str, ...]
    plans: Mapping[str, GramPlan]
    choices: Mapping[str, StatChoice]


def _plan_param(
    network: Any, names: tuple[str, ...], param: str, given: dict[str, Any], like: Any, opts: PlanOptions, forced: str | None
) -> _ParamStats:
    """Plan every statistic of ``param`` both ways (unless forced) and choose jointly (the per-sample gradients are shared)."""
    forms = {stat: glued_statistic(network, stat, param) for stat in names}
    needed = tuple(dict.fromkeys(name for form in forms.values() for e in (form.glued, form.source) for name in e.operand_names))
    inputs = _inputs(network, needed, given)
    planned = {stat: _gram_plan(form, inputs, like, opts, network, forced or "auto") for stat, form in forms.items()}
    use = _choose(names, forced, planned)
    plans = {
        stat: plan if plan.strategy == use[stat] else _gram_plan(forms[stat], inputs, like, opts, network, use[stat])
        for stat, plan in planned.items()
    }
    choices = {}
    for stat, plan in plans.items():
        scores, flops = planned[stat].scores | plan.scores, planned[stat].flops_of | plan.flops_of
        choices[stat] = StatChoice(
            stat=stat,
            param=param,
            strategy=plan.strategy,  # type: ignore[arg-type]
            glued_cost=scores.get("glued"),
            materialize_cost=scores.get("materialize"),
            glued_flops=flops.get("glued"),
            materialize_flops=flops.get("materialize"),
            plans=plan.plans,
        )
    return _ParamStats(needed, plans, choices)


def _gram_plan(form: Glued, inputs: Mapping[str, Any], like: Any, opts: PlanOptions, network: Any, strategy: str) -> GramPlan:
    """The glued quantity's plan for these inputs."""
    shapes = {name: tuple(t.shape) for name, t in inputs.items()}
    return get_gram_plan(form, shapes, like, opts.optimize, network.check_sizes, strategy=strategy, **opts.planning())  # type: ignore[arg-type]


def _empty_stats(network: Any, names: tuple[str, ...], chosen: tuple[str, ...], given: dict[str, Any], like: Any) -> GradStats:
    """Statistics of an empty batch (or empty weight-sharing axis): sums are 0, means over no sample ``nan``."""
    values: dict[str, dict[str, Any]] = {s: {} for s in names}
    choices: dict[str, dict[str, StatChoice]] = {s: {} for s in names}
    for param in chosen:
        for stat in names:
            expr = derive(network, f"{stat}_{param}")
            shape, fill = empty_value(expr, _shapes(expr, _inputs(network, expr.operand_names, given)), network.check_sizes)
            values[stat][param] = filled(like, shape, fill)
            choices[stat][param] = StatChoice(stat=stat, param=param, strategy="empty")
    return GradStats(values, choices)


def _choose(names: tuple[str, ...], forced: str | None, plans: Mapping[str, GramPlan]) -> dict[str, str]:
    """Per statistic, glued or materialize; the per-sample gradients are computed at most once and shared by
    every statistic that materializes them, so the choice is joint (each plan alone would count them again)."""
    if forced is not None:
        return dict.fromkeys(names, forced)
    if any("glued" not in plans[s].scores or "materialize" not in plans[s].scores for s in names):
        return {s: plans[s].strategy for s in names}
    g = {s: plans[s].scores["glued"] for s in names}
    m = {s: plans[s].scores["materialize"] - plans[s].scores["half"] for s in names}
    half = plans[names[0]].scores["half"]
    if sum(g.values()) <= half + sum(min(g[s], m[s]) for s in names):
        return dict.fromkeys(names, "glued")
    return {s: "glued" if g[s] < m[s] else "materialize" for s in names}


def plan_cost(plan: Plan) -> float:
    """What the planner ranks contraction orders by: its structure-aware score (FLOPs plus data moved)."""
    return float(plan.score)


register_cache("statistics", "statistics of per-sample gradients as glued quantities (glued and materialized forms)", lambda: glued_statistic)


def _inputs(network: Any, needed: Sequence[str], given: dict[str, Any]) -> dict[str, Any]:
    """The tensors named ``needed`` (derived operands prepared), raising naming missing ones."""
    if network.prepare is not None and any(name in network.derived for name in needed):
        given = {**given, **network.prepare(given)}
    missing = [name for name in needed if name not in given]
    if missing:
        raise ValueError(f"grad_stats needs {', '.join(f'{name}=...' for name in missing)}")
    return {name: given[name] for name in needed}


def _shapes(expr: Expression, inputs: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(inputs[name].shape) for name in expr.operand_names}


def _check_stats(stats: Any) -> tuple[str, ...]:
    if isinstance(stats, str) or not isinstance(stats, Sequence):
        raise TypeError(f"stats={stats!r}: expected a sequence of statistic names from {sorted(STATISTICS)}")
    names = tuple(stats)
    if not names:
        raise ValueError(f"stats is empty; choose from {sorted(STATISTICS)}")
    for name in names:
        get_statistic(name)
    if len(set(names)) != len(names):
        raise ValueError(f"stats={list(names)} repeats a statistic")
    return names


def _check_param(param: Any, params: Sequence[str]) -> None:
    if not isinstance(param, str) or param not in params:
        raise ValueError(f"param={param!r}: unknown parameter; this layer has {list(params)}")


def _fmt(value: float | None) -> str:
    return "not planned" if value is None else f"{value:,.0f}"


__all__ = ["DEFAULT_STATS", "GGN_KINDS", "STRATEGIES", "GradStats", "StatChoice", "ggn", "grad_stats", "loss_hessian_sqrt", "plan_cost"]
