"""Every requested quantity of every selected parameter, for one batch that has been run through the model.

Each parameter is computed on one of two paths:
- *derived*: a parameter of an engine layer called once — the layer's derived diagrams (glued statistics,
  glued GGN, KFAC) run on its recorded input, output gradient and pulled-back columns;
- *materialized*: every other parameter (fallback modules, tied weights, modules called twice) — the
  per-sample gradients and columns of each use are summed, and the quantities are reductions of them.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

import tnderiv.api as api
import tnderiv.api_ggn as api_ggn
import tnderiv.api_kfac as api_kfac
from tnderiv.model.columns import Pass, pull_back
from tnderiv.model.fallback import Fallback
from tnderiv.model.quantities import GGN, PER_SAMPLE
from tnderiv.model.reduce import GGN_KINDS, STATS, ExactCurvature, exact_curvature, ggn_of, stat_of
from tnderiv.model.units import Owner

Key = tuple[str, int]  # (owner module name, use index)


@dataclass(frozen=True)
class Options:
    """The settings of a ``Curvature`` that shape one batch's computation."""

    fisher: str
    approx: str
    loss_average: str | None
    kfac_bias: str
    mc_samples: int
    generator: torch.Generator | None
    memory_limit: int | None
    max_block: int


@dataclass
class Row:
    """One line of ``report()``: a module, how it was computed, and the time it took."""

    module: str
    type: str
    path: str  # "derived" | "materialized (fallback)" | "materialized (tied or repeated)"
    params: tuple[str, ...]
    seconds: float = 0.0
    strategies: dict[str, str] = field(default_factory=dict)


@dataclass
class BatchValues:
    """Results of one batch: ``values[canonical param][quantity]``, ``curvature[module]`` (KFAC or exact), the Gram."""

    values: dict[str, dict[str, Any]]
    curvature: dict[str, Any]
    gram: torch.Tensor | None
    rows: list[Row]
    positions: dict[str, int] = field(default_factory=dict)  # weight-sharing positions behind each KFAC's A (expand)


def _stat_dtype(t: torch.Tensor) -> torch.Tensor:
    """Half-precision recordings (under autocast) are accumulated in float32."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


@dataclass
class Partition:
    """Which parameters of a batch run on the derived path and which are materialized, with each parameter's
    uses ``contribs[canonical] = [(owner, use index, local name)]`` and the fallbacks built so far."""

    run: Pass
    contribs: dict[str, list[tuple[Owner, int, str]]]
    derived: list[Owner]
    materialized: list[str]
    fallbacks: dict[Key, Fallback] = field(default_factory=dict)

    def fallback(self, owner: Owner, i: int) -> Fallback:
        """``torch.func`` on call ``i`` of ``owner`` (built once)."""
        if (owner.name, i) not in self.fallbacks:
            use = self.run.uses[owner.name][i]
            self.fallbacks[(owner.name, i)] = Fallback(owner.name, owner.module, use, tuple(owner.local), self.run.n)
        return self.fallbacks[(owner.name, i)]

    def per_sample_grads(self, canonical: str, timing: Mapping[str, Row] | None = None) -> torch.Tensor:
        """The per-sample gradients ``[N, *p]`` of a parameter, summed over its uses."""
        return self._summed(canonical, lambda owner, i, local: _materialized_psg(owner, i, local, self.run, self.fallback), timing)

    def columns(self, canonical: str, cols: Mapping[Key, list[Any]], timing: Mapping[str, Row] | None = None) -> torch.Tensor:
        """The backpropagated columns ``[M, N, *p]`` of a parameter, summed over its uses."""
        return self._summed(canonical, lambda owner, i, local: _materialized_cols(owner, i, local, self.run, cols, self.fallback), timing)

    def _summed(self, canonical: str, one: Callable[[Owner, int, str], torch.Tensor], timing: Mapping[str, Row] | None) -> torch.Tensor:
        total = None
        for owner, i, local in self.contribs[canonical]:
            if timing is None:
                value = one(owner, i, local)
            else:
                with _timed(timing[owner.name]):
                    value = one(owner, i, local)
            total = value if total is None else total + value
        return total


def partition(run: Pass, owners: Sequence[Owner]) -> Partition:
    """Derived: engine layers called once whose parameters have no other use; everything else is materialized."""
    contribs: dict[str, list[tuple[Owner, int, str]]] = {}
    for owner in owners:
        for i, _ in enumerate(run.uses[owner.name]):
            for local, canonical in owner.local.items():
                contribs.setdefault(canonical, []).append((owner, i, local))
    derived = [o for o in owners if o.engine and len(run.uses[o.name]) == 1 and all(len(contribs[c]) == 1 for c in o.local.values())]
    names = {o.name for o in derived}
    materialized = [c for c, parts in contribs.items() if any(o.name not in names for o, _, _ in parts)]
    return Partition(run, contribs, derived, materialized)


def compute_batch(run: Pass, owners: Sequence[Owner], names: Sequence[str], sqrt: torch.Tensor | None, opts: Options) -> BatchValues:
    """All of ``names`` for all owners' parameters of the batch in ``run``."""
    part = partition(run, owners)
    derived_names = {o.name for o in part.derived}
    values: dict[str, dict[str, Any]] = {c: {} for c in part.contribs}
    curvature: dict[str, Any] = {}
    rows = [_row(o, derived_names) for o in owners]
    timing = {r.module: r for r in rows}

    # ----- first-order per-sample quantities ----------------------------------------------------------
    per_sample = [q for q in names if q in PER_SAMPLE]
    if per_sample:
        for owner in part.derived:
            with _timed(timing[owner.name]):
                _derived_per_sample(owner, run, per_sample, values, timing[owner.name])
        for canonical in part.materialized:
            _from_psg(part.per_sample_grads(canonical, timing), per_sample, values[canonical])

    # ----- quantities of loss-Hessian square-root columns -------------------------------------------
    column_names = [q for q in names if q in GGN or q == "kfac"]
    gram = None
    if column_names:
        gram = _columns(part, owners, column_names, sqrt, opts, values, curvature, timing)
    return BatchValues(values, curvature, gram, rows, kfac_positions(run, curvature, opts.approx))


