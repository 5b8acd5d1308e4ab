"""Pictures of whole expressions: sums with coefficients and ``+``, and derivation strips with arrows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import sympy

from tnderiv.ir import Diagram, DiagramSum, Expression, terms_of
from tnderiv.render.coefficient import formula, in_size_names, leg_sizes
from tnderiv.render.geometry import Box
from tnderiv.render.labels import PT_TO_CM, Label, tex_escape_text
from tnderiv.render.layout import PosKey, layout_diagram
from tnderiv.render.model import LEG_PT, OPERAND_PT, Arrow, Picture, Text, TextRole

TERM_GAP = 0.35  # between a term and a + sign
ARROW_GAP = 0.3  # between a panel and an arrow
ROW_GAP = 1.0  # between rows of a strip


@dataclass(frozen=True)
class Options:
    """Layout choices shared by every emitter; see ``layout_diagram``."""

    pos: Mapping[PosKey, tuple[float, float]] | None = None
    hide_unit_legs: bool = True
    mirror: bool | None = None


def layout(expr: Expression, options: Options | None = None) -> Picture:
    """The picture of a diagram or a sum of diagrams (terms left to right, ``+``/``−`` and coefficients)."""
    if not isinstance(expr, Diagram | DiagramSum):
        raise TypeError(f"expected a Diagram or DiagramSum, got {type(expr).__name__}")
    options = options or Options()
    terms = terms_of(expr)
    if options.pos and len(terms) > 1:
        raise ValueError("pos= pins nodes of one diagram; for a sum, lay out its terms one by one")
    picture = Picture()
    x = 0.0
    for index, term in enumerate(terms):
        body = layout_diagram(term.replace(coefficient=1), pos=options.pos, hide_unit_legs=options.hide_unit_legs,
                              mirror=options.mirror).prefixed(f"t{index}.")  # fmt: skip
        coefficient = sympy.sympify(term.coefficient)
        negative = coefficient.could_extract_minus_sign()
        magnitude = -coefficient if negative else coefficient
        pieces: list[Text] = []
        if index or negative:
            pieces.append(_text("-" if negative else "+", "−" if negative else "+", TextRole.OPERATOR))
        if magnitude != 1:
            pieces.append(_coefficient(magnitude, leg_sizes(term)))
        for piece in pieces:
            x += TERM_GAP if picture.shapes or x else 0.0
            picture = picture.merged(Picture(texts=(_at(piece, x + piece.width / 2, 0.0),)))
            x += piece.width
        box = body.bbox
        x += TERM_GAP if x else 0.0
        picture = picture.merged(body.translate(x - box.x0, -(box.y0 + box.y1) / 2))
        x += box.width
    return picture


def _coefficient(value: sympy.Expr, sizes: Mapping[str, object]) -> Text:
    """A coefficient in the users' size names, as a stacked fraction (TeX ``\\frac``, SVG two lines)."""
    drawn = formula(in_size_names(value, sizes))
    return Text(f"${drawn.tex}$", drawn.plain, (0.0, 0.0), drawn.width(OPERAND_PT) + 0.18,
                drawn.height(OPERAND_PT), TextRole.COEFFICIENT, drawn.numerator, drawn.denominator)  # fmt: skip


def _text(tex: str, plain: str, role: TextRole, size_pt: float = OPERAND_PT) -> Text:
    width = Label(plain, italic=False).width(size_pt) + 0.05
    height = size_pt * PT_TO_CM * (1.6 if "frac" in tex else 1.0)
    return Text(f"${tex}$" if role is not TextRole.RULE else tex, plain, (0.0, 0.0), width, height, role)


def _at(text: Text, x: float, y: float) -> Text:
    return replace(text, center=(x, y))


def layout_strip(
    panels: Sequence[Expression],
    arrows: Sequence[str],
    options: Options | None = None,
    *,
    per_row: int = 3,
) -> Picture:
    """Panels left to right (``per_row`` to a row), with an arrow labelled ``arrows[i]`` before panel ``i + 1``."""
    if len(arrows) != len(panels) - 1:
        raise ValueError(f"{len(panels)} panels need {len(panels) - 1} arrow labels, got {len(arrows)}")
    if not isinstance(per_row, int) or per_row < 1:
        raise ValueError(f"per_row={per_row!r}: expected a positive int")
    options = Options(hide_unit_legs=(options or Options()).hide_unit_legs, mirror=(options or Options()).mirror)
    pictures = [layout(panel, options).prefixed(f"p{i}.") for i, panel in enumerate(panels)]
    rows: list[Picture] = []
    for start in range(0, len(pictures), per_row):
        row = Picture()
        x = 0.0
        for i in range(start, min(start + per_row, len(pictures))):
            if i:
                label_lines = _rule_lines(arrows[i - 1])
                texts = [_text(tex_escape_text(line), line, TextRole.RULE, LEG_PT) for line in label_lines]
                length = max(1.1, max(t.width for t in texts) + 0.3)
                x += ARROW_GAP if i > start else 0.0
                row = row.merged(Picture(arrows=(Arrow((x, 0.0), (x + length, 0.0)),)))
                y = -0.2
                placed = []
                for t in texts:
                    placed.append(_at(t, x + length / 2, y - t.height / 2))
                    y -= t.height + 0.05
                row = row.merged(Picture(texts=tuple(placed)))
                x += length + ARROW_GAP
            box = pictures[i].bbox
            row = row.merged(pictures[i].translate(x - box.x0, -(box.y0 + box.y1) / 2))
            x += box.width
        rows.append(row)
    picture = Picture()
    y = 0.0
    for row in rows:
        box = row.bbox
        picture = picture.merged(row.translate(-box.x0, y - box.y1))
        y -= box.height + ROW_GAP
    return picture


def _rule_lines(name: str) -> list[str]:
    """A rule's name on at most two lines of about 18 characters."""
    words = name.split(" ")
    lines = [""]
    for word in words:
        if lines[-1] and len(lines[-1]) + 1 + len(word) > 18 and len(lines) < 2:
            lines.append(word)
        else:
            lines[-1] = f"{lines[-1]} {word}".strip()
    return lines


def strip_of_derivation(derivation, *, prefix: Sequence[tuple[Expression, str]] = (), group: bool = True):
    """Panels and arrow labels of a ``Derivation``: consecutive firings of one rule become one arrow (``×k``).

    ``prefix``: earlier panels with the label of the arrow leaving each (e.g. the forward diagram and
    ``"cut weight, attach grad_out"``). The last panel is the tidied result.
    """
    panels: list[Expression] = [p for p, _ in prefix]
    arrows: list[str] = [a for _, a in prefix]
    panels.append(derivation.start)
    steps = list(derivation.steps)
    runs: list[tuple[str, int, Expression]] = []
    for step in steps:
        if group and runs and runs[-1][0] == step.rule:
            runs[-1] = (step.rule, runs[-1][1] + 1, step.after)
        else:
            runs.append((step.rule, 1, step.after))
    for rule_name, count, after in runs:
        arrows.append(rule_name if count == 1 else f"{rule_name} ×{count}")
        panels.append(after)
    panels[-1] = derivation.result
    return panels, arrows


def picture_box(picture: Picture, margin: float = 0.15) -> Box:
    """The drawing's extent with a margin (the emitters' canvas)."""
    return picture.bbox.inflate(margin)
