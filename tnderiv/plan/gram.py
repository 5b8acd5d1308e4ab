"""One plan for a glued quantity ``c · Σ h h'`` (``calculus.gram.Glued``): KFAC factors, statistics, GGN diagonals.

Three ways to run it, chosen by the cost model per layer and sizes (``strategy="auto"``) or forced:

- ``"glued"``: the glued network contracted at once (nothing per-sample is stored);
- ``"materialize"``: the half once, then its Gram on the evaluated half — a batched GEMM (for statistics:
  the per-sample gradients, then the statistic on them);
- ``"lags"``: KFAC-expand's input factor by per-lag channel correlations (``plan.lags``), where
  exact and cheaper than the unfolded Gram.

A ``GramPlan`` is cached in the plan cache beside ``Plan`` (``get_gram_plan``) and runs like one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import sympy

from tnderiv.calculus.gram import Glued
from tnderiv.ir import Diagram, DiagramSum, Expression, NodeKind, make_sum, terms_of
from tnderiv.plan.bind import Bindings, bind_sizes
from tnderiv.plan.compiled import Plan, _empty_like, _itemsize, cached_plan, get_plan
from tnderiv.plan.cost import MOVE_COST
from tnderiv.plan.guards import check_operands
from tnderiv.plan.keys import plan_key
from tnderiv.plan.lags import LagProgram, cached_lag_program
from tnderiv.plan.memory import SET_BUDGET, SMALLER_BATCH, budget_for, check_fits, needs_check
from tnderiv.simplify.lags import glued_lags

# bytes: the largest evaluated half "auto" materializes at once (KFAC factors excepted: they always do); a larger
# one is materialized in chunks where the Gram sums a leg additively (Glued.chunk_leg), else the glued network runs.
# Measured (one thread): BERT mlp.up's statistics (72 MiB of per-sample gradients) 780 ms glued, 362 ms materialized;
# the earlier 64 MiB came from a time when summing squared columns ran as a batched GEMM (now a Hadamard sum).
MATERIALIZE_LIMIT = 128 << 20

Strategy = Literal["auto", "glued", "materialize"]
STRATEGIES: tuple[str, ...] = ("auto", "glued", "materialize")
Check = Callable[[Mapping[sympy.Symbol, int]], None] | None


class GramPlan:
    """``glued`` planned for operand ``shapes`` on ``like``'s backend, device and dtype.

    ``strategy`` is what runs (``"glued"``, ``"materialize"`` or ``"lags"``); ``scores`` / ``flops_of`` the cost
    model's score and the FLOPs of each way that was planned (and of the half alone); ``plans`` the compiled
    plans that run (materialize: the half's, then the Gram's); ``chunks`` ``(leg, size, count)`` when the half
    is materialized in chunks; ``sizes`` the bound leg sizes of ``glued.source``.
    ``run(operands)`` → ``(value, evaluated half or None)``.
    """

    def __init__(
        self,
        glued: Glued,
        shapes: Mapping[str, tuple[int, ...]],
        like: Any,
        optimize: Any = "auto",
        check: Check = None,
        *,
        strategy: Strategy = "auto",
        lags: bool | None = False,
        simplify: bool = True,
        memory_limit: int | None = None,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy={strategy!r}: expected one of {list(STRATEGIES)}")
        if strategy == "materialize" and not glued.staged:
            raise ValueError("strategy='materialize' needs the two-stage form (half and Gram) of this quantity, which it does not have")
        self.glued = glued
        self.shapes = {name: tuple(shape) for name, shape in shapes.items()}
        source_shapes = {name: self.shapes[name] for name in glued.source.operand_names}
        self.bindings: Bindings = bind_sizes(glued.source, source_shapes, check)
        self.sizes = {leg: self.bindings.value(size) for leg, size in _sizes(glued.source).items()}
        self._like = _empty_like(like)  # never keep a user tensor alive
        self.scores: dict[str, float] = {}  # "glued", "materialize" (half + Gram), and "half" alone
        self.flops_of: dict[str, int] = {}
        self.glued_plan: Plan | None = None  # the glued network at once
        self.half: Plan | None = None
        self.gram: Plan | None = None
        self.copy_scale = 1.0
        self._scale_result = False
        self._contiguous = False
        self.lags: LagProgram | None = None
        self.chunks: tuple[str, int, int] | None = None  # (leg, chunk size, chunks) when materialized in chunks
        self._chunk_axes: dict[str, int] = {}
        if strategy != "glued" and glued.staged and (strategy == "materialize" or self._worth_materializing(like)):
            self._plan_materialized(optimize, check, simplify, memory_limit)
        elif strategy == "auto" and glued.staged and self._chunkable(like):
            self._plan_materialized(optimize, check, simplify, memory_limit)
        if strategy == "glued" or self.half is None or strategy == "auto" and not glued.staged_first:
            self._plan_glued(optimize, check, simplify, memory_limit)
        self.strategy = self._choose(strategy)
        if strategy == "auto" and lags is not False and glued_lags(glued.glued) is not None:
            scale = float(_bound(glued.glued, glued, self.bindings, self.sizes).coefficient)  # type: ignore[union-attr]
            self.lags = cached_lag_program(glued.glued, self.sizes, scale, lags)
            if self.lags is not None:
                self.strategy = "lags"
        self.out_shape = (self.glued_plan or self.gram).out_shape  # type: ignore[union-attr]
        if self.strategy != "glued":
            self.glued_plan = None  # keep only the plans that run alive
        if self.strategy != "materialize":
            self.half = self.gram = None
            self.chunks = None
        self.plans: tuple[Plan, ...] = tuple(p for p in (self.glued_plan, self.half, self.gram) if p is not None)
        self.operand_names = (self.lags.name,) if self.lags is not None else tuple(self.plans[0].operand_names)

    # ----- planning ----------------------------------------------------------------------------------
    def _worth_materializing(self, like: Any) -> bool:
        """A half that is more than a bare operand, and (unless the Gram always wins) not over ``MATERIALIZE_LIMIT``."""
        if not _worth_staging(self.glued.half):
            return False
        elements = math.prod(self.sizes[leg] for leg in self.glued.half_legs if leg in self.sizes)
        return self.glued.staged_first or elements * _itemsize(like) <= MATERIALIZE_LIMIT

    def _chunkable(self, like: Any) -> bool:
        """Whether a half over ``MATERIALIZE_LIMIT`` can be materialized in chunks along ``glued.chunk_leg`` (each chunk
        within the limit; the chunk size divides the leg): sets ``chunks`` and the operands' axes of the leg."""
        leg = self.glued.chunk_leg
        if not leg or not _worth_staging(self.glued.half) or leg not in self.sizes:
            return False
        axes = {}
        for term in terms_of(self.glued.source):
            for node in term.nodes:
                if node.kind is NodeKind.OPERAND and leg in node.legs:
                    groups = node.axis_groups
                    if (leg,) not in groups:
                        return False  # the leg is merged into a wider axis of the operand
                    axes[node.name] = groups.index((leg,))
        elements = math.prod(self.sizes[h] for h in self.glued.half_legs if h in self.sizes)
        total, size = elements * _itemsize(like), self.sizes[leg]
        wanted = math.ceil(total / MATERIALIZE_LIMIT)
        step = max((d for d in range(1, size + 1) if size % d == 0 and d <= size // wanted), default=0)
        if not axes or step < 1 or step == size or total // size * step > MATERIALIZE_LIMIT:
            return False
        self.chunks, self._chunk_axes = (leg, step, size // step), axes
        return True

    def _plan_materialized(self, optimize: Any, check: Check, simplify: bool, memory_limit: int | None) -> None:
        glued = self.glued
        assert glued.half is not None and glued.gram is not None
        shapes = self._shapes_of(glued.half)
        if self.chunks is not None:
            _, step, _ = self.chunks
            shapes = {n: tuple(step if j == self._chunk_axes.get(n) else s for j, s in enumerate(shape)) for n, shape in shapes.items()}
        self.half = get_plan(glued.half, shapes, self._like, optimize, check, simplify=simplify, memory_limit=memory_limit)
        shape = self.half.out_shape
        gram = _bound(glued.gram, glued, self.bindings, self.sizes)
        shapes = {glued.half_name: shape}
        if glued.copy_name:
            # the coefficient scales the smaller of the half's copy and the result, in one pass
            assert isinstance(gram, Diagram), "a Gram on a scaled copy is one diagram"
            self.copy_scale = float(gram.coefficient)
            gram = gram.replace(coefficient=1)
            shapes[glued.copy_name] = shape
        self.gram = get_plan(gram, shapes, self._like, optimize, simplify=simplify, memory_limit=memory_limit)
        # a Hadamard sum reads a strided half in memory order; any other step wants it in its leg order
        # (not for KFAC factors: their half is written in the memory order their Gram's GEMM views, see plan.gathers)
        self._contiguous = (
            not glued.staged_first and hasattr(self._like, "is_contiguous") and any(step.kind != "Hadamard sum" for step in self.gram.steps())
        )
        result = math.prod(self.gram.out_shape)
        self._scale_result = bool(glued.copy_name) and result <= math.prod(shape) and all(t.fresh for t in self.gram.term_plans)
        copy = MOVE_COST * 2 * min(math.prod(shape), result) if glued.copy_name else 0.0
        count = 1 if self.chunks is None else self.chunks[2]
        self.scores["half"] = count * self.half.score
        self.scores["materialize"] = count * (self.half.score + self.gram.score + copy)
        self.flops_of["half"] = count * self.half.flops
        self.flops_of["materialize"] = count * (self.half.flops + self.gram.flops)

    def _plan_glued(self, optimize: Any, check: Check, simplify: bool, memory_limit: int | None) -> None:
        expr = _bound(self.glued.glued, self.glued, self.bindings, self.sizes)
        self.glued_plan = get_plan(expr, self._shapes_of(expr), self._like, optimize, check, simplify=simplify, memory_limit=memory_limit)
        self.scores["glued"] = self.glued_plan.score
        self.flops_of["glued"] = self.glued_plan.flops

    def _choose(self, strategy: Strategy) -> str:
        if strategy != "auto":
            return strategy
        if "glued" not in self.scores:
            return "materialize"
        if "materialize" not in self.scores:
            return "glued"
        assert self.glued_plan is not None and self.half is not None and self.gram is not None
        cheaper = "materialize" if self.scores["materialize"] < self.scores["glued"] else "glued"
        other = "glued" if cheaper == "materialize" else "materialize"
        needed = {"glued": self.glued_plan.needed_bytes, "materialize": self.half.needed_bytes + self.gram.needed_bytes}
        # the cheaper way unless only the other fits the memory budget (the budget as it is when planning)
        return other if not self._fits(needed[cheaper]) and self._fits(needed[other]) else cheaper

    def _fits(self, nbytes: int) -> bool:
        if not needs_check(nbytes):
            return True
        budget, _ = budget_for(self._like.device)
        return budget is None or nbytes <= budget

    def _shapes_of(self, expr: Expression) -> dict[str, tuple[int, ...]]:
        missing = [name for name in expr.operand_names if name not in self.shapes]
        if missing:
            raise ValueError(f"this quantity needs operands {missing} besides {sorted(self.shapes)}")
        return {name: self.shapes[name] for name in expr.operand_names}

    # ----- running -----------------------------------------------------------------------------------
    def run(self, operands: Mapping[str, Any]) -> tuple[Any, Any]:
        """``(value, evaluated half or None)``, without checks (operands by name, user layout)."""
        if self.lags is not None:
            return self.lags(operands[self.lags.name]), None
        if self.glued_plan is not None and self.strategy == "glued":
            return self.glued_plan.execute(operands), None
        assert self.half is not None
        if self.chunks is not None:
            return self._run_chunks(operands), None
        half = self.half.execute(operands)
        return self.run_gram(half), half

    def _run_chunks(self, operands: Mapping[str, Any]) -> Any:
        """The half materialized chunk by chunk along ``chunks``' leg, each chunk's Gram added to the total."""
        assert self.chunks is not None and self.half is not None
        _, step, count = self.chunks
        total, owned = None, False
        for c in range(count):
            part = {n: a.narrow(self._chunk_axes[n], c * step, step) if n in self._chunk_axes else a for n, a in operands.items()}
            value = self.run_gram(self.half.execute(part))
            if total is None:
                total = value
            elif owned:
                total.add_(value)
            else:
                total, owned = total + value, True
        return total

    def run_gram(self, half: Any) -> Any:
        """The Gram on an evaluated half (``[*half_axes]``, as ``half`` returns it)."""
        assert self.gram is not None
        if self._contiguous and not half.is_contiguous():
            # the half is often a permuted view; the Gram's GEMMs and reductions were priced (and run fast) on the
            # leg order: one copy (e.g. a transposed conv's variance 96 → 9 ms, batch_dot 84 → 7 ms)
            half = half.contiguous()
        given = {self.glued.half_name: half}
        if not self.glued.copy_name:
            return self.gram.execute(given)
        if self._scale_result:
            given[self.glued.copy_name] = half
            return self.gram.execute(given).mul_(self.copy_scale)
        given[self.glued.copy_name] = half * self.copy_scale
        return self.gram.execute(given)

    def __call__(self, operands: Mapping[str, Any] | None = None, **named: Any) -> Any:
        """Check the operands (names, shapes, dtype, device) and the memory budget, then run; returns the value."""
        given = dict(operands, **named) if operands else named
        for plan in self.plans[:1]:
            check_operands(plan, given)
        self.check_memory()
        return self.run(given)[0]

    @property
    def needed_bytes(self) -> int:
        """Bytes a run allocates at its peak (materialize: the half, its copy and the Gram's result and intermediates)."""
        if self.strategy != "materialize":
            return self.plans[0].needed_bytes if self.plans else 0
        assert self.half is not None and self.gram is not None
        return (2 if self.glued.copy_name else 1) * self.half.needed_bytes + self.gram.needed_bytes

    def check_memory(self, quantity: str = "this quantity", options: Sequence[str] = (SMALLER_BATCH, SET_BUDGET)) -> None:
        """Raise ``MemoryBudgetError`` before anything is allocated if ``needed_bytes`` exceed the budget."""
        needed = self.needed_bytes
        if not needs_check(needed):
            return
        if self.strategy == "glued" and self.glued_plan is not None:
            self.glued_plan.check_memory(quantity)
            return
        half = f"the evaluated half {list(self.half.out_shape)} and its copy, " if self.half is not None and self.strategy == "materialize" else ""
        check_fits(quantity, needed, self._like.device, f"{half}the result {list(self.out_shape)}", list(options))

    # ----- inspection --------------------------------------------------------------------------------
    @property
    def flops(self) -> int:
        if self.lags is not None:
            return int(self.lags.cost.lag_flops)
        return sum(plan.flops for plan in self.plans)

    @property
    def score(self) -> float:
        if self.lags is not None:
            return float(self.lags.cost.lag_time)
        return self.scores[self.strategy]

    def __str__(self) -> str:
        scores = ", ".join(f"{name} {value:,.0f}" for name, value in self.scores.items() if name != "half")
        lines = [f"GramPlan of {self.glued.glued}: runs {self.strategy} (scores: {scores})"]
        for plan in self.plans:
            lines.extend("  " + line for line in str(plan).splitlines())
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<GramPlan {self.strategy} out={list(self.out_shape)} flops={self.flops:,}>"


def _worth_staging(half: Expression | None) -> bool:
    """A half that is more than a bare operand (something to contract once instead of twice)."""
    return any(len(t.nodes) > 1 or bool(t.summed_legs) or t.coefficient != 1 for t in terms_of(half)) if half is not None else False


def _sizes(expr: Expression) -> dict[str, sympy.Expr]:
    sizes: dict[str, sympy.Expr] = {}
    for term in terms_of(expr):
        sizes.update(term.sizes)
    return sizes


def number(expr: sympy.Expr, bindings: Bindings) -> sympy.Expr:
    """``expr`` with its sizes bound: an exact number."""
    known = {k: sympy.Integer(v) for k, v in bindings.items() if not k.is_Symbol}
    value = expr.xreplace(known).xreplace({k: sympy.Integer(v) for k, v in bindings.symbols().items()})
    assert value.is_number, f"{expr} is not a number with sizes {bindings}"
    return value


def _bound(expr: Expression, glued: Glued, bindings: Bindings, sizes: Mapping[str, int]) -> Expression:
    """``expr`` with every coefficient a number: the scale from the bound leg sizes (it may count positions the
    evaluated half no longer has), the rest from the size symbols."""
    scale_expr = glued.scale.expr(_sizes(glued.source))
    scale_value = glued.scale.value(sizes)
    terms = [t.replace(coefficient=number(t.coefficient / scale_expr, bindings) * scale_value) for t in terms_of(expr)]
    if isinstance(expr, Diagram):
        return terms[0]
    result = make_sum(terms)
    assert isinstance(result, (Diagram, DiagramSum))
    return result


def get_gram_plan(
    glued: Glued,
    shapes: Mapping[str, tuple[int, ...]],
    like: Any,
    optimize: Any = "auto",
    check: Check = None,
    *,
    strategy: Strategy = "auto",
    lags: bool | None = False,
    simplify: bool = True,
    memory_limit: int | None = None,
) -> GramPlan:
    """The ``GramPlan`` of ``glued`` for these shapes on ``like``'s backend, device and dtype (cached with the plans)."""
    key = plan_key(glued, shapes, like, optimize, strategy, lags, bool(simplify), memory_limit)
    build = lambda: GramPlan(glued, shapes, like, optimize, check, strategy=strategy, lags=lags, simplify=simplify, memory_limit=memory_limit)  # noqa: E731
    return cached_plan(key, build)


__all__ = ["MATERIALIZE_LIMIT", "STRATEGIES", "GramPlan", "Strategy", "get_gram_plan", "number"]