def _row(owner: Owner, derived: set[str]) -> Row:
    if owner.name in derived:
        path = "derived"
    elif owner.engine:
        path = "materialized (tied or repeated)"
    else:
        path = "materialized (fallback: torch.func)"
    return Row(owner.name, type(owner.module).__name__, path, tuple(owner.local.values()))


class _timed:
    def __init__(self, row: Row) -> None:
        self.row = row

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.row.seconds += time.perf_counter() - self.start


def _layer_x(run: Pass, owner: Owner, i: int) -> torch.Tensor:
    """The input ``x`` of call ``i`` of an engine layer."""
    return _stat_dtype(run.uses[owner.name][i].x.detach())


def _layer_inputs(run: Pass, owner: Owner, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, grad_out)`` of call ``i`` of an engine layer (zeros for an output the loss does not depend on)."""
    use = run.uses[owner.name][i]
    g = run.grads_out[(owner.name, i)][0]
    x = _layer_x(run, owner, i)
    g = torch.zeros_like(x.new_empty(use.outputs[0].shape)) if g is None else _stat_dtype(g)
    return x, g


def _derived_per_sample(owner: Owner, run: Pass, names: Sequence[str], values: dict[str, dict[str, Any]], row: Row) -> None:
    x, g = _layer_inputs(run, owner, 0)
    params = tuple(owner.local)
    if "per_sample_grad" in names:
        for local, value in api.per_sample_grad(owner.module, x, g, params=params).items():
            values[owner.local[local]]["per_sample_grad"] = value
    stats = [s for s in names if s in STATS]
    if stats:
        result = api_ggn.grad_stats(owner.module, x, g, stats, params=params)
        for stat in stats:
            for local in params:
                values[owner.local[local]][stat] = result[stat][local]
                row.strategies[stat] = result.strategy(stat, local)


def _materialized_psg(owner: Owner, i: int, local: str, run: Pass, fallback: Any) -> torch.Tensor:
    if owner.engine:
        x, g = _layer_inputs(run, owner, i)
        return api.per_sample_grad(owner.module, x, g, params=(local,))[local]
    return fallback(owner, i).per_sample([None if g is None else _stat_dtype(g) for g in run.grads_out[(owner.name, i)]])[local]


def _from_psg(psg: torch.Tensor, names: Sequence[str], into: dict[str, Any]) -> None:
    if "per_sample_grad" in names:
        into["per_sample_grad"] = psg
    for stat in names:
        if stat in STATS:
            into[stat] = stat_of(psg, stat)


def _column_chunks(run: Pass, owners: Sequence[Owner], sqrt: torch.Tensor | None, opts: Options) -> Any:
    """Chunks of columns at every owner's outputs: pulled back from ``sqrt``, or the empirical ``√D·g``."""
    keys = [(o.name, i) for o in owners for i in range(len(run.uses[o.name]))]
    if sqrt is None:  # empirical Fisher: the output gradients of the reduced loss, rescaled to the loss' scale
        scale = math.sqrt(run.divisor)
        yield {k: [None if g is None else (_stat_dtype(g) * scale).unsqueeze(0) for g in run.grads_out[k]] for k in keys}
        return
    per_column = sum(
        math.prod(t.shape) * t.element_size() for o in owners for use in run.uses[o.name] for t in use.outputs
    )
    chunk = sqrt.shape[0]
    if opts.memory_limit is not None:
        chunk = max(1, min(chunk, opts.memory_limit // max(per_column, 1)))
    for part in pull_back(run, sqrt, keys, chunk):
        yield {k: [None if c is None else _stat_dtype(c) for c in cols] for k, cols in part.items()}


def _columns(
    part: Partition,
    owners: Sequence[Owner],
    names: Sequence[str],
    sqrt: torch.Tensor | None,
    opts: Options,
    values: dict[str, dict[str, Any]],
    curvature: dict[str, Any],
    timing: dict[str, Row],
) -> torch.Tensor | None:
    """The GGN quantities and KFAC (or exact curvature) of every parameter, chunk of columns by chunk; the Gram."""
    run, derived, materialized, contribs = part.run, part.derived, part.materialized, part.contribs
    ggn_names = [q for q in names if q in GGN]
    if opts.fisher == "forward-only" and "kfac" in names and materialized:
        owner = contribs[materialized[0]][0][0]
        raise ValueError(
            f"fisher='forward-only' (G = I) is defined for KFAC layers only; {materialized[0]} of module "
            f"{owner.name or '(model)'} ({type(owner.module).__name__}) has no KFAC (a fallback, tied or repeated "
            "parameter): exclude it with params= or use another fisher"
        )
    gram = None
    kfacs: dict[str, list[Any]] = {}
    exact_cols: dict[str, dict[str, torch.Tensor]] = {}
    chunks = 0
    for cols in _column_chunks(run, owners, sqrt, opts):
        chunks += 1
        if chunks > 1 and "ggn_gram" in ggn_names:
            raise ValueError("ggn_gram pairs every column with every other: it cannot be chunked; drop memory_limit= or ggn_gram")
        for owner in derived:
            x, _ = _layer_inputs(run, owner, 0)
            s = cols[(owner.name, 0)][0]
            if s is None:
                s = x.new_zeros(1, *run.uses[owner.name][0].outputs[0].shape)
            with _timed(timing[owner.name]):
                for local, canonical in owner.local.items():
                    for q in ggn_names:
                        value = _ggn_derived(owner, x, s, local, q)
                        _add(values[canonical], q, value)
                        if q == "ggn_gram":
                            gram = value if gram is None else gram + value
                if "kfac" in names:
                    kfacs.setdefault(owner.name, []).append(_kfac_derived(owner, run, x, s, opts))
        for canonical in materialized:
            v = part.columns(canonical, cols, timing)
            for q in ggn_names:
                value = ggn_of(v, GGN_KINDS[q])
                _add(values[canonical], q, value)
                if q == "ggn_gram":
                    gram = value if gram is None else gram + value
            if "kfac" in names:
                module = canonical.rpartition(".")[0]
                exact_cols.setdefault(module, {})[canonical[len(module) :].lstrip(".")] = v
        if "kfac" in names:
            for module, group in exact_cols.items():
                exact = exact_curvature(group, opts.max_block)
                curvature[module] = exact if module not in curvature else _add_exact(curvature[module], exact)
            exact_cols.clear()
    for name, parts in kfacs.items():
        curvature[name] = _sum_kfac(parts)
    return gram


def kfac_positions(run: Pass, curvature: dict[str, Any], approx: str) -> dict[str, int]:
    """Rows per sample behind each KFAC's input factor: the output's weight-sharing positions (expand), else 1."""
    out = {}
    for name, k in curvature.items():
        if isinstance(k, ExactCurvature) or approx != "expand":
            out[name] = 1
            continue
        features = k.G.shape[0] * k.G.shape[-1]
        out[name] = run.uses[name][0].outputs[0].numel() // max(run.n * features, 1)
    return out


def _add(into: dict[str, Any], q: str, value: torch.Tensor) -> None:
    into[q] = value if q not in into else into[q] + value


def _add_exact(a: ExactCurvature, b: ExactCurvature) -> ExactCurvature:
    return ExactCurvature(a.kind, a.names, a.shapes, a.matrix + b.matrix)


def _ggn_derived(owner: Owner, x: torch.Tensor, s: torch.Tensor, local: str, q: str) -> torch.Tensor:
    """The layer's own GGN quantity; a diagonal runs glued or as squared columns, as the planner scores them (plan.gram)."""
    kind = {"ggn_diag": "diag", "per_sample_ggn_diag": "diag", "ggn_block": "block", "ggn_gram": "gram"}[q]
    return api_ggn.ggn(owner.module, x, s, params=local, kind=kind, per_sample=q == "per_sample_ggn_diag")


def _tiled_psg(owner: Owner, x: torch.Tensor, s: torch.Tensor, local: str) -> torch.Tensor:
    """The columns ``[M, N, *p]``: per-sample gradients of ``x`` repeated for each of the ``M`` columns ``s``."""
    m, n = s.shape[0], s.shape[1]
    tiled = x.unsqueeze(0).expand(m, *x.shape).reshape(m * n, *x.shape[1:])
    psg = api.per_sample_grad(owner.module, tiled, s.reshape(m * n, *s.shape[2:]), params=(local,))[local]
    return psg.reshape(m, n, *psg.shape[1:])


def _kfac_derived(owner: Owner, run: Pass, x: torch.Tensor, s: torch.Tensor, opts: Options) -> Any:
    # a bias left out by params=: the weight's own block (with bias_mode="append" it would be joined to the bias)
    bias = opts.kfac_bias if set(owner.local) >= set(_own_params(owner)) else "separate"
    if opts.fisher in ("empirical", "forward-only"):
        g = s[0] / math.sqrt(run.divisor)  # back to the output gradient: loss_average rescales it
        k = api_kfac.kfac(owner.module, x, g, approx=opts.approx, bias_mode=bias, loss_average=opts.loss_average)
        if opts.fisher == "forward-only":
            eye = torch.eye(k.G.shape[-1], dtype=k.G.dtype, device=k.G.device).expand_as(k.G).clone()
            k = rebuild_kfac(k, G=eye, G_bias=None if k.G_bias is None else eye.clone())
        return _only_selected(k, owner)
    return _only_selected(api_kfac.kfac(owner.module, x, s, approx=opts.approx, bias_mode=bias, loss_average=opts.loss_average), owner)


def _own_params(owner: Owner) -> list[str]:
    return [n for n in ("weight", "bias") if owner.module._parameters.get(n) is not None]


def _only_selected(k: Any, owner: Owner) -> Any:
    """The KFAC of the selected parameters: the blocks of a parameter that ``params=`` left out are dropped."""
    keep = set(owner.local)
    if all(p.name in keep for p in k.params):
        return k
    blocks = tuple(b for b in k.blocks if all(layout.name in keep for layout in b.layouts))
    params = tuple(p for p in k.params if p.name in keep)
    a_bias, g_bias = (k.A_bias, k.G_bias) if "bias" in keep else (None, None)
    return dataclasses.replace(k, blocks=blocks, params=params, A_bias=a_bias, G_bias=g_bias)


def _sum_kfac(parts: list[Any]) -> Any:
    """KFAC from chunks of columns: one ``A``, the output factors summed."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    G = sum(p.G for p in parts)
    G_bias = None if first.G_bias is None else sum(p.G_bias for p in parts)
    return rebuild_kfac(first, G=G, G_bias=G_bias)


def rebuild_kfac(k: Any, **factors: Any) -> Any:
    """``k`` with some of its factors (``A``, ``G``, ``A_bias``, ``G_bias``) replaced; its blocks follow."""
    new = {name: factors.get(name, getattr(k, name)) for name in ("A", "G", "A_bias", "G_bias")}
    swap = {id(getattr(k, name)): new[name] for name in new if getattr(k, name) is not None}
    blocks = tuple(
        api_kfac.KroneckerBlock(b.layouts, swap.get(id(b.left), b.left), swap.get(id(b.right), b.right), b.weights) for b in k.blocks
    )
    return dataclasses.replace(k, blocks=blocks, **new)


def _materialized_cols(owner: Owner, i: int, local: str, run: Pass, cols: dict[Key, list[Any]], fallback: Any) -> torch.Tensor:
    key = (owner.name, i)
    if owner.engine:
        x = _layer_x(run, owner, i)
        s = cols[key][0]
        if s is None:
            s = x.new_zeros(1, *run.uses[owner.name][i].outputs[0].shape)
        return _tiled_psg(owner, x, s, local)
    return fallback(owner, i).columns(cols[key])[local]


__all__ = ["BatchValues", "Options", "Partition", "Row", "compute_batch", "kfac_positions", "partition", "rebuild_kfac"]
