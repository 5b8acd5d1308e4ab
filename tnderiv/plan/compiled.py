"""Compiled plans: a diagram's terms bound to sizes, simplified again, ordered by the structure-aware model, ready to run.

For each term: bind sizes (``plan.bind``), apply the plan-stage rewrite rules (divisibility and
other size conditions are decidable now), rank candidate contraction orders (``plan.optimizers``)
and build the kernels of the best one (``plan.program``). ``get_plan`` caches plans in a bounded LRU
under (diagram, shapes, backend, device, dtype, optimizer, simplify, memory limit).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, TypeVar

import opt_einsum as oe
import sympy

from tnderiv.ir import Diagram, Expression, node_tag, terms_of
from tnderiv.plan.backends import backend_of
from tnderiv.plan.bind import OUTPUT, Bindings, bind_sizes, concrete
from tnderiv.plan.cache import LRUCache, register_cache
from tnderiv.plan.chunk import ChunkedRun
from tnderiv.plan.constants import device_constant
from tnderiv.plan.conv import ConvKernel
from tnderiv.plan.guards import check_operands, check_plan_memory, needed_bytes
from tnderiv.plan.keys import plan_key
from tnderiv.plan.memory import needs_check
from tnderiv.plan.optimizers import Candidate, candidate_paths, opt_einsum_path, rank, resolve
from tnderiv.plan.program import Network, Program
from tnderiv.plan.report import PlanStep, format_html, format_text

ShapeMap = Mapping[str, tuple[int, ...]]
T = TypeVar("T")
LEG_RULES = ("squeeze", "merge legs", "squeeze open legs", "merge open legs")


@dataclass(frozen=True)
class _Version:
    """One version of a term (as derived, or after the plan-stage rules) with its best candidate order."""

    time: float
    diagram: Diagram
    rewrites: tuple[str, ...]
    network: Network
    sizes: dict[str, int]
    candidate: Candidate | None


class TermPlan:
    """One term compiled for bound sizes on one backend, device and dtype: ``run(operands)`` → user layout."""

    def __init__(self, term: Diagram, bindings: Bindings, like: Any, optimize: Any, simplify: bool = True) -> None:
        self.source = term
        bound = concrete(term, bindings)
        backend = backend_of(like)
        self.backend = backend
        self.backend_name = backend.name
        self.itemsize = _itemsize(like)
        explicit = not isinstance(optimize, str) and isinstance(optimize, Sequence)
        # the diagram as derived, and (unless an explicit path refers to its nodes) after the plan-stage rules;
        # the cost model picks between them (e.g. a 1x1 convolution's GEMM vs torch's convolution kernel)
        versions: list[tuple[Diagram, tuple[str, ...]]] = [(bound, ())]
        if simplify and not explicit:
            from tnderiv.simplify import simplify as run_rules

            # size-1 and adjacent legs are squeezed and merged in both versions: they never change which
            # order wins (checked on 206 plans), and ranking a version that differs only in them doubles the cost
            squeezed = run_rules(bound, rules=LEG_RULES)
            assert isinstance(squeezed, Diagram)
            legs = () if squeezed.exact_key == bound.exact_key else LEG_RULES
            versions = [(squeezed, ())]
            derivation = run_rules(squeezed, trace=True, stage="plan")
            rewrites = tuple(dict.fromkeys(step.rule for step in derivation.steps))  # type: ignore[union-attr]
            if rewrites:
                versions.insert(0, (derivation.result, rewrites))  # type: ignore[union-attr]
            elif legs:
                versions = [(squeezed, legs)]
        self.plan_rewrites = versions[0][1]  # what the plan-stage rules did, whether or not the result was chosen
        best = None
        self.candidates: list[Candidate] = []
        for diagram, rewrites in versions:
            network = Network.of(diagram)
            sizes = {leg: int(size) for leg, size in diagram.sizes.items()}
            inputs = network.inputs()
            if not inputs:
                best = _Version(0.0, diagram, rewrites, network, sizes, None)
                break
            if isinstance(optimize, str) and optimize == "auto":
                named = candidate_paths(inputs, network.out_legs, sizes, backend.name)
            else:
                resolved = resolve(optimize, len(inputs))
                path = resolved if isinstance(resolved, list) else opt_einsum_path([t.legs for t in inputs], network.out_legs, sizes, resolved)
                named = [(optimize if isinstance(optimize, str) else "given", path)]
            ranked = rank(named, inputs, network.out_legs, sizes, backend.name)
            if len(versions) > 1:
                label = "rewritten" if rewrites else "as derived"
                ranked = [replace(c, name=f"{label}: {c.name}") for c in ranked]
            chosen = next(c for c in ranked if c.chosen)
            if best is None or chosen.time < best.time:
                best = _Version(chosen.time, diagram, rewrites, network, sizes, chosen)
            self.candidates.extend(ranked)
        assert best is not None
        bound, self.rewrites, self.network, self.sizes, chosen = best.diagram, best.rewrites, best.network, best.sizes, best.candidate
        self.candidates = [replace(c, chosen=c is chosen) for c in self.candidates]
        self.term: Diagram = bound
        self.coefficient = float(bound.coefficient)
        self.program: Program | None = None
        if chosen is not None:
            self.program = Program(
                self.network, chosen.path, backend.name, like, lambda node, sizes: device_constant(node, sizes, backend, like)
            )
        self._like = _empty_like(like)  # never keep a user tensor alive
        self._layout_result(bound)

    def _layout_result(self, bound: Diagram) -> None:
        """How the program's result (legs ``network.out_legs``) becomes the user's layout, decided once."""
        open_legs, keep = bound.open_legs, self.network.out_legs
        groups = bound.open_axis_groups
        self.user_shape = tuple(math.prod(self.sizes[leg] for leg in group) for group in groups)
        self.fresh = self.program is not None and self.program.fresh
        self._expand = None
        produced = tuple(self.sizes[leg] for leg in keep)
        broadcast = set(self.network.broadcast)
        if not broadcast:
            self.full = True
            self._reshape = None if produced == self.user_shape else self.user_shape
        elif all(set(group) <= broadcast or not set(group) & broadcast for group in groups):
            # broadcast legs fill whole axes: a result with size-1 axes broadcasts in the user layout
            self.full = False
            keep_shape = tuple(1 if set(group) & broadcast else size for group, size in zip(groups, self.user_shape))
            self._reshape = None if produced == keep_shape else keep_shape
        else:
            self.full = True
            self.fresh = False
            self._reshape = self.user_shape
            self._expand = (tuple(self.sizes[leg] if leg in keep else 1 for leg in open_legs), tuple(self.sizes[leg] for leg in open_legs))

    @property
    def path(self) -> list[tuple[int, ...]]:
        return list(self.program.path) if self.program is not None else []

    def run(self, operands: Mapping[str, Any]) -> Any:
        """The term's value in the user's layout (size 1 along broadcast axes unless ``full``)."""
        if self.program is None:
            out = self.backend.full(self.coefficient, self._like)
        else:
            out = self.program(operands)
            if self.coefficient != 1.0:
                if self.fresh:
                    out *= self.coefficient  # in place: the program made this array
                else:
                    out = out * self.coefficient
        if self._expand is not None:
            keep, full = self._expand
            out = out.reshape(keep)
            out = self.backend.broadcast_to(out, full)
        if self._reshape is not None:
            out = out.reshape(self._reshape)
        return out

    def steps(self, term_index: int = 0) -> list[PlanStep]:
        """The steps in the user's leg names (constant-only steps are marked ``folded``)."""
        if self.program is None:
            return []
        names: dict[int, str] = {j: node_tag(node) for j, node in enumerate(self.network.nodes)}
        legs: dict[int, tuple[str, ...]] = {j: node.legs for j, node in enumerate(self.network.nodes)}
        out = []
        for number, (c, kernel) in enumerate(zip(self.program.contractions, self.program.kernels)):
            taken = [names[j] for j in c.ids]
            equation = ",".join(f"{name}[{','.join(legs[j])}]" for name, j in zip(taken, c.ids)) + f"->[{','.join(kernel.out_legs)}]"
            names[c.out_id] = f"#{number + 1}"
            legs[c.out_id] = kernel.out_legs
            cost = kernel.cost
            out.append(PlanStep(tuple(taken), equation, kernel.kind, cost.flops_dense, cost.flops, cost.moved, cost.size, term_index, cost.time))
        return out

    @cached_property
    def info(self) -> Any:
        """opt_einsum's ``PathInfo`` for the chosen path (FLOPs under the dense model)."""
        inputs = self.network.inputs()
        symbol = {leg: oe.get_symbol(j) for j, leg in enumerate(self.sizes)}
        equation = ",".join("".join(symbol[x] for x in t.legs) for t in inputs) + "->" + "".join(symbol[x] for x in self.network.out_legs)
        shapes = [tuple(self.sizes[x] for x in t.legs) for t in inputs]
        return oe.contract_path(equation, *shapes, shapes=True, optimize=self.path)[1]

    def peak_elements(self) -> int:
        """Most elements of intermediates alive at once while the term runs (operands and constants excluded)."""
        if self.program is None:
            return 0
        sizes = {}
        live, peak = 0, 0
        for step in self.program.steps:
            size = step.kernel.cost.size
            live += size
            sizes[step.output] = size
            peak = max(peak, live)
            for j in step.release:
                live -= sizes.get(j, 0)
        return peak


