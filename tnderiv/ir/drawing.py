"""Drawing methods for IR values, with the emitters registered by ``tnderiv.render`` (``ir`` never imports it)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tnderiv.ir.registry import Registry

_EMITTERS: Registry[str, Callable[..., Any]] = Registry("emitter")
_NAMES = ("to_tikz", "to_svg", "save")
_PROVIDER: list[Callable[[], Any]] = []  # loads the module that registers the emitters, on first use


def set_provider(load: Callable[[], Any]) -> None:
    """``load()`` registers the emitters when a drawing method is first called (``tnderiv`` sets it to import
    ``tnderiv.render``, so that ``import tnderiv`` does not pay for the renderer)."""
    _PROVIDER[:] = [load]


def register_emitters(
    *, to_tikz: Callable[..., str], to_svg: Callable[..., str], save: Callable[..., Path], replace: bool = False
) -> None:
    """Install the functions behind ``Drawable.to_tikz``/``to_svg``/``save``/``_repr_svg_`` (``tnderiv.render`` on import).

    Emitters registered before raise ``DuplicateNameError`` unless ``replace=True``.
    """
    functions = (to_tikz, to_svg, save)
    for name, fn in zip(_NAMES, functions, strict=True):
        if not callable(fn):
            raise TypeError(f"{name}={fn!r}: expected a callable")
    taken = [name for name in _NAMES if name in _EMITTERS]
    if taken and not replace:
        raise _EMITTERS.duplicate(taken[0])
    for name, fn in zip(_NAMES, functions, strict=True):
        _EMITTERS.register(name, fn, replace=replace)


def _emitter(name: str) -> Callable[..., Any]:
    if name not in _EMITTERS and _PROVIDER:
        _PROVIDER[0]()
    if name in _EMITTERS:
        return _EMITTERS[name]
    raise RuntimeError(
        f"no emitter {name!r} is registered: drawing needs tnderiv.render, which registers them on import "
        "(`import tnderiv` does this)"
    )


class Drawable:
    """Drawing methods shared by diagrams, sums and derivations (they call the emitters ``tnderiv.render`` registers)."""

    def to_tikz(self, standalone: bool = False, **options: Any) -> str:
        """TikZ with its ``\\tikzset`` (``standalone``: a whole document) that compiles with plain pdflatex."""
        return _emitter("to_tikz")(self, standalone=standalone, **options)

    def to_svg(self, **options: Any) -> str:
        """An SVG document, made without TeX. Options: ``pos``, ``hide_unit_legs``, ``mirror``."""
        return _emitter("to_svg")(self, **options)

    def save(self, path: str | Path, **options: Any) -> Path:
        """Write ``.tex``, ``.svg``, ``.pdf`` or ``.png`` (the last two need pdflatex and pdftoppm)."""
        return _emitter("save")(self, path, **options)

    def _repr_svg_(self) -> str:
        return _emitter("to_svg")(self)


__all__ = ["Drawable", "register_emitters", "set_provider"]
