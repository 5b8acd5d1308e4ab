"""TikZ emitter: named styles in one ``\\tikzset``, explicit coordinates, compiles with plain ``pdflatex``."""

from __future__ import annotations

from tnderiv.render.compose import picture_box
from tnderiv.render.geometry import Curve, Point
from tnderiv.render.labels import tex_escape_text
from tnderiv.render.model import LegKind, Picture, Shape, ShapeKind, TextRole

STYLES = r"""\tikzset{
  tnd picture/.style={line cap=round, line join=round},
  tnd operand/.style={draw, rounded corners=2.5pt, fill=white, line width=0.6pt, inner sep=0pt},
  tnd pattern/.style={draw, fill=black!10, line width=0.6pt, inner sep=0pt},
  tnd constant/.style={draw, dashed, fill=black!10, line width=0.6pt, inner sep=0pt},
  tnd note/.style={font=\scriptsize, inner sep=0pt},
  tnd delta/.style={circle, fill=black, draw=none, inner sep=0pt},
  tnd hyperedge/.style={circle, fill=black, draw=none, inner sep=0pt},
  tnd ones/.style={circle, draw, fill=white, line width=0.5pt, inner sep=0pt, font=\footnotesize},
  tnd scalar/.style={inner sep=0pt},
  tnd leg/.style={line width=0.55pt},
  tnd open leg/.style={tnd leg},
  tnd summed stub/.style={tnd leg, densely dotted},
  tnd leg label/.style={font=\footnotesize, inner sep=0pt},
  tnd open label/.style={tnd leg label},
  tnd coefficient/.style={inner sep=0pt},
  tnd operator/.style={inner sep=0pt},
  tnd arrow/.style={->, >=stealth, line width=0.6pt, shorten >=1pt},
  tnd rule/.style={font=\footnotesize, inner sep=0pt},
  tnd caption/.style={font=\footnotesize, inner sep=0pt},
}%"""

STANDALONE = r"""\documentclass{article}
\usepackage{tikz}
\pagestyle{empty}
\newsavebox{\tnderivbox}
%% one page per picture, cropped to it (no standalone class needed)
\newcommand{\tnderivpage}[1]{%
  \savebox{\tnderivbox}{#1}%
  \pdfpagewidth=\wd\tnderivbox \pdfpageheight=\dimexpr\ht\tnderivbox+\dp\tnderivbox\relax
  \pdfhorigin=0pt \pdfvorigin=0pt \hoffset=0pt \voffset=0pt
  \shipout\box\tnderivbox}
\begin{document}
"""


def fmt(value: float) -> str:
    """A coordinate with at most 3 decimals and no ``-0``."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def point(p: Point) -> str:
    return f"({fmt(p[0])},{fmt(p[1])})"


def path(curve: Curve) -> str:
    parts = [point(curve.start)]
    for segment in curve.segments:
        if len(segment) == 1:
            parts.append(f"-- {point(segment[0])}")
        else:
            c1, c2, end = segment
            parts.append(f".. controls {point(c1)} and {point(c2)} .. {point(end)}")
    return " ".join(parts)


def to_tikz(picture: Picture, *, standalone: bool = False) -> str:
    """The picture as a ``tikzpicture`` preceded by the style ``\\tikzset``; ``standalone``: a whole document."""
    box = picture_box(picture)
    lines = [
        STYLES,
        r"\begin{tikzpicture}[tnd picture]",
        rf"\useasboundingbox {point((box.x0, box.y0))} rectangle {point((box.x1, box.y1))};",
    ]
    for leg in picture.legs:
        for index, curve in enumerate(leg.paths):
            stub = leg.kind is LegKind.STUB or (
                leg.kind is LegKind.HYPEREDGE and index == len(leg.paths) - 1 and leg.open
            )
            style = "tnd leg" if not stub else "tnd open leg" if leg.open else "tnd summed stub"
            lines.append(rf"\draw[{style}] {path(curve)};")
    for shape in picture.shapes:
        lines.extend(_shape(shape))
    for leg in picture.legs:
        style = "tnd open label" if leg.open else "tnd leg label"
        lines.append(rf"\node[{style}] at {point(leg.label_center)} {{${leg.label.tex()}$}};")
    for arrow in picture.arrows:
        lines.append(rf"\draw[tnd arrow] {point(arrow.start)} -- {point(arrow.end)};")
    for text in picture.texts:
        lines.append(rf"\node[tnd {text.role.value}] at {point(text.center)} {{{text.tex}}};")
    lines.append(r"\end{tikzpicture}%")
    body = "\n".join(lines) + "\n"
    if not standalone:
        return body
    return STANDALONE + "\\tnderivpage{%\n" + body + "}\n\\end{document}\n"


def _shape(shape: Shape) -> list[str]:
    at = point(shape.center)
    size = f"minimum width={fmt(shape.width)}cm, minimum height={fmt(shape.height)}cm"
    if shape.kind is ShapeKind.OPERAND:
        assert shape.label is not None
        return [rf"\node[tnd operand, {size}] at {at} {{${shape.label.tex()}$}};"]
    if shape.kind is ShapeKind.PATTERN:
        if not shape.note:
            return [rf"\node[tnd pattern, {size}] at {at} {{$\Pi$}};"]
        x, y = shape.center
        return [
            rf"\node[tnd pattern, {size}] at {at} {{}};",
            rf"\node[inner sep=0pt] at {point((x, y + 0.13))} {{$\Pi$}};",
            rf"\node[tnd note] at {point((x, y - 0.22))} {{{tex_escape_text(shape.note)}}};",
        ]
    if shape.kind is ShapeKind.CONSTANT:
        assert shape.label is not None
        return [rf"\node[tnd constant, {size}] at {at} {{${shape.label.tex()}$}};"]
    if shape.kind in (ShapeKind.DELTA, ShapeKind.HYPEREDGE):
        return [rf"\node[tnd {shape.kind.value}, minimum size={fmt(shape.width)}cm] at {at} {{}};"]
    if shape.kind is ShapeKind.ONES:
        return [rf"\node[tnd ones, minimum size={fmt(shape.width)}cm] at {at} {{$1$}};"]
    assert shape.label is not None
    return [rf"\node[tnd scalar] at {at} {{${shape.label.tex()}$}};"]


def standalone_document(bodies: list[str]) -> str:
    """One document with a cropped page per ``tikzpicture`` body (for batch compilation)."""
    pages = "".join("\\tnderivpage{%\n" + body + "}\n" for body in bodies)
    return STANDALONE + pages + "\\end{document}\n"


__all__ = ["STYLES", "TextRole", "standalone_document", "to_tikz"]
