"""Drawing diagrams: one layout model, emitted as TikZ, SVG, PDF/PNG and Jupyter output."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tnderiv.ir import Diagram, DiagramSum
from tnderiv.ir.drawing import register_emitters
from tnderiv.render import save as _save
from tnderiv.render import svg as _svg
from tnderiv.render import tikz as _tikz
from tnderiv.render.compose import Options, layout, layout_strip, strip_of_derivation
from tnderiv.render.layout import PosKey, layout_diagram
from tnderiv.render.model import Picture


def picture_of(
    obj: Any,
    *,
    pos: Mapping[PosKey, tuple[float, float]] | None = None,
    hide_unit_legs: bool = True,
    mirror: bool | None = None,
    per_row: int = 3,
) -> Picture:
    """The picture of a ``Diagram``, ``DiagramSum``, simplification ``Derivation`` (a strip) or ``Picture``."""
    from tnderiv.simplify import Derivation

    options = Options(pos=pos, hide_unit_legs=hide_unit_legs, mirror=mirror)
    if isinstance(obj, Picture):
        return obj
    if isinstance(obj, Diagram | DiagramSum):
        return layout(obj, options)
    if isinstance(obj, Derivation):
        panels, arrows = strip_of_derivation(obj)
        return layout_strip(panels, arrows, options, per_row=per_row)
    raise TypeError(f"cannot draw a {type(obj).__name__}; expected a Diagram, DiagramSum, Derivation or Picture")


def to_tikz(obj: Any, *, standalone: bool = False, **options: Any) -> str:
    """TikZ source: a ``tikzpicture`` with its ``\\tikzset`` (``standalone``: a whole pdflatex document)."""
    return _tikz.to_tikz(picture_of(obj, **options), standalone=standalone)


def to_svg(obj: Any, **options: Any) -> str:
    """An SVG document, made without TeX."""
    return _svg.to_svg(picture_of(obj, **options))


def save(obj: Any, path: str | Path, *, dpi: int = 300, **options: Any) -> Path:
    """Write ``obj`` to ``path``: ``.tex`` (standalone), ``.svg``, ``.pdf`` (pdflatex) or ``.png`` (pdflatex + pdftoppm)."""
    picture = picture_of(obj, **options)
    return _save.write(path, tex_standalone=_tikz.to_tikz(picture, standalone=True), svg=_svg.to_svg(picture), dpi=dpi)


# Diagram/DiagramSum/Derivation.to_svg, .to_tikz, .save and _repr_svg_ call these (ir never imports render)
register_emitters(to_tikz=to_tikz, to_svg=to_svg, save=save)

__all__ = ["Options", "Picture", "layout", "layout_diagram", "layout_strip", "picture_of", "save", "to_svg", "to_tikz"]
