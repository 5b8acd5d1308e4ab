"""Diagrams (tensor networks with open legs and a coefficient) and sums of diagrams."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import sympy

from tnderiv.ir.canonical import diagram_hash, isomorphic
from tnderiv.ir.drawing import Drawable
from tnderiv.ir.legs import Size, as_size
from tnderiv.ir.nodes import Node, NodeKind, split_groups


@dataclass(frozen=True, eq=False)
class Diagram(Drawable):
    """A tensor network: ``coefficient · Σ_{summed legs} Π nodes``, indexed by ``open_legs``.

    ``open_groups`` says how the open legs merge into the result's axes (``None``: one per leg).
    Diagrams are values: hashing and equality are invariant under renaming of summed legs.
    """

    nodes: tuple[Node, ...]
    open_legs: tuple[str, ...]
    sizes: Mapping[str, Size]
    coefficient: sympy.Expr = field(default=sympy.Integer(1))
    open_groups: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        sizes = {leg: as_size(s) for leg, s in self.sizes.items()}
        used = {leg for node in self.nodes for leg in node.legs}
        missing = (used | set(self.open_legs)) - set(sizes)
        if missing:
            raise ValueError(f"legs without a size: {sorted(missing)}")
        if len(set(self.open_legs)) != len(self.open_legs):
            raise ValueError(f"open legs repeat: {self.open_legs}")
        dangling = set(self.open_legs) - used
        if dangling:
            raise ValueError(f"open legs {sorted(dangling)} are on no node (attach a ones node to broadcast)")
        if self.open_groups is not None and sum(self.open_groups) != len(self.open_legs):
            raise ValueError(f"open_groups {self.open_groups} do not cover open legs {self.open_legs}")
        object.__setattr__(self, "sizes", {leg: sizes[leg] for leg in sorted(used | set(self.open_legs))})
        object.__setattr__(self, "coefficient", sympy.sympify(self.coefficient))

    # ----- facts -------------------------------------------------------------------------------
    @cached_property
    def legs(self) -> tuple[str, ...]:
        """All leg names, open and summed, in first-appearance order."""
        seen: dict[str, None] = {}
        for node in self.nodes:
            seen.update(dict.fromkeys(node.legs))
        return tuple(seen)

    @cached_property
    def summed_legs(self) -> tuple[str, ...]:
        """Legs contracted over."""
        open_ = set(self.open_legs)
        return tuple(leg for leg in self.legs if leg not in open_)

    @cached_property
    def leg_count(self) -> Counter[str]:
        """How many nodes carry each leg."""
        return Counter(leg for node in self.nodes for leg in node.legs)

    @property
    def operand_names(self) -> tuple[str, ...]:
        """Names of the runtime operands, in node order, without repeats."""
        return tuple(dict.fromkeys(n.name for n in self.nodes if n.kind is NodeKind.OPERAND))

    @property
    def open_axis_groups(self) -> tuple[tuple[str, ...], ...]:
        """Open legs grouped into the axes of the result."""
        return split_groups(self.open_legs, self.open_groups)

    def nodes_with(self, leg: str) -> tuple[int, ...]:
        """Indices of the nodes carrying ``leg``."""
        return tuple(i for i, node in enumerate(self.nodes) if leg in node.legs)

    def free_symbols(self) -> set[sympy.Symbol]:
        """Size symbols the diagram depends on."""
        return set().union(*(s.free_symbols for s in self.sizes.values()))

    # ----- value semantics ---------------------------------------------------------------------
    @cached_property
    def canonical_hash(self) -> str:
        """Weisfeiler–Lehman hash of the labelled graph; invariant under renaming summed legs."""
        return diagram_hash(self)

    @cached_property
    def _structure(self) -> tuple:
        return (self.nodes, self.open_legs, tuple(self.sizes.items()), self.coefficient, self.open_groups)

    @property
    def exact_key(self) -> tuple:
        """Equal only for identical diagrams (same leg names): cheap to hash, unlike the canonical hash, for
        caches where a renamed copy may miss (and be planned again) but must never be confused."""
        return ("diagram", self._structure)

    def __hash__(self) -> int:
        return hash(self.canonical_hash)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Diagram):
            return NotImplemented
        if self is other or self._structure == other._structure:
            return True
        if self.canonical_hash != other.canonical_hash:
            return False
        return isomorphic(self, other)

    # ----- checked edits (each returns a new diagram) ------------------------------------------
    def rename(self, mapping: Mapping[str, str]) -> Diagram:
        """Rename legs; every key must be a leg of the diagram and names must not collide."""
        unknown = set(mapping) - set(self.sizes)
        if unknown:
            raise KeyError(f"cannot rename legs {sorted(unknown)}: the diagram has legs {sorted(self.sizes)}")
        new_names = [mapping.get(leg, leg) for leg in self.sizes]
        if len(set(new_names)) != len(new_names):
            raise ValueError(f"renaming {dict(mapping)} merges distinct legs")

        def r(legs: Iterable[str]) -> tuple[str, ...]:
            return tuple(mapping.get(leg, leg) for leg in legs)

        return Diagram(
            nodes=tuple(node.with_legs(r(node.legs)) for node in self.nodes),
            open_legs=r(self.open_legs),
            sizes={mapping.get(leg, leg): s for leg, s in self.sizes.items()},
            coefficient=self.coefficient,
            open_groups=self.open_groups,
        )

    def replace(
        self,
        *,
        nodes: tuple[Node, ...] | None = None,
        open_legs: tuple[str, ...] | None = None,
        sizes: Mapping[str, Size] | None = None,
        coefficient: sympy.Expr | float | None = None,
        open_groups: tuple[int, ...] | None | str = "keep",
    ) -> Diagram:
        """A copy with some fields changed (sizes of new legs are added to the old ones)."""
        all_sizes = dict(self.sizes)
        all_sizes.update(sizes or {})
        new_open = self.open_legs if open_legs is None else open_legs
        groups = self.open_groups if open_groups == "keep" else open_groups
        if open_legs is not None and open_groups == "keep" and len(new_open) != len(self.open_legs):
            groups = None
        return Diagram(
            nodes=self.nodes if nodes is None else nodes,
            open_legs=new_open,
            sizes={leg: s for leg, s in all_sizes.items()},
            coefficient=self.coefficient if coefficient is None else coefficient,
            open_groups=groups,  # type: ignore[arg-type]
        )

    def scaled(self, factor: sympy.Expr | float) -> Diagram:
        """The diagram times ``factor``."""
        return self.replace(coefficient=self.coefficient * sympy.sympify(factor))

    def fresh_leg(self, base: str, taken: Iterable[str] = ()) -> str:
        """A leg name starting with ``base`` that the diagram does not use."""
        used = set(self.sizes) | set(taken)
        if base not in used:
            return base
        for i in itertools.count(1):
            name = f"{base}_{i}"
            if name not in used:
                return name
        raise AssertionError("unreachable")

    # ----- printing ----------------------------------------------------------------------------
    def to_einsum(self) -> str:
        """The diagram as an einsum with the leg names, e.g. ``x[n,c_in],weight[c_out,c_in]->[n,c_out]``."""
        ops = ",".join(f"{node_tag(node)}[{','.join(node.legs)}]" for node in self.nodes)
        coef = "" if self.coefficient == 1 else f"{self.coefficient}·"
        return f"{coef}{ops}->[{','.join(self.open_legs)}]"

    def __str__(self) -> str:
        return self.to_einsum()

    def __repr__(self) -> str:
        return f"Diagram({self.to_einsum()})"


def node_tag(node: Node) -> str:
    """Printable name of a node with its pattern hyperparameters."""
    if node.kind is NodeKind.PATTERN and node.pattern is not None:
        return f"Π⟨{node.pattern.label()}⟩"
    return node.display_name


@dataclass(frozen=True, eq=False)
class DiagramSum(Drawable):
    """A sum of diagrams with the same open legs (normalization Jacobians, layers with a bias)."""

    terms: tuple[Diagram, ...]

    def __post_init__(self) -> None:
        if not self.terms:
            raise ValueError("a sum needs at least one term")
        first = self.terms[0]
        for term in self.terms[1:]:
            if term.open_legs != first.open_legs or term.open_groups != first.open_groups:
                raise ValueError(
                    f"terms of a sum must share open legs: {first.open_legs} vs {term.open_legs}"
                )

    @property
    def open_legs(self) -> tuple[str, ...]:
        return self.terms[0].open_legs

    @property
    def open_groups(self) -> tuple[int, ...] | None:
        return self.terms[0].open_groups

    @property
    def open_axis_groups(self) -> tuple[tuple[str, ...], ...]:
        return self.terms[0].open_axis_groups

    @property
    def sizes(self) -> dict[str, Size]:
        """Sizes of the open legs (shared by all terms)."""
        return {leg: self.terms[0].sizes[leg] for leg in self.open_legs}

    @property
    def operand_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name for t in self.terms for name in t.operand_names))

    @cached_property
    def canonical_hash(self) -> str:
        return "+".join(sorted(t.canonical_hash for t in self.terms))

    @property
    def exact_key(self) -> tuple:
        """As ``Diagram.exact_key``, term by term in order."""
        return ("sum", tuple(t.exact_key for t in self.terms))

    def __hash__(self) -> int:
        return hash(self.canonical_hash)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DiagramSum):
            return NotImplemented
        if len(self.terms) != len(other.terms) or self.canonical_hash != other.canonical_hash:
            return False
        remaining = list(other.terms)
        for term in self.terms:
            match = next((i for i, t in enumerate(remaining) if t == term), None)
            if match is None:
                return False
            remaining.pop(match)
        return True

    def to_einsum(self) -> str:
        return " + ".join(t.to_einsum() for t in self.terms)

    def __str__(self) -> str:
        return self.to_einsum()

    def __repr__(self) -> str:
        return f"DiagramSum({self.to_einsum()})"


Expression = Diagram | DiagramSum


def terms_of(expr: Expression) -> tuple[Diagram, ...]:
    """The terms of a diagram or a sum."""
    return expr.terms if isinstance(expr, DiagramSum) else (expr,)


def make_sum(terms: Iterable[Diagram]) -> Expression | None:
    """A diagram, a sum, or ``None`` for an empty (zero) sum."""
    terms = tuple(terms)
    if not terms:
        return None
    return terms[0] if len(terms) == 1 else DiagramSum(terms)
