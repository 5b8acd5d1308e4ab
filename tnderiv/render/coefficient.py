"""Coefficients of terms as drawn: in the users' size names, as a stacked fraction in TeX and in SVG.

A coefficient is a product of sizes (``1/(N·O0·O1)``). Where a factor is the size of a leg written
through other sizes (``o0`` has size ``I0 − 2``, or ``floor(I0/2 − 1/2) + 1`` with a stride), the
leg's own size symbol is printed instead (``O0``: the leg's name in capitals, primes dropped).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import sympy

from tnderiv.ir import Diagram, NodeKind
from tnderiv.render.labels import PT_TO_CM, char_em, leg_label

Run = tuple[str, str]  # (text, role): role ∈ italic, upright, sub, sup
BATCH = "N"  # printed first in a product
_NAME = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)?$")


@dataclass(frozen=True)
class Formula:
    """A coefficient ready to draw: ``numerator`` over ``denominator`` (empty: not a fraction)."""

    tex: str
    plain: str
    numerator: tuple[Run, ...]
    denominator: tuple[Run, ...] = ()

    def width(self, size_pt: float) -> float:
        """Estimated width in cm (the wider of numerator and denominator)."""
        return max(_runs_width(self.numerator, size_pt), _runs_width(self.denominator, size_pt))

    def height(self, size_pt: float) -> float:
        em = size_pt * PT_TO_CM
        return 2.5 * em if self.denominator else 1.1 * em


def size_names(sizes: Mapping[str, object]) -> dict[sympy.Expr, sympy.Symbol]:
    """Size expressions that are the size of a leg → that leg's size symbol (``I0 - 2`` → ``O0``)."""
    taken = set()
    expressions = {}
    for leg in sorted(sizes):
        size = sympy.sympify(sizes[leg])
        taken |= {str(s) for s in size.free_symbols}
        base = leg.rstrip("'")
        if size.is_Atom or not size.free_symbols or not _NAME.match(base):
            continue
        expressions.setdefault(size, base[0].upper() + base[1:])
    names: dict[sympy.Expr, sympy.Symbol] = {}
    for size, name in expressions.items():
        if name not in taken and name not in {str(s) for s in names.values()}:
            names[size] = sympy.Symbol(name, positive=True, integer=True)
    return names


def leg_sizes(diagram: Diagram) -> dict[str, object]:
    """Sizes of the legs of ``diagram`` and of the networks folded into its constants (``o0`` inside Π̄)."""
    sizes: dict[str, object] = {}
    for node in diagram.nodes:
        if node.network is None:
            continue
        # a folded pattern Π̄[k, i] = Σ_o Π[k, o, i]: its summed leg is the output leg of the same dimension
        outer = dict(zip(node.network.open_legs, node.legs))
        for inner in node.network.nodes:
            summed = [leg for leg in inner.legs if leg not in outer]
            if inner.kind is not NodeKind.PATTERN or len(summed) != 1:
                continue
            match = next((m for leg in inner.legs if (m := re.search(r"(\d+)'*$", outer.get(leg, "")))), None)
            if match:
                sizes.setdefault(f"o{match[1]}", node.network.sizes[summed[0]])
    sizes.update(diagram.sizes)
    return sizes


def in_size_names(value: sympy.Expr, sizes: Mapping[str, object]) -> sympy.Expr:
    """``value`` with every factor that is a leg's size replaced by the leg's size symbol."""
    names = size_names(sizes)
    if not names:
        return value
    candidates = [value.xreplace(names), sympy.factor(value).xreplace(names)]
    return min(candidates, key=lambda v: (len(v.free_symbols & set(_originals(names))), sympy.count_ops(v)))


def _originals(names: Mapping[sympy.Expr, sympy.Symbol]) -> set[sympy.Symbol]:
    """The symbols the named sizes are written in (``I0`` for ``O0 = I0 − 2``)."""
    out: set[sympy.Symbol] = set()
    for size in names:
        out |= size.free_symbols
    return out


def formula(value: sympy.Expr) -> Formula:
    """The drawing of a positive coefficient ``value``."""
    value = value.xreplace({f: sympy.Symbol(f"{float(f):g}") for f in value.atoms(sympy.Float)})
    numerator, denominator = sympy.fraction(value)
    top = _product(numerator)
    if denominator == 1:
        return Formula(top[0], top[1], top[2])
    bottom = _product(denominator)
    plain_bottom = bottom[1] if len(sympy.Mul.make_args(denominator)) == 1 else f"({bottom[1]})"
    return Formula(rf"\displaystyle\frac{{{top[0]}}}{{{bottom[0]}}}", f"{top[1]}/{plain_bottom}", top[2], bottom[2])


def _product(value: sympy.Expr) -> tuple[str, str, tuple[Run, ...]]:
    """TeX, plain text and SVG runs of a product, numbers first, then ``N``, then by name."""
    factors = sorted(sympy.Mul.make_args(value), key=_factor_order)
    tex, plain, runs = [], [], []
    for index, factor in enumerate(factors):
        t, p, r = _factor(factor)
        if len(factors) > 1 and factor.is_Add:
            t, p, r = rf"\left({t}\right)", f"({p})", (("(", "upright"), *r, (")", "upright"))
        tex.append(t)
        plain.append(p)
        runs.extend(([("·", "upright")] if index else []) + list(r))
    return r"\,".join(tex), "·".join(plain), tuple(runs)


def _factor_order(factor: sympy.Expr) -> tuple[int, str]:
    base = factor.as_base_exp()[0]
    if base.is_Number:
        return (0, "")
    if base.is_Symbol:
        return (1 if base.name == BATCH else 2, base.name)
    return (3, sympy.sstr(base))


def _factor(factor: sympy.Expr) -> tuple[str, str, tuple[Run, ...]]:
    base, exponent = factor.as_base_exp()
    if base.is_Number or exponent == 1:
        return _atom(factor)
    t, p, r = _atom(base)
    if not (base.is_Symbol or base.is_Number):
        t, p, r = rf"\left({t}\right)", f"({p})", (("(", "upright"), *r, (")", "upright"))
    power = sympy.sstr(exponent)
    return f"{t}^{{{power}}}", f"{p}^{power}", (*r, (power, "sup"))


def _atom(value: sympy.Expr) -> tuple[str, str, tuple[Run, ...]]:
    if value.is_Symbol:
        label = leg_label(value.name)
        return label.tex(), value.name, tuple(label.svg_runs())
    if value.is_Number:
        text = sympy.sstr(value)
        return text, text, ((text, "upright"),)
    plain = sympy.sstr(value).replace("**", "^").replace("*", "·")
    return sympy.latex(value), plain, ((plain, "upright"),)


def _runs_width(runs: tuple[Run, ...], size_pt: float) -> float:
    em = size_pt * PT_TO_CM
    scale = {"sub": 0.8, "sup": 0.8}  # TeX sets scripts at 7 pt, plus \\scriptspace
    return sum((0.3 if c == "·" else char_em(c)) * em * scale.get(role, 1.0) for text, role in runs for c in text)


__all__ = ["Formula", "formula", "in_size_names", "leg_sizes", "size_names"]
