"""Labels: paper conventions for leg and operand names, escaping for TeX and for SVG/HTML."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from tnderiv.ir import Diagram, operand
from tnderiv.render import to_svg, to_tikz
from tnderiv.render.labels import leg_label, operand_label, tex_escape_text


@pytest.mark.parametrize(
    ("name", "tex", "plain"),
    [
        ("c_in", r"c_{\mathrm{in}}", "c_in"),
        ("o0'", "o_{0}'", "o_0′"),
        ("k12''", "k_{12}''", "k_12′′"),
        ("n", "n", "n"),
        ("g·c_out", r"g{\cdot}c_{\mathrm{out}}", "g·c_out"),
        ("δ", r"{\delta}", "δ"),
        ("a&b", r"\mathrm{a\mbox{\&}b}", "a&b"),
    ],
)
def test_leg_labels(name: str, tex: str, plain: str) -> None:
    label = leg_label(name)
    assert label.tex() == tex
    assert label.plain == plain


def test_operand_labels() -> None:
    assert operand_label("x").tex() == "x"
    assert operand_label("grad_out").tex() == r"\mathrm{grad\mbox{\_}out}"
    assert operand_label("x_hat").tex() == r"\hat{x}"
    assert operand_label("Π").tex() == r"{\Pi}"


def test_tex_text_escapes_every_special_character() -> None:
    assert tex_escape_text("a_b & c% #1 $ {x} ~ ^ \\ < > |") == (
        r"a\_b \& c\% \#1 \$ \{x\} \textasciitilde{} \textasciicircum{} \textbackslash{} \textless{} \textgreater{} \textbar{}"
    )
    assert tex_escape_text("delta elimination ×5") == r"delta elimination $\times$5"


def test_unwritable_character_raises_naming_it() -> None:
    with pytest.raises(ValueError, match="U\\+2603"):
        leg_label("☃").tex()


def test_special_names_survive_both_emitters() -> None:
    d = Diagram((operand("a<&>b", "c_in", "o0'"), operand("w%#", "c_in")), ("o0'",), {"c_in": 3, "o0'": 2})
    svg = to_svg(d)
    root = ET.fromstring(svg)  # well-formed: & and < are escaped
    texts = ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "a<&>b" in texts and "w%#" in texts and "cin" in texts and "o0′" in texts
    tikz = to_tikz(d)
    assert r"a\mbox{\textless{}}\mbox{\&}\mbox{\textgreater{}}b" in tikz and r"w\mbox{\%}\mbox{\#}" in tikz