def _broadcast(array: Any, shape: tuple[int, ...]) -> Any:
    return backend_of(array).broadcast_to(array, shape)


def _empty_like(like: Any) -> Any:
    """An empty array with ``like``'s backend, dtype and device (plans must not hold user tensors)."""
    if hasattr(like, "new_empty"):
        return like.new_empty(0)
    import cupy  # type: ignore[import-not-found]

    with cupy.cuda.Device(like.device.id):
        return cupy.empty(0, dtype=like.dtype)


def _itemsize(like: Any) -> int:
    try:
        return int(like.element_size())
    except AttributeError:
        return int(like.dtype.itemsize)


class Plan:
    """A compiled expression (a diagram or a sum): call it with the operands by name.

    ``plan(x=..., grad_out=...)`` returns the result in the user's layout (merged axes). ``str(plan)``
    reports each step (einsum with leg names, kernel kind, FLOPs under the dense and the
    structure-aware model, sizes), the candidate orders and peak memory; see also ``to_dict``,
    ``path``, ``info`` (opt_einsum ``PathInfo``), ``candidates``, ``to_cotengra`` and ``_repr_html_``.
    ``memory_limit`` (bytes) splits the contraction over a batch leg when an intermediate would
    exceed it (``chunks``). A call checks the operands against the shapes, dtype and device the plan
    was made for (``check``) and its ``needed_bytes`` against the memory budget (``check_memory``).
    """

    def __init__(
        self,
        expr: Expression,
        shapes: ShapeMap,
        like: Any,
        optimize: Any = "auto",
        check: Callable[[Mapping[sympy.Symbol, int]], None] | None = None,
        *,
        simplify: bool = True,
        memory_limit: int | None = None,
    ) -> None:
        if memory_limit is not None and (not isinstance(memory_limit, int) or isinstance(memory_limit, bool) or memory_limit < 1):
            raise ValueError(f"memory_limit={memory_limit!r}: expected a positive number of bytes (int) or None")
        self.expr = expr
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        self.bindings = bind_sizes(expr, self.shapes, check)
        self.optimize, self.simplify, self.memory_limit = optimize, simplify, memory_limit
        terms = terms_of(expr)
        if len(terms) > 1 and isinstance(optimize, (list, tuple)):
            raise ValueError(
                f"optimize={list(optimize)!r}: an explicit path orders one diagram's tensors, but this is a sum of "
                f"{len(terms)} diagrams; plan each term with its own path (expr.terms[j]) or pass an optimizer name"
            )
        self.term_plans = tuple(TermPlan(term, self.bindings, like, optimize, simplify) for term in terms)
        first = terms[0]
        self.out_shape = tuple(math.prod(self.bindings.value(first.sizes[leg]) for leg in group) for group in first.open_axis_groups)
        # full-size terms first, so that broadcast terms add into them
        self._order = tuple(sorted(self.term_plans, key=lambda t: not t.full))
        self._fused = _fused_bias(self._order, self.out_shape)
        self.operand_names = tuple(expr.operand_names)
        self._like = _empty_like(like)
        self.chunks: tuple[str, int, int] | None = None
        self._chunked = None
        if memory_limit is not None and self.largest_intermediate_bytes > memory_limit:
            self._chunked = ChunkedRun(self, memory_limit, check, get_plan)
            self.chunks = self._chunked.summary

    # ----- running ---------------------------------------------------------------------------------
    def __call__(self, operands: Mapping[str, Any] | None = None, **named: Any) -> Any:
        """Check the operands against what the plan was made for (names, shapes, dtype, device), then run it."""
        given = dict(operands, **named) if operands else named
        self.check(given)
        self.check_memory()
        return self.execute(given)

    @cached_property
    def needed_bytes(self) -> int:
        """Estimated bytes a run allocates: the result plus the intermediates alive at its peak (chunked: every
        chunk's result, their concatenation and one chunk's intermediates)."""
        return needed_bytes(self)

    def check_memory(self, quantity: str = "this plan") -> None:
        """Raise ``MemoryBudgetError`` (before anything is allocated) if ``needed_bytes`` exceed the memory budget."""
        if needs_check(self.needed_bytes):
            check_plan_memory(self, quantity)

    def execute(self, given: Mapping[str, Any]) -> Any:
        """Run on operands already known to fit (chunked under ``memory_limit``); no checks."""
        if self._chunked is not None:
            return self._chunked(given)
        return self.run(given)

    def check(self, given: Mapping[str, Any]) -> None:
        """Raise unless ``given`` has every operand with the shape, dtype and device this plan was made for."""
        check_operands(self, given)

    def run(self, operands: Mapping[str, Any]) -> Any:
        """Contract without checks or chunking (operands by name, user layout)."""
        if self._fused is not None:
            program, name, length = self._fused
            return program.run_with_bias(operands, operands[name].reshape(length))
        total, owned = None, False
        for term in self._order:
            out = term.run(operands)
            if total is None:
                total, owned = (out, term.fresh) if term.full else (_broadcast(out, self.out_shape), False)
            elif owned:
                total += out  # a fresh full-size result: accumulate in place (broadcasting)
            else:
                total, owned = total + out, True
        return total

    # ----- inspection ------------------------------------------------------------------------------
    @property
    def terms(self) -> tuple[TermPlan, ...]:
        return self.term_plans

    @property
    def path(self) -> list[tuple[int, ...]]:
        """The contraction path of the first term (opt_einsum format; a fused convolution is one multi-operand step)."""
        return self.term_plans[0].path

    @property
    def info(self) -> Any:
        """opt_einsum's ``PathInfo`` of the first term's chosen path."""
        return self.term_plans[0].info

    @property
    def candidates(self) -> list[Candidate]:
        """The candidate orders of the first term, each with its costs; the chosen one has ``chosen=True``."""
        return self.term_plans[0].candidates

    def steps(self) -> list[PlanStep]:
        return [step for t, term in enumerate(self.term_plans) for step in term.steps(t)]

    @property
    def flops(self) -> int:
        """FLOPs under the structure-aware model (gathers and folded constants cost no arithmetic)."""
        return int(sum(step.flops for step in self.steps()))

    @property
    def score(self) -> float:
        """The structure-aware cost model's time score of the whole plan (what candidate orders are ranked by)."""
        return float(sum(step.score for step in self.steps()))

    @property
    def dense_flops(self) -> int:
        """FLOPs with every tensor treated as dense (opt_einsum's model)."""
        return int(sum(step.flops_dense for step in self.steps()))

    @property
    def peak_size(self) -> int:
        """Largest intermediate, in elements (constant-only steps excluded)."""
        return max((step.size for step in self.steps() if step.kind != "folded"), default=0)

    @property
    def largest_intermediate_bytes(self) -> int:
        return self.peak_size * self.term_plans[0].itemsize

    @property
    def peak_memory(self) -> int:
        """Bytes of intermediates alive at once (the result of one term included; operands and constants excluded)."""
        itemsize = self.term_plans[0].itemsize
        out = math.prod(self.out_shape)
        return max(term.peak_elements() for term in self.term_plans) * itemsize + (out * itemsize if len(self.term_plans) > 1 else 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "expression": str(self.expr),
            "sizes": {str(k): v for k, v in self.bindings.symbols().items()},
            "terms": [
                {
                    "diagram": str(t.term),
                    "rewrites": list(t.rewrites),
                    "path": [list(p) for p in t.path],
                    "steps": [s.to_dict() for s in t.steps(j)],
                    "candidates": [c.to_dict() for c in t.candidates],
                }
                for j, t in enumerate(self.term_plans)
            ],
            "flops": self.flops,
            "flops_dense": self.dense_flops,
            "peak_size": self.peak_size,
            "peak_memory": self.peak_memory,
            "memory_limit": self.memory_limit,
            "chunks": None if self.chunks is None else {"leg": self.chunks[0], "size": self.chunks[1], "count": self.chunks[2]},
        }

    def to_cotengra(self, term: int = 0) -> Any:
        """The chosen order of term ``term`` as a ``cotengra.ContractionTree`` (needs cotengra)."""
        try:
            import cotengra  # type: ignore[import-not-found]
        except ImportError:
            raise ImportError("Plan.to_cotengra needs cotengra: pip install cotengra") from None
        t = self.term_plans[term]
        inputs = [tuple(node.legs) for node in t.network.nodes]
        return cotengra.ContractionTree.from_path(inputs, tuple(t.network.out_legs), dict(t.sizes), path=t.path)

    def __str__(self) -> str:
        return format_text(self)

    def _repr_html_(self) -> str:
        return format_html(self)

    def __repr__(self) -> str:
        return f"<Plan {self.expr} flops={self.flops:,}>"


