"""Compiled plans: a diagram lowered to an einsum, its order chosen, compiled with constants, ready to run."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import opt_einsum as oe
import sympy
from opt_einsum.helpers import flop_count

from tnderiv.ir import Diagram, Expression, NodeKind, node_tag, terms_of
from tnderiv.plan.backends import Backend, backend_of
from tnderiv.plan.bind import OUTPUT, Bindings, bind_sizes, leg_sizes
from tnderiv.plan.cache import LRUCache
from tnderiv.plan.constants import constant_array
from tnderiv.plan.optimizers import cache_key, resolve

ShapeMap = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class PlanStep:
    """One pairwise (or single-operand) contraction of a plan, in the user's leg names."""

    inputs: tuple[str, ...]
    equation: str
    flops: int
    size: int
    blas: str

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": list(self.inputs), "equation": self.equation, "flops": self.flops, "size": self.size, "kernel": self.blas}


def _broadcast_legs(term: Diagram) -> tuple[str, ...]:
    """Open legs carried only by ones nodes: added by broadcasting, not by the einsum."""
    if all(node.kind is NodeKind.ONES for node in term.nodes):
        return ()
    counts = term.leg_count
    legs = []
    for node in term.nodes:
        if node.kind is NodeKind.ONES and all(counts[leg] == 1 and leg in term.open_legs for leg in node.legs):
            legs.extend(node.legs)
    return tuple(legs)


class TermPlan:
    """One diagram (term) compiled for fixed leg sizes on one backend, device and dtype."""

    def __init__(self, term: Diagram, sizes: Mapping[str, int], like: Any, optimize: Any, coefficient: float = 1.0) -> None:
        self.term = term
        self.sizes = dict(sizes)
        self.broadcast = _broadcast_legs(term)
        nodes = [n for n in term.nodes if not (n.kind is NodeKind.ONES and set(n.legs) <= set(self.broadcast))]
        self.nodes = tuple(nodes)
        self.symbols = {leg: oe.get_symbol(j) for j, leg in enumerate(term.legs)}
        inputs = ["".join(self.symbols[leg] for leg in node.legs) for node in nodes]
        self.out_legs = tuple(leg for leg in term.open_legs if leg not in self.broadcast)
        self.equation = ",".join(inputs) + "->" + "".join(self.symbols[leg] for leg in self.out_legs)
        self.leg_shapes = [tuple(self.sizes[leg] for leg in node.legs) for node in nodes]
        self.operand_names = tuple(None if node.is_constant else node.name for node in nodes)
        self.coefficient = coefficient
        backend = backend_of(like)
        self.backend_name = backend.name
        resolved = resolve(optimize, len(nodes))
        self.path, self.info = oe.contract_path(self.equation, *self.leg_shapes, shapes=True, optimize=resolved)
        constants = [i for i, node in enumerate(nodes) if node.is_constant]
        args = [
            backend.from_numpy(constant_array(node, self.sizes), like) if node.is_constant else self.leg_shapes[i]
            for i, node in enumerate(nodes)
        ]
        self.expression = oe.contract_expression(self.equation, *args, constants=constants, optimize=self.path)
        full = tuple(self.sizes[leg] for leg in term.open_legs)
        self._expand = None if not self.broadcast else (
            tuple(self.sizes[leg] if leg in self.out_legs else 1 for leg in term.open_legs),
            full,
        )

    def run(self, operands: Mapping[str, Any]) -> Any:
        """Contract with ``operands`` (user layout, by name); result in leg layout ``[*open_legs]``."""
        arrays = [
            operands[name].reshape(shape) for name, shape in zip(self.operand_names, self.leg_shapes) if name is not None
        ]
        out = self.expression(*arrays, backend=self.backend_name)
        if self.coefficient != 1.0:
            out = out * self.coefficient
        if self._expand is not None:
            keep, full = self._expand
            out = out.reshape(keep)
            out = out.expand(*full) if self.backend_name == "torch" else _cupy_broadcast(out, full)
        return out

    def steps(self) -> list[PlanStep]:
        """The contraction steps in the user's leg names."""
        names = {sym: leg for leg, sym in self.symbols.items()}
        current = [node_tag(node) for node in self.nodes]
        steps = []
        for number, (inds, removed, einsum_str, _, blas) in enumerate(self.info.contraction_list):
            ins, out = einsum_str.split("->")
            taken = [current.pop(i) for i in inds]  # opt_einsum pops in this order
            operand_strs = ins.split(",")
            named = ",".join(f"{t}[{','.join(names[s] for s in ops)}]" for t, ops in zip(taken, operand_strs))
            equation = f"{named}->[{','.join(names[s] for s in out)}]"
            legs_involved = set(ins.replace(",", "")) | set(out)
            flops = flop_count(legs_involved, bool(removed), len(taken), {s: self.sizes[names[s]] for s in legs_involved})
            size = math.prod(self.sizes[names[s]] for s in out)
            current.append(f"#{number + 1}")
            steps.append(PlanStep(tuple(taken), equation, int(flops), int(size), str(blas) if blas else "einsum"))
        return steps


