"""The explorer's data: for one term of a derived quantity, the candidate contraction orders and their steps.

Every candidate is an explicit path over the term's network *as derived* (the order an explicit
``optimize=path`` addresses), and every number shown for it comes from ``tnderiv.plan(...,
optimize=path)`` itself, so an exported path reproduces exactly what the page shows. The row that
``tnderiv.plan`` picks on its own (``optimize="auto"``, plan-stage rewrites included) is marked; if
its order runs on a rewritten network that a path cannot address, it gets its own row (export:
``optimize="auto"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import opt_einsum as oe
import sympy

from tnderiv.api import plan as plan_of
from tnderiv.explore.settings import Resolved, Settings, Target, layer_kinds, quantities_of, resolve, symbols_of
from tnderiv.explore.svgmeta import annotated_svg, derivation_strip, leg_info, node_info
from tnderiv.ir import Diagram, Node, size_symbol, terms_of
from tnderiv.plan import Plan
from tnderiv.plan.bind import Bindings

# opt_einsum's optimizers shown as candidates; the exponential ones only for small networks
OPT_EINSUM = (("optimal", 7), ("branch-all", 7), ("branch-2", 12), ("dp", 16), ("greedy", None), ("auto-hq", None))
Path = list[tuple[int, ...]]


def _key(node: Node) -> tuple[Any, ...]:
    return (node.kind, node.name, node.legs)


def network_nodes(term: Diagram, plan: Plan) -> list[int]:
    """For each tensor of the plan's network, its index in ``term`` (broadcast ``ones`` are left out of plans)."""
    network = plan.term_plans[0].network.nodes
    found, start = [], 0
    for node in network:
        for j in range(start, len(term.nodes)):
            if _key(term.nodes[j]) == _key(node):
                found.append(j)
                start = j + 1
                break
        else:
            return []
    return found


def equation_of(plan: Plan) -> tuple[str, list[tuple[int, ...]]]:
    """The single-letter einsum of a one-term plan's network and its operand shapes (for opt_einsum)."""
    term = plan.term_plans[0]
    symbol = {leg: oe.get_symbol(j) for j, leg in enumerate(term.sizes)}
    nodes = term.network.nodes
    equation = ",".join("".join(symbol[x] for x in n.legs) for n in nodes) + "->" + "".join(symbol[x] for x in term.network.out_legs)
    return equation, [tuple(term.sizes[x] for x in n.legs) for n in nodes]


def opt_einsum_paths(plan: Plan) -> list[tuple[str, Path]]:
    """opt_einsum's paths for the plan's network, one per optimizer that fits its size."""
    count = len(plan.term_plans[0].network.nodes)
    if count < 2:
        return []
    equation, shapes = equation_of(plan)
    out = []
    for name, limit in OPT_EINSUM:
        if limit is not None and count > limit:
            continue
        path, _ = oe.contract_path(equation, *shapes, shapes=True, optimize=name)
        out.append((name, [tuple(int(i) for i in step) for step in path]))
    return out


def covered(path: Sequence[Sequence[int]], count: int) -> list[tuple[list[int], list[int]]]:
    """Per step of ``path`` (opt_einsum convention): the original tensors it consumes directly, and all it covers."""
    current: list[list[int]] = [[j] for j in range(count)]
    out = []
    for positions in path:
        taken = [current.pop(p) for p in sorted(positions, reverse=True)]
        fresh = sorted(j for group in taken if len(group) == 1 for j in group)
        merged = sorted(j for group in taken for j in group)
        current.append(merged)
        out.append((fresh, merged))
    return out


def _compatible(a: Plan, b: Plan) -> bool:
    """Whether two one-term plans contract the same tensors in the same order (a path means the same in both)."""
    na, nb = a.term_plans[0].network.nodes, b.term_plans[0].network.nodes
    return len(na) == len(nb) and all((x.kind, x.name) == (y.kind, y.name) for x, y in zip(na, nb))