def _fused_bias(terms: tuple[TermPlan, ...], out_shape: tuple[int, ...]) -> tuple[Program, str, int] | None:
    """A convolution term plus a per-channel bias term: torch's convolution adds the bias itself (one pass, no copy)."""
    if len(terms) != 2 or not terms[0].full or terms[1].full:
        return None
    conv, bias = terms
    program = conv.program
    if program is None or len(program.steps) != 1 or program.permutation is not None or conv.coefficient != 1.0:
        return None
    kernel = program.steps[0].kernel
    if not isinstance(kernel, ConvKernel) or kernel.kind == "conv_weight" or conv._expand is not None:
        return None
    if kernel.kind == "conv_transpose" and not kernel.post_free:
        return None
    if kernel.natural_shape != out_shape or bias.program is None or bias.program.steps or bias.coefficient != 1.0 or bias._expand is not None:
        return None
    operands = bias.program.operands
    channels = out_shape[1] if len(out_shape) > 1 else 0
    keep = bias._reshape or tuple(bias.sizes[leg] for leg in bias.network.out_legs)
    if len(operands) != 1 or keep != (1, channels) + (1,) * (len(out_shape) - 2):
        return None
    return program, operands[0][1], channels


PLAN_CACHE: LRUCache[Any] = LRUCache(maxsize=512)
# a GramPlan (plan.gram) keeps at most two plans alive: the half's and the Gram's
register_cache("plans", "compiled plans (and plans of glued quantities) by plan_key: expression, shapes, place, optimizer, options", lambda: PLAN_CACHE, 2)


def get_plan(
    expr: Expression,
    shapes: ShapeMap,
    like: Any,
    optimize: Any = "auto",
    check: Callable[[Mapping[sympy.Symbol, int]], None] | None = None,
    *,
    simplify: bool = True,
    memory_limit: int | None = None,
) -> Plan:
    """The compiled plan for ``expr`` at these shapes on ``like``'s backend, device and dtype (cached).

    ``simplify=False`` skips the plan-stage rewrites; ``memory_limit`` (bytes) bounds every intermediate.
    """
    key = plan_key(expr, shapes, like, optimize, bool(simplify), memory_limit)
    return cached_plan(key, lambda: Plan(expr, shapes, like, optimize, check, simplify=simplify, memory_limit=memory_limit))


def cached_plan(key: Hashable, build: Callable[[], T]) -> T:
    """The plan under ``key`` (a ``plan_key``) in the one plan cache, built on a miss."""
    return PLAN_CACHE.get_or_build(key, build)  # type: ignore[return-value]


__all__ = ["OUTPUT", "PLAN_CACHE", "Plan", "PlanStep", "TermPlan", "cached_plan", "get_plan"]
