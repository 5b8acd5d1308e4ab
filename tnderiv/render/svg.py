"""SVG emitter in pure Python (``xml.etree``): the same picture as the TikZ, with named CSS classes."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from tnderiv.render.compose import picture_box
from tnderiv.render.geometry import Box, Curve, Point
from tnderiv.render.labels import PT_TO_CM, Label
from tnderiv.render.model import LEG_PT, NOTE_PT, OPERAND_PT, LegKind, Picture, Shape, ShapeKind, Text

SCALE = 40.0  # px per cm
FONT = "'Latin Modern Math', 'CMU Serif', 'STIX Two Math', 'Times New Roman', serif"
STYLE = f"""
.tnd-operand {{ fill: #fff; stroke: #000; stroke-width: 0.85; }}
.tnd-pattern {{ fill: #e6e6e6; stroke: #000; stroke-width: 0.85; }}
.tnd-constant {{ fill: #e6e6e6; stroke: #000; stroke-width: 0.85; stroke-dasharray: 3 2; }}
.tnd-delta, .tnd-hyperedge {{ fill: #000; stroke: none; }}
.tnd-ones {{ fill: #fff; stroke: #000; stroke-width: 0.7; }}
.tnd-leg {{ fill: none; stroke: #000; stroke-width: 0.78; stroke-linecap: round; }}
.tnd-summed-stub {{ stroke-dasharray: 1.5 2; }}
.tnd-arrow {{ fill: none; stroke: #000; stroke-width: 0.85; }}
.tnd-arrowhead {{ fill: #000; stroke: none; }}
.tnd-fraction-bar {{ fill: none; stroke: #000; stroke-width: 0.65; }}
text {{ font-family: {FONT}; fill: #000; }}
.tnd-name {{ font-size: {OPERAND_PT * PT_TO_CM * SCALE:.2f}px; }}
.tnd-leg-label, .tnd-rule {{ font-size: {LEG_PT * PT_TO_CM * SCALE:.2f}px; }}
.tnd-note {{ font-size: {NOTE_PT * PT_TO_CM * SCALE:.2f}px; }}
.tnd-coefficient, .tnd-operator {{ font-size: {OPERAND_PT * PT_TO_CM * SCALE:.2f}px; }}
"""


class _Canvas:
    def __init__(self, box: Box) -> None:
        self.box = box

    def xy(self, p: Point) -> tuple[str, str]:
        return _num((p[0] - self.box.x0) * SCALE), _num((self.box.y1 - p[1]) * SCALE)

    def length(self, v: float) -> str:
        return _num(v * SCALE)


def _num(value: float) -> str:
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def to_svg(picture: Picture) -> str:
    """The picture as a standalone SVG document (a string)."""
    box = picture_box(picture)
    canvas = _Canvas(box)
    width, height = canvas.length(box.width), canvas.length(box.height)
    root = ET.Element(
        "svg",
        {"xmlns": "http://www.w3.org/2000/svg", "width": width, "height": height, "viewBox": f"0 0 {width} {height}"},
    )
    ET.SubElement(root, "style").text = STYLE
    legs = ET.SubElement(root, "g", {"class": "tnd-legs"})
    for leg in picture.legs:
        group = ET.SubElement(legs, "g", {"class": "tnd-leg-group"})
        ET.SubElement(group, "title").text = f"{'open' if leg.open else 'summed'} leg {leg.name}"
        for index, curve in enumerate(leg.paths):
            stub = leg.kind is LegKind.STUB or (
                leg.kind is LegKind.HYPEREDGE and index == len(leg.paths) - 1 and leg.open
            )
            css = "tnd-leg" + (" tnd-summed-stub" if stub and not leg.open else "")
            ET.SubElement(group, "path", {"class": css, "d": _path(canvas, curve)})
    shapes = ET.SubElement(root, "g", {"class": "tnd-shapes"})
    for shape in picture.shapes:
        _shape(shapes, canvas, shape)
    labels = ET.SubElement(root, "g", {"class": "tnd-labels"})
    for leg in picture.legs:
        _label(labels, canvas, leg.label, leg.label_center, LEG_PT, "tnd-leg-label")
    for arrow in picture.arrows:
        x0, y0 = canvas.xy(arrow.start)
        x1, y1 = canvas.xy((arrow.end[0] - 0.12, arrow.end[1]))
        ET.SubElement(root, "path", {"class": "tnd-arrow", "d": f"M{x0},{y0} L{x1},{y1}"})
        tip = canvas.xy(arrow.end)
        back = canvas.xy((arrow.end[0] - 0.2, arrow.end[1] + 0.07))
        back2 = canvas.xy((arrow.end[0] - 0.2, arrow.end[1] - 0.07))
        ET.SubElement(
            root,
            "path",
            {"class": "tnd-arrowhead", "d": f"M{tip[0]},{tip[1]} L{back[0]},{back[1]} L{back2[0]},{back2[1]} Z"},
        )
    for text in picture.texts:
        _text(root, canvas, text)
    _break_lines(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def _break_lines(element: ET.Element) -> None:
    """One element a line, but no whitespace inside ``text`` (it would show between the runs)."""
    if element.tag == "text":
        return
    if len(element):
        element.text = (element.text or "") + "\n"
    for child in element:
        child.tail = "\n"
        _break_lines(child)


def _path(canvas: _Canvas, curve: Curve) -> str:
    x, y = canvas.xy(curve.start)
    parts = [f"M{x},{y}"]
    for segment in curve.segments:
        if len(segment) == 1:
            x, y = canvas.xy(segment[0])
            parts.append(f"L{x},{y}")
        else:
            coords = " ".join(",".join(canvas.xy(p)) for p in segment)
            parts.append(f"C{coords}")
    return " ".join(parts)


def _shape(parent: ET.Element, canvas: _Canvas, shape: Shape) -> None:
    x, y = canvas.xy((shape.center[0] - shape.width / 2, shape.center[1] + shape.height / 2))
    group = ET.SubElement(parent, "g", {"class": f"tnd-node tnd-{shape.kind.value}-node"})
    if shape.node is not None:
        group.set("data-node", str(shape.node))
    if shape.kind in (ShapeKind.OPERAND, ShapeKind.PATTERN, ShapeKind.CONSTANT):
        attrs = {"class": f"tnd-{shape.kind.value}", "x": x, "y": y, "width": canvas.length(shape.width),
                 "height": canvas.length(shape.height)}  # fmt: skip
        if shape.kind is ShapeKind.OPERAND:
            attrs.update(rx=canvas.length(0.09), ry=canvas.length(0.09))
        ET.SubElement(group, "rect", attrs)
        assert shape.label is not None
        if shape.kind is ShapeKind.PATTERN and shape.note:
            _label(group, canvas, shape.label, (shape.center[0], shape.center[1] + 0.13), OPERAND_PT, "tnd-name")
            _label(
                group,
                canvas,
                Label(shape.note, italic=False),
                (shape.center[0], shape.center[1] - 0.22),
                NOTE_PT,
                "tnd-note",
            )
        else:
            _label(group, canvas, shape.label, shape.center, OPERAND_PT, "tnd-name")
        return
    cx, cy = canvas.xy(shape.center)
    if shape.kind in (ShapeKind.DELTA, ShapeKind.HYPEREDGE, ShapeKind.ONES):
        css = f"tnd-{shape.kind.value}"
        ET.SubElement(group, "circle", {"class": css, "cx": cx, "cy": cy, "r": canvas.length(shape.width / 2)})
    if shape.label is not None:
        size = LEG_PT if shape.kind is ShapeKind.ONES else OPERAND_PT
        _label(group, canvas, shape.label, shape.center, size, "tnd-name" if size == OPERAND_PT else "tnd-leg-label")


def _label(parent: ET.Element, canvas: _Canvas, label: Label, center: Point, size_pt: float, css: str) -> None:
    """Text centred at ``center``: the baseline sits a third of the font size below the centre."""
    px = size_pt * PT_TO_CM * SCALE
    x, y = canvas.xy(center)
    baseline = float(y) + 0.33 * px - (0.08 * px if label.sub else 0.0)
    text = ET.SubElement(parent, "text", {"class": css, "x": x, "y": _num(baseline), "text-anchor": "middle"})
    shifted = False
    for run, role in label.svg_runs():
        span = ET.SubElement(text, "tspan")
        span.text = run
        if role == "italic":
            span.set("font-style", "italic")
        if role == "sub":
            span.set("font-size", _num(0.72 * px))
            span.set("dy", _num(0.28 * px))
            shifted = True
        elif shifted:
            span.set("dy", _num(-0.28 * px))
            shifted = False


def _text(parent: ET.Element, canvas: _Canvas, text: Text) -> None:
    size = LEG_PT if text.role.value == "rule" else OPERAND_PT
    px = size * PT_TO_CM * SCALE
    x, y = canvas.xy(text.center)
    css = f"tnd-{text.role.value}"
    if not text.numerator:
        node = ET.SubElement(parent, "text", {"class": css, "x": x, "y": _num(float(y) + 0.33 * px),
                                              "text-anchor": "middle"})  # fmt: skip
        node.text = text.plain
        return
    if not text.denominator:
        _runs(parent, css, x, float(y) + 0.33 * px, text.numerator, px)
        return
    group = ET.SubElement(parent, "g", {"class": css})
    ET.SubElement(group, "title").text = text.plain
    half = canvas.length((text.width - 0.1) / 2)
    bar = float(y) - 0.25 * px  # the fraction bar sits on the maths axis, a quarter em above the centre
    ET.SubElement(group, "path", {"class": "tnd-fraction-bar",
                                  "d": f"M{_num(float(x) - float(half))},{_num(bar)} H{_num(float(x) + float(half))}"})  # fmt: skip
    _runs(group, css, x, bar - 0.3 * px, text.numerator, px)
    _runs(group, css, x, bar + 0.95 * px, text.denominator, px)


def _runs(parent: ET.Element, css: str, x: str, baseline: float, runs: tuple[tuple[str, str], ...], px: float) -> None:
    """One line of maths: italic and upright runs, subscripts and superscripts."""
    node = ET.SubElement(parent, "text", {"class": css, "x": x, "y": _num(baseline), "text-anchor": "middle"})
    shift = 0.0
    for run, role in runs:
        span = ET.SubElement(node, "tspan")
        span.text = run
        if role == "italic":
            span.set("font-style", "italic")
        target = 0.28 * px if role == "sub" else -0.4 * px if role == "sup" else 0.0
        if role in ("sub", "sup"):
            span.set("font-size", _num(0.72 * px))
        if abs(target - shift) > 1e-9:
            span.set("dy", _num(target - shift))
            shift = target