def _steps(plan: Plan, index: list[int]) -> list[dict[str, Any]]:
    steps = plan.steps()
    sizes = plan.term_plans[0].sizes
    cover = covered(plan.path, len(plan.term_plans[0].network.nodes)) if index else []
    out = []
    for number, step in enumerate(steps):
        legs = step.equation.rsplit("->", 1)[1].strip("[]")
        out_legs = [leg for leg in legs.split(",") if leg]
        row = {"equation": step.equation, "kernel": step.kind, "flops": step.flops, "flops_dense": step.flops_dense,
               "size": step.size, "moved": step.moved, "out_legs": out_legs,
               "out_shape": [sizes.get(leg, 0) for leg in out_legs], "nodes": [], "fresh": []}  # fmt: skip
        if len(cover) == len(steps):
            fresh, merged = cover[number]
            row["nodes"], row["fresh"] = [index[j] for j in merged], [index[j] for j in fresh]
        out.append(row)
    return out


def _numbers(plan: Plan) -> dict[str, Any]:
    return {"flops_dense": plan.dense_flops, "flops": plan.flops, "score": plan.score, "peak_size": plan.peak_size,
            "peak_memory": plan.peak_memory}  # fmt: skip


def candidates(resolved: Resolved, index: int) -> dict[str, Any]:
    """The candidate orders of term ``index``, with steps, and which one ``tnderiv.plan`` picks."""
    term = resolved.terms[index]
    shapes = resolved.term_shapes(index)
    base = plan_of(term, shapes, optimize="greedy", simplify=False)
    auto = plan_of(term, shapes, simplify=resolved.settings.simplify)
    nodes = network_nodes(term, base)
    named: list[tuple[str, Path]] = []
    for c in auto.candidates:
        label, _, rest = c.name.partition(": ")
        if not rest:
            named.append((c.name, [tuple(p) for p in c.path]))
        elif label == "as derived":
            named.append((rest, [tuple(p) for p in c.path]))
    named += opt_einsum_paths(base)
    rows: dict[tuple[tuple[int, ...], ...], dict[str, Any]] = {}
    for name, path in named:
        key = tuple(path)
        if key in rows:
            if name not in rows[key]["names"]:
                rows[key]["names"].append(name)
            continue
        p = plan_of(term, shapes, optimize=path)
        rows[key] = {"names": [name], "path": [list(s) for s in path], "optimize": [list(s) for s in path],
                     **_numbers(p), "steps": _steps(p, nodes), "tnderiv": False}  # fmt: skip
    chosen = next((c for c in auto.candidates if c.chosen), None)
    auto_path = tuple(tuple(p) for p in auto.path)
    rewrites = list(auto.term_plans[0].rewrites)
    note = ""
    if _compatible(auto, base) and auto_path in rows:
        rows[auto_path]["tnderiv"] = True
        if rewrites:
            note = (f"tnderiv.plan runs this order after the plan-time rewrites {', '.join(rewrites)} "
                    f"(structure-aware score {auto.score:,.0f} there)")  # fmt: skip
    else:
        name = chosen.name if chosen is not None else "auto"
        rows[("auto",)] = {"names": [f"tnderiv: {name}"], "path": [list(s) for s in auto_path], "optimize": "auto",
                           **_numbers(auto), "steps": _steps(auto, nodes if _compatible(auto, base) else []),
                           "tnderiv": True}  # fmt: skip
        note = "tnderiv.plan picks an order on the network after plan-time rewrites (" + ", ".join(rewrites) + \
            "); an explicit path skips those rewrites, so this row exports optimize='auto'"
    ordered = sorted(rows.values(), key=lambda r: (not r["tnderiv"], r["score"]))
    for number, row in enumerate(ordered):
        row["id"] = f"c{number}"
        row["export"] = export_of(resolved, index, row)
    return {"candidates": ordered, "auto_note": note, "network": nodes}


def _python_path(optimize: Any) -> str:
    if optimize == "auto":
        return '"auto"'
    return "[" + ", ".join("(" + ", ".join(str(i) for i in step) + ("," if len(step) == 1 else "") + ")" for step in optimize) + "]"


