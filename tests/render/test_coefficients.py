"""Coefficients: the users' size names, equal in value to the derived one, drawn whole and next to their term."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import sympy

from tnderiv.calculus import derive
from tnderiv.ir import Diagram, operand
from tnderiv.render import picture_of, to_svg
from tnderiv.render.coefficient import formula, in_size_names, leg_sizes, size_names
from tnderiv.render.compose import TERM_GAP
from tnderiv.render.gallery import Entry
from tnderiv.render.model import TextRole
from tnderiv.render.spec import parse_spec

SVG = "{http://www.w3.org/2000/svg}"
CASES = [  # (spec, quantity, the coefficient as printed)
    ("conv2d", "kfac_input_expand", "1/(N·O0·O1)"),
    ("conv2d:stride=2,padding=1,groups=2", "kfac_input_expand", "1/(N·O0·O1)"),
    ("conv2d:stride=2,padding=1,groups=2", "kfac_input_reduce", "1/(N·O0^2·O1^2)"),
    ("conv_transpose2d:stride=2", "kfac_input_expand", "1/(N·O0·O1)"),
    ("conv1d", "kfac_input_reduce", "1/(N·O0^2)"),
    ("layernorm", "kfac_input_expand", "1/(N·S0)"),
    ("groupnorm", "kfac_input_expand", "1/(N·I0·I1)"),
]


def _expression(spec_text: str, quantity: str):
    spec, shapes = parse_spec(spec_text)
    return derive(spec.network(shapes), quantity)


@pytest.mark.parametrize(("spec_text", "quantity", "printed"), CASES)
def test_coefficient_uses_the_size_names_of_the_legs(spec_text: str, quantity: str, printed: str) -> None:
    expr = _expression(spec_text, quantity)
    (text,) = [t for t in picture_of(expr).texts if t.role is TextRole.COEFFICIENT]
    assert text.plain == printed
    assert "floor" not in text.tex and "left(" not in text.tex
    # the same value: put each named size back (O0 → its expression) and compare with the derived coefficient
    term = expr.terms[0] if hasattr(expr, "terms") else expr
    names = size_names(leg_sizes(term))
    renamed = in_size_names(sympy.sympify(term.coefficient), leg_sizes(term))
    back = renamed.xreplace({symbol: size for size, symbol in names.items()})
    assert sympy.simplify(back - term.coefficient) == 0


def test_a_factor_that_is_no_legs_size_stays_an_expression() -> None:
    i0 = sympy.Symbol("I0", positive=True, integer=True)
    n = sympy.Symbol("N", positive=True, integer=True)
    d = Diagram((operand("x", "n", "i"),), ("i",), {"n": n, "i": i0}, coefficient=1 / (n * (i0 - 2)))
    (text,) = picture_of(d).texts
    assert text.plain == "1/(N·(I0 - 2))"
    assert formula(sympy.Integer(3) / 4).plain == "3/4" and formula(n**2).plain == "N^2"


def test_svg_draws_a_fraction_as_numerator_bar_and_denominator() -> None:
    svg = ET.fromstring(to_svg(_expression("conv2d", "kfac_input_expand")))
    (group,) = [g for g in svg.iter(f"{SVG}g") if g.get("class") == "tnd-coefficient"]
    top, bottom = [t for t in group.iter(f"{SVG}text")]
    assert "".join(top.itertext()) == "1" and "".join(bottom.itertext()) == "N·O0·O1"
    assert float(top.get("y")) < float(bottom.get("y"))
    assert [p.get("class") for p in group.iter(f"{SVG}path")] == ["tnd-fraction-bar"]


def _coefficients(entries: list[Entry]):
    for entry in entries:
        if entry.picture is None or entry.quantity.startswith("derivation"):
            continue
        for text in entry.picture.texts:
            if text.role is TextRole.COEFFICIENT:
                yield entry, text


def test_gallery_coefficients_lie_inside_the_figure_next_to_their_term(entries: list[Entry]) -> None:
    checked = 0
    for entry, text in _coefficients(entries):
        picture = entry.picture
        assert picture is not None
        box, bounds = text.box, picture.bbox
        assert bounds.x0 <= box.x0 and box.x1 <= bounds.x1 and bounds.y0 <= box.y0 and box.y1 <= bounds.y1
        # the term's drawing starts right after the coefficient, at the same height
        after = [s.box for s in picture.shapes if s.box.x0 >= box.x1 - 1e-6]
        after += [leg.label_box for leg in picture.legs if leg.label_box.x0 >= box.x1 - 1e-6]
        start = min(b.x0 for b in after)
        assert start - box.x1 <= TERM_GAP + 0.01, f"{entry.layer}/{entry.quantity}: {text.plain} is detached"
        assert "floor" not in text.plain, f"{entry.layer}/{entry.quantity}: {text.plain}"
        checked += 1
    assert checked >= 20


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed (CI installs it)")
def test_gallery_coefficients_fit_the_room_the_layout_reserves(entries: list[Entry]) -> None:
    """pdflatex measures every coefficient; none is wider or taller than its box (so none is clipped)."""
    texts = {text.tex: text for _entry, text in _coefficients(entries)}
    lines = [r"\documentclass{article}", r"\newlength{\w}\newlength{\h}", r"\begin{document}"]
    for index, tex in enumerate(texts):
        lines += [
            rf"\settowidth{{\w}}{{{tex}}}\settoheight{{\h}}{{{tex}}}",
            rf"\setbox0=\hbox{{{tex}}}\typeout{{MEASURE {index} \the\w\space\the\dimexpr\ht0+\dp0\relax}}",
        ]
    lines.append(r"\end{document}")
    with tempfile.TemporaryDirectory(prefix="tnderiv-coef-") as tmp:
        Path(tmp, "m.tex").write_text("\n".join(lines), encoding="utf-8")
        result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-no-shell-escape", "m.tex"], cwd=tmp,
                                capture_output=True, text=True, errors="replace", timeout=120, check=False)  # fmt: skip
    measured = re.findall(r"MEASURE (\d+) ([\d.]+)pt ([\d.]+)pt", result.stdout)
    assert len(measured) == len(texts), result.stdout[-2000:]
    cm = 2.54 / 72.27
    for (index, width, height), text in zip(measured, texts.values()):
        assert int(index) >= 0
        assert float(width) * cm <= text.width, f"{text.plain}: {float(width) * cm:.2f} cm wide, box {text.width}"
        assert float(height) * cm <= text.height, f"{text.plain}: {float(height) * cm:.2f} cm tall, box {text.height}"
