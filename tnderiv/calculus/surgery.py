"""Derivation by graph surgery: cut a node out, attach a cotangent, replace a node by a tangent.

Derivatives are never simplified here; the simplifier removes the copy tensors the cut leaves.
"""

from __future__ import annotations

from collections.abc import Sequence

from tnderiv.ir import Diagram, Expression, Node, NodeKind, delta, make_sum, operand, terms_of


def _occurrences(term: Diagram, name: str) -> list[int]:
    return [i for i, node in enumerate(term.nodes) if node.kind is NodeKind.OPERAND and node.name == name]


def _require_operand(expr: Expression, name: str) -> None:
    names = {n for term in terms_of(expr) for n in term.operand_names}
    if name not in names:
        raise ValueError(f"the diagram has no operand {name!r}; its operands are {sorted(names)}")


def vjp(
    expr: Expression,
    wrt: str,
    *,
    cotangent: str = "grad_out",
    keep_open: Sequence[str] = (),
) -> Expression:
    """``Σ_out cotangent[out] · ∂expr[out]/∂wrt``: cut ``wrt`` out and attach ``cotangent`` to the open legs.

    The result's open legs are ``keep_open`` (summed legs of ``expr`` kept per entry, e.g. the batch
    leg for per-sample gradients) followed by the legs of ``wrt``. Product rule for repeated operands.
    """
    _require_operand(expr, wrt)
    terms = [cut for term in terms_of(expr) for cut in _vjp_term(term, wrt, cotangent, tuple(keep_open))]
    result = make_sum(_align_open_legs(terms))
    if result is None:
        raise ValueError(f"the diagram does not depend on {wrt!r}")
    return result


def _vjp_term(term: Diagram, wrt: str, cotangent: str, keep_open: tuple[str, ...]) -> list[Diagram]:
    out = []
    for index in _occurrences(term, wrt):
        target = term.nodes[index]
        clash = set(keep_open) & set(target.legs)
        if clash:
            raise ValueError(f"cannot keep legs {sorted(clash)} open: they are legs of {wrt!r} itself")
        missing = set(keep_open) - set(term.sizes)
        if missing:
            raise ValueError(f"cannot keep legs {sorted(missing)} open: the diagram has legs {sorted(term.sizes)}")
        # primed names must not collide with the legs the cut leaves open (which keep their names)
        taken = set(keep_open + target.legs)
        prime = {}
        for leg in term.sizes:
            new = leg + "'"
            while new in taken:
                new += "'"
            prime[leg] = new
            taken.add(new)
        renamed = term.rename(prime)
        cuts = tuple(delta(prime[leg], leg) for leg in keep_open + target.legs)
        attached = operand(cotangent, *[tuple(prime[leg] for leg in group) for group in term.open_axis_groups])
        nodes = renamed.nodes[:index] + renamed.nodes[index + 1 :] + (attached,) + cuts
        open_legs = keep_open + target.legs
        sizes = {leg: term.sizes[leg] for leg in open_legs}
        groups = (1,) * len(keep_open) + tuple(len(g) for g in target.axis_groups)
        out.append(renamed.replace(nodes=nodes, open_legs=open_legs, sizes=sizes, open_groups=_groups(groups)))
    return out


def jvp(expr: Expression, wrt: str, *, tangent: str = "tangent") -> Expression:
    """The directional derivative of ``expr`` along ``tangent``: ``wrt`` replaced by ``tangent`` (product rule)."""
    _require_operand(expr, wrt)
    terms = []
    for term in terms_of(expr):
        for index in _occurrences(term, wrt):
            node = term.nodes[index]
            replaced = Node(NodeKind.OPERAND, node.legs, name=tangent, groups=node.groups)
            terms.append(term.replace(nodes=term.nodes[:index] + (replaced,) + term.nodes[index + 1 :]))
    result = make_sum(terms)
    if result is None:
        raise ValueError(f"the diagram does not depend on {wrt!r}")
    return result


def derivative(expr: Expression, wrt: str) -> Expression:
    """The Jacobian ``∂expr/∂wrt``: open legs are those of ``expr`` followed by primed copies of ``wrt``'s legs."""
    _require_operand(expr, wrt)
    terms = []
    for term in terms_of(expr):
        for index in _occurrences(term, wrt):
            target = term.nodes[index]
            new = {}
            for leg in target.legs:
                new[leg] = term.fresh_leg(leg + "'", taken=new.values())
            cuts = tuple(delta(leg, new[leg]) for leg in target.legs)
            nodes = term.nodes[:index] + term.nodes[index + 1 :] + cuts
            open_legs = term.open_legs + tuple(new[leg] for leg in target.legs)
            sizes = {new[leg]: term.sizes[leg] for leg in target.legs}
            groups = tuple(len(g) for g in term.open_axis_groups) + tuple(len(g) for g in target.axis_groups)
            terms.append(term.replace(nodes=nodes, open_legs=open_legs, sizes=sizes, open_groups=_groups(groups)))
    result = make_sum(_align_open_legs(terms))
    if result is None:
        raise ValueError(f"the diagram does not depend on {wrt!r}")
    return result


def _align_open_legs(terms: list[Diagram]) -> list[Diagram]:
    """Give every term the open-leg names of the first, by position.

    Product-rule terms (an operand occurring twice) and linearizations whose terms carry the operand
    on differently named legs cut it at different names; a sum needs one set of names.
    """
    if not terms:
        return terms
    names = terms[0].open_legs
    aligned = [terms[0]]
    for term in terms[1:]:
        if term.open_legs != names:
            clash = {leg: term.fresh_leg(leg + "'", taken=names) for leg in term.summed_legs if leg in names}
            term = term.rename(clash) if clash else term
            term = term.rename({a: b for a, b in zip(term.open_legs, names) if a != b})
        aligned.append(term)
    return aligned


def _groups(groups: tuple[int, ...]) -> tuple[int, ...] | None:
    return None if all(g == 1 for g in groups) else groups


__all__ = ["derivative", "jvp", "vjp"]