def export_of(resolved: Resolved, index: int, row: dict[str, Any]) -> dict[str, Any]:
    """The chosen order as data (``optimize`` for ``tnderiv.plan``) and as the Python call that reproduces the row."""
    single = len(resolved.terms) == 1
    shapes = resolved.term_shapes(index)
    data = {"spec": resolved.spec, "quantity": resolved.quantity, "simplify": resolved.settings.simplify,
            "term": index, "terms": len(resolved.terms), "shapes": {k: list(v) for k, v in shapes.items()},
            "optimize": row["optimize"], "order": row["names"][0]}  # fmt: skip
    shape_text = "{" + ", ".join(f"{k!r}: {tuple(v)!r}" for k, v in shapes.items()) + "}"
    lines = ["import tnderiv"]
    if resolved.spec is not None:
        lines += ["from tnderiv.render.spec import parse_spec", "", f"layer, rank_shapes = parse_spec({resolved.spec!r})"]
    elif resolved.layer is not None:
        lines += ["", "layer = ...  # the layer you passed to tnderiv.explore", "rank_shapes = {}"]
    else:
        lines += ["", "expr = ...  # the diagram you passed to tnderiv.explore"]
    simplify = "" if resolved.settings.simplify else ", simplify=False"
    path = _python_path(row["optimize"])
    if resolved.layer is not None and single:
        lines.append(f"plan = tnderiv.plan(layer, {shape_text}, quantity={resolved.quantity!r}, optimize={path}{simplify})")
    else:
        if resolved.layer is not None:
            lines.append(f"expr = tnderiv.diagram(layer, {resolved.quantity!r}, shapes=rank_shapes{simplify})")
        elif resolved.settings.simplify:
            lines.append("expr = tnderiv.simplify(expr)")
        target = "expr" if single else f"expr.terms[{index}]"
        lines.append(f"plan = tnderiv.plan({target}, {shape_text}, optimize={path}{simplify})")
    lines.append("print(plan)")
    return {"json": data, "python": "\n".join(lines)}


def build_report(target: Target, settings: Settings) -> dict[str, Any]:
    """Everything the page shows for ``settings`` (JSON-ready); raises the library's errors for bad settings."""
    resolved = resolve(target, settings)
    # the whole expression once, with the layer's own size checks: an invalid setting fails here
    whole = plan_of(resolved.expr, resolved.shapes, simplify=settings.simplify) if resolved.layer is None else plan_of(
        resolved.layer, resolved.shapes, quantity=resolved.quantity, simplify=settings.simplify
    )
    index = settings.term
    term = resolved.terms[index]
    sizes = _term_sizes(resolved, index)
    found = candidates(resolved, index)
    strip = derivation_strip(resolved.raw) if settings.simplify else None
    return {
        "settings": {**settings.to_dict(), "spec": resolved.spec, "quantity": resolved.quantity, "sizes": resolved.sizes},
        "target": target.label,
        "editable": resolved.layer is not None,
        "spec_editable": resolved.spec is not None,
        "layer_kinds": layer_kinds(),
        "quantities": _quantities(resolved),
        "expression": str(resolved.expr),
        "terms": [str(t) for t in terms_of(resolved.expr)],
        "term": index,
        "symbols": symbols_of(resolved.expr),
        "shapes": {k: list(v) for k, v in resolved.shapes.items()},
        "term_shapes": {k: list(v) for k, v in resolved.term_shapes(index).items()},
        "diagram": {"svg": annotated_svg(term, sizes), "nodes": node_info(term, sizes), "legs": leg_info(term, sizes),
                    "text": str(term)},  # fmt: skip
        "strip": strip,
        "whole": {"flops": whole.flops, "flops_dense": whole.dense_flops, "peak_memory": whole.peak_memory},
        **found,
    }


def _quantities(resolved: Resolved) -> list[str]:
    """The quantity names the page offers; the current one first among them even if spelled short (``per_sample_grad``)."""
    if resolved.layer is None:
        return []
    names = quantities_of(resolved.layer, resolved.rank_shapes)
    return names if resolved.quantity in names else [resolved.quantity, *names]


def _term_sizes(resolved: Resolved, index: int) -> dict[str, int]:
    bindings = Bindings({size_symbol(k): v for k, v in resolved.sizes.items()})
    return {leg: bindings.value(sympy.sympify(size)) for leg, size in resolved.terms[index].sizes.items()}
