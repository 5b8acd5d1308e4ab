"""The render module's SVG of one diagram, annotated for the page: every node and leg says its name, size and kind.

Nodes carry ``data-node`` (their index in the diagram, set by the emitter); legs get ``data-leg`` and
every ``<title>`` is rewritten to ``name · size · kind`` (ElementTree escapes the text, so a name with
``<script>`` in it stays text).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import sympy

from tnderiv.ir import Diagram, Expression, NodeKind, node_tag
from tnderiv.render import picture_of
from tnderiv.render import svg as svg_emitter

SVG = "http://www.w3.org/2000/svg"
ET.register_namespace("", SVG)

KIND_WORDS = {
    NodeKind.OPERAND: "operand (runtime data)",
    NodeKind.PATTERN: "index pattern Π (constant 0/1)",
    NodeKind.DELTA: "copy tensor δ (constant)",
    NodeKind.ONES: "ones vector (constant)",
}


def _size_text(size: Any, value: int) -> str:
    expr = sympy.sympify(size)
    return str(value) if expr.is_Integer else f"{value} = {expr}"


def leg_info(diagram: Diagram, sizes: Mapping[str, int]) -> list[dict[str, Any]]:
    """Per leg: name, size (bound and symbolic), open or summed, the nodes it touches."""
    out = []
    for leg, size in diagram.sizes.items():
        nodes = [j for j, node in enumerate(diagram.nodes) if leg in node.legs]
        is_open = leg in diagram.open_legs
        kind = "open" if is_open else "summed"
        if len(nodes) + is_open > 2:
            kind += ", hyperedge"
        out.append({"name": leg, "size": sizes[leg], "size_text": _size_text(size, sizes[leg]), "open": is_open,
                    "kind": kind, "nodes": nodes})  # fmt: skip
    return out


def node_info(diagram: Diagram, sizes: Mapping[str, int]) -> list[dict[str, Any]]:
    """Per node: its name, kind, legs, shape and number of elements."""
    out = []
    for node in diagram.nodes:
        shape = [sizes[leg] for leg in node.legs]
        out.append({"name": node_tag(node), "kind": KIND_WORDS.get(node.kind, node.kind.value), "legs": list(node.legs),
                    "shape": shape, "elements": math.prod(shape)})  # fmt: skip
    return out


def annotated_svg(diagram: Diagram, sizes: Mapping[str, int]) -> str:
    """The SVG of ``diagram`` with ``data-leg`` on leg groups and a name · size · kind title on nodes and legs."""
    text, drawn_legs = _drawing(diagram)
    root = ET.fromstring(text)
    root.set("class", "tnd-diagram")
    nodes = node_info(diagram, sizes)
    legs = {leg["name"]: leg for leg in leg_info(diagram, sizes)}
    groups = [g for g in root.iter(f"{{{SVG}}}g") if "tnd-leg-group" in g.get("class", "").split()]
    if len(groups) == len(drawn_legs):
        for group, name in zip(groups, drawn_legs):
            info = legs.get(name)
            if info is None:
                continue
            group.set("data-leg", name)
            _set_title(group, f"leg {name} · size {info['size_text']} · {info['kind']}")
    for group in root.iter(f"{{{SVG}}}g"):
        index = group.get("data-node")
        if index is None or not index.isdigit() or int(index) >= len(nodes):
            continue
        node = nodes[int(index)]
        shape = "×".join(str(s) for s in node["shape"]) or "scalar"
        _set_title(group, f"{node['name']}[{', '.join(node['legs'])}] · {shape} = {node['elements']:,} elements · {node['kind']}")
    return ET.tostring(root, encoding="unicode")


@lru_cache(maxsize=64)
def _drawing(diagram: Diagram) -> tuple[str, tuple[str, ...]]:
    """The emitter's SVG of a diagram and the names of its drawn legs in order (layouts take a while: cached)."""
    picture = picture_of(diagram)
    return svg_emitter.to_svg(picture), tuple(leg.name for leg in picture.legs)


def _set_title(group: ET.Element, text: str) -> None:
    title = group.find(f"{{{SVG}}}title")
    if title is None:
        title = ET.Element(f"{{{SVG}}}title")
        group.insert(0, title)
    title.text = text


@lru_cache(maxsize=32)
def derivation_strip(raw: Expression) -> dict[str, Any] | None:
    """The simplification of ``raw`` drawn as a strip (``tnderiv.simplify(raw, trace=True)``), or None if no rule fires."""
    from tnderiv.render import to_svg
    from tnderiv.simplify import simplify

    derivation = simplify(raw, trace=True)
    if not derivation.steps:  # type: ignore[union-attr]
        return None
    root = ET.fromstring(to_svg(derivation))
    root.set("class", "tnd-strip")
    return {"svg": ET.tostring(root, encoding="unicode"), "rules": [step.rule for step in derivation.steps]}  # type: ignore[union-attr]
