"""What a plan says about itself: per step the einsum in the user's leg names, kernel, FLOPs under both models, sizes.

``PlanStep`` is one row; ``format_text`` and ``format_html`` lay out a whole plan (``str(plan)``,
``plan._repr_html_()``).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

from tnderiv.plan.cost import KernelKind
from tnderiv.plan.protocol import CompiledPlan


@dataclass(frozen=True)
class PlanStep:
    """One step of a plan, in the user's leg names.

    ``kind``: GEMM, batched GEMM, elementwise, outer product, reduction, transpose, gather, scatter,
    relabel, conv, conv_transpose, conv_weight or folded (a constant-only step, done when the plan was
    built). ``flops_dense``: FLOPs with every tensor dense (opt_einsum's count); ``flops``: under the
    structure-aware model; ``moved``: elements a data-movement kernel reads and writes; ``size``:
    elements of the step's output.
    """

    inputs: tuple[str, ...]
    equation: str
    kind: KernelKind
    flops_dense: int
    flops: int
    moved: int
    size: int
    term: int = 0
    score: float = 0.0

    @property
    def blas(self) -> str:
        """The kernel kind (older name)."""
        return self.kind

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": list(self.inputs),
            "equation": self.equation,
            "kernel": self.kind,
            "flops_dense": self.flops_dense,
            "flops": self.flops,
            "moved": self.moved,
            "size": self.size,
            "term": self.term,
            "score": self.score,
        }


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def format_text(plan: CompiledPlan) -> str:
    """The report ``str(plan)`` prints."""
    lines = [f"plan for {plan.expr}"]
    sizes = plan.to_dict()["sizes"]
    if sizes:
        lines.append("  sizes: " + ", ".join(f"{k}={v}" for k, v in sorted(sizes.items())))
    if plan.chunks is not None:
        leg, size, count = plan.chunks
        lines.append(f"  memory_limit={plan.memory_limit:,} bytes: split over {leg} into {count} chunks of ≤ {size} (steps below: one chunk)")
    for t, term in enumerate(plan.term_plans):
        if len(plan.term_plans) > 1:
            lines.append(f"  term {t + 1}: {term.term}")
        if term.rewrites:
            lines.append("    plan-time rewrites: " + ", ".join(term.rewrites))
        if term.network.broadcast:
            lines.append(f"    broadcast over {','.join(term.network.broadcast)}")
        for number, step in enumerate(term.steps()):
            lines.append(
                f"    {number + 1}. {step.equation}  [{step.kind}] flops={step.flops:,} (dense {step.flops_dense:,}) "
                f"size={step.size:,}"
            )
        others = [c for c in term.candidates if not c.chosen]
        chosen = next((c for c in term.candidates if c.chosen), None)
        if chosen is not None and others:
            lines.append(
                f"    order: {chosen.name} (score {chosen.time:,.0f}); rejected: "
                + ", ".join(f"{c.name} ({c.time:,.0f})" for c in sorted(others, key=lambda c: c.time))
            )
    lines.append(
        f"  total flops={plan.flops:,} (dense model {plan.dense_flops:,}), largest intermediate={plan.peak_size:,} elements, "
        f"peak memory={_bytes(plan.peak_memory)}"
    )
    return "\n".join(lines)


def format_html(plan: CompiledPlan) -> str:
    """An HTML table of the steps (Jupyter)."""
    esc = html.escape
    rows = []
    for t, term in enumerate(plan.term_plans):
        for number, step in enumerate(term.steps()):
            rows.append(
                f"<tr><td>{t + 1}.{number + 1}</td><td><code>{esc(step.equation)}</code></td><td>{esc(step.kind)}</td>"
                f"<td style='text-align:right'>{step.flops:,}</td><td style='text-align:right'>{step.flops_dense:,}</td>"
                f"<td style='text-align:right'>{step.size:,}</td></tr>"
            )
    head = "<tr><th>step</th><th>einsum</th><th>kernel</th><th>FLOPs</th><th>FLOPs (dense)</th><th>size</th></tr>"
    foot = (
        f"<tr><td colspan='3'><b>total</b> (peak memory {esc(_bytes(plan.peak_memory))})</td>"
        f"<td style='text-align:right'>{plan.flops:,}</td><td style='text-align:right'>{plan.dense_flops:,}</td>"
        f"<td style='text-align:right'>{plan.peak_size:,}</td></tr>"
    )
    return f"<div><p><code>{esc(str(plan.expr))}</code></p><table>{head}{''.join(rows)}{foot}</table></div>"
