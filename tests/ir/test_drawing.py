"""The emitter registry of ``ir.drawing``: installed once by ``tnderiv.render``; a second install needs ``replace``."""

from __future__ import annotations

import pytest

import tnderiv.render  # noqa: F401  (registers the emitters on import)
from tnderiv.ir import Diagram, DuplicateNameError, drawing, operand


def test_emitters_are_registered_once() -> None:
    current = {name: drawing._EMITTERS[name] for name in ("to_tikz", "to_svg", "save")}
    with pytest.raises(DuplicateNameError, match=r"^emitter 'to_tikz' is already registered; pass replace=True"):
        drawing.register_emitters(**current)
    drawing.register_emitters(**current, replace=True)
    assert {name: drawing._EMITTERS[name] for name in current} == current
    with pytest.raises(TypeError, match="to_svg='svg': expected a callable"):
        drawing.register_emitters(to_tikz=current["to_tikz"], to_svg="svg", save=current["save"], replace=True)  # type: ignore[arg-type]


def test_drawing_calls_the_registered_emitter() -> None:
    d = Diagram((operand("x", "n", "a"),), ("n",), {"n": 2, "a": 3})
    assert d.to_svg().lstrip().startswith(("<?xml", "<svg"))
