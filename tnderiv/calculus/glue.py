"""Gluing diagrams: products of a network with (a renamed copy of) another, sharing chosen legs.

Quadratic statistics, KFAC factors and GGN blocks are all ``glue(half, half, shared=...)`` with a
choice of which legs stay open.
"""

from __future__ import annotations

from collections.abc import Sequence

from tnderiv.ir import Diagram, Expression, make_sum, terms_of


def glue(
    a: Expression,
    b: Expression,
    *,
    shared: Sequence[str] = (),
    open_legs: Sequence[str] | None = None,
    suffix: str = "'",
) -> Expression:
    """``a ⊗ b`` with the ``shared`` open legs identified (a hyperedge); every other leg of ``b`` gets ``suffix``.

    The result's open legs are ``open_legs`` (names from ``a``, or ``b``'s with the suffix) or, by
    default, ``a``'s open legs followed by ``b``'s unshared ones. Shared legs left out of
    ``open_legs`` are summed. Sums distribute (term by term).
    """
    terms = [_glue_terms(ta, tb, tuple(shared), open_legs, suffix) for ta in terms_of(a) for tb in terms_of(b)]
    result = make_sum(terms)
    assert result is not None
    return result


def _glue_terms(a: Diagram, b: Diagram, shared: tuple[str, ...], open_legs: Sequence[str] | None, suffix: str) -> Diagram:
    for leg in shared:
        for side, d in (("first", a), ("second", b)):
            if leg not in d.open_legs:
                raise ValueError(f"shared leg {leg!r} is not an open leg of the {side} diagram {d.open_legs}")
        if a.sizes[leg] != b.sizes[leg]:
            raise ValueError(f"shared leg {leg!r} has size {a.sizes[leg]} in one diagram and {b.sizes[leg]} in the other")
    # rename b away from a: unshared legs get the suffix (repeated until free)
    taken = set(a.sizes) | set(shared)
    mapping: dict[str, str] = {}
    for leg in b.sizes:
        if leg in shared:
            continue
        new = leg + suffix
        while new in taken or new in b.sizes:
            new += suffix
        mapping[leg] = new
        taken.add(new)
    b2 = b.rename(mapping)
    default_open = a.open_legs + tuple(leg for leg in b2.open_legs if leg not in shared)
    chosen = tuple(default_open if open_legs is None else open_legs)
    available = set(a.open_legs) | set(b2.open_legs)
    unknown = set(chosen) - available
    if unknown:
        raise ValueError(f"open legs {sorted(unknown)} are not open legs of the glued diagrams {sorted(available)}")
    sizes = dict(a.sizes)
    sizes.update(b2.sizes)
    return Diagram(a.nodes + b2.nodes, chosen, sizes, a.coefficient * b2.coefficient)


def sum_legs(expr: Expression, legs: Sequence[str]) -> Expression:
    """Sum over open ``legs`` (they become summed legs); raises for legs that are not open."""
    out = []
    for term in terms_of(expr):
        missing = set(legs) - set(term.open_legs)
        if missing:
            raise ValueError(f"cannot sum over {sorted(missing)}: open legs are {term.open_legs}")
        keep = tuple(leg for leg in term.open_legs if leg not in legs)
        out.append(term.replace(open_legs=keep, open_groups=None))
    result = make_sum(out)
    assert result is not None
    return result