def _cupy_broadcast(array: Any, shape: tuple[int, ...]) -> Any:
    import cupy  # type: ignore[import-not-found]

    return cupy.broadcast_to(array, shape)


class Plan:
    """A compiled expression (a diagram or a sum): call it with the operands by name.

    ``plan(x=..., grad_out=...)`` returns the result in the user's layout (merged axes).
    """

    def __init__(self, expr: Expression, shapes: ShapeMap, like: Any, optimize: Any, check: Any = None) -> None:
        self.expr = expr
        operand_shapes = {k: tuple(v) for k, v in shapes.items()}
        self.bindings = bind_sizes(expr, operand_shapes, check)
        self.terms = tuple(
            TermPlan(term, sizes, like, optimize, _coefficient(term.coefficient, self.bindings))
            for term, sizes in zip(terms_of(expr), leg_sizes(expr, self.bindings))
        )
        first = self.terms[0]
        self.out_shape = tuple(math.prod(first.sizes[leg] for leg in group) for group in terms_of(expr)[0].open_axis_groups)
        self.operand_names = tuple(name for name in expr.operand_names)
        self.shapes = operand_shapes

    def __call__(self, operands: Mapping[str, Any] | None = None, **named: Any) -> Any:
        given = dict(operands or {}, **named)
        missing = [name for name in self.operand_names if name not in given]
        if missing:
            raise ValueError(f"missing operands {missing}; the plan needs {list(self.operand_names)}")
        total = None
        for term in self.terms:
            out = term.run(given)
            total = out if total is None else total + out
        return total.reshape(self.out_shape)

    # ----- inspection --------------------------------------------------------------------------
    @property
    def path(self) -> list[tuple[int, ...]]:
        """The contraction path of the first term (opt_einsum format)."""
        return list(self.terms[0].path)

    @property
    def info(self) -> Any:
        """opt_einsum's ``PathInfo`` of the first term."""
        return self.terms[0].info

    @property
    def flops(self) -> int:
        return int(sum(step.flops for term in self.terms for step in term.steps()))

    @property
    def peak_size(self) -> int:
        """Largest intermediate, in elements."""
        sizes = [step.size for term in self.terms for step in term.steps()]
        return max(sizes, default=0)

    def steps(self) -> list[PlanStep]:
        return [step for term in self.terms for step in term.steps()]

    def to_dict(self) -> dict[str, Any]:
        return {
            "expression": str(self.expr),
            "sizes": {str(k): v for k, v in self.bindings.symbols().items()},
            "terms": [
                {"diagram": str(t.term), "path": [list(p) for p in t.path], "steps": [s.to_dict() for s in t.steps()]}
                for t in self.terms
            ],
            "flops": self.flops,
            "peak_size": self.peak_size,
        }

    def __str__(self) -> str:
        lines = [f"plan for {self.expr}", "  sizes: " + ", ".join(f"{k}={v}" for k, v in sorted(self.to_dict()["sizes"].items()))]
        for t, term in enumerate(self.terms):
            if len(self.terms) > 1:
                lines.append(f"  term {t + 1}: {term.term}")
            for number, step in enumerate(term.steps()):
                lines.append(f"  {number + 1}. {step.equation}  [{step.blas}] flops={step.flops:,} size={step.size:,}")
        lines.append(f"  total flops={self.flops:,}, largest intermediate={self.peak_size:,} elements")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Plan {self.expr} flops={self.flops:,}>"


def _coefficient(coefficient: sympy.Expr, bindings: Bindings) -> float:
    """A term's coefficient as a number, with its size symbols and size expressions bound."""
    if coefficient.is_number:
        return float(coefficient)
    known = {k: sympy.Integer(v) for k, v in bindings.items() if not k.is_Symbol}
    value = coefficient.xreplace(known).xreplace({k: sympy.Integer(v) for k, v in bindings.symbols().items()})
    if not value.is_number:
        raise ValueError(f"coefficient {coefficient} needs values for {sorted(map(str, value.free_symbols))}")
    return float(value)


PLAN_CACHE: LRUCache[Plan] = LRUCache(maxsize=512)


def get_plan(
    expr: Expression,
    shapes: ShapeMap,
    like: Any,
    optimize: Any = "auto",
    check: Callable[[Mapping[sympy.Symbol, int]], None] | None = None,
) -> Plan:
    """The compiled plan for ``expr`` at these shapes on ``like``'s backend, device and dtype (cached)."""
    backend: Backend = backend_of(like)
    key: Hashable = (
        expr,
        tuple(sorted((k, tuple(v)) for k, v in shapes.items())),
        backend.name,
        backend.device_key(like),
        backend.dtype_key(like),
        cache_key(optimize),
    )
    return PLAN_CACHE.get_or_build(key, lambda: Plan(expr, shapes, like, optimize, check))


__all__ = ["OUTPUT", "PLAN_CACHE", "Plan", "PlanStep", "TermPlan", "get_plan"]
