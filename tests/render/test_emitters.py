"""Emitters: SVG is well-formed and complete, TikZ has one \\tikzset, files are saved by suffix, Jupyter hooks."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import tnderiv
from tnderiv.calculus import QUANTITIES, derive
from tnderiv.layers import Conv, Linear
from tnderiv.render import picture_of, save, to_svg, to_tikz
from tnderiv.render import save as save_module  # noqa: F401
from tnderiv.render.compose import strip_of_derivation

SVG = "{http://www.w3.org/2000/svg}"


def _conv_vjp_weight():
    return derive(Conv(2, 4, 3, dims=2, stride=2).network({}), "vjp_weight")


def test_svg_is_well_formed_and_draws_every_shape_leg_and_label() -> None:
    expr = derive(Conv(2, 4, 3, dims=2).network({}), "per_sample_grad")
    picture = picture_of(expr)
    root = ET.fromstring(to_svg(expr))
    assert root.tag == f"{SVG}svg" and float(root.get("width")) > 100
    paths = [p for p in root.iter(f"{SVG}path") if "tnd-leg" in p.get("class", "")]
    assert len(paths) == sum(len(leg.paths) for leg in picture.legs)
    rects = list(root.iter(f"{SVG}rect"))
    assert len(rects) == 4  # x, two patterns, grad_out
    assert len(list(root.iter(f"{SVG}circle"))) == 1  # the batch dot
    texts = {"".join(t.itertext()) for t in root.iter(f"{SVG}text")}
    assert {"x", "grad_out", "Π", "n", "cin", "cout", "k0", "k1", "i0", "o1"} <= texts


def test_tikz_has_one_tikzset_and_named_styles_only() -> None:
    tikz = to_tikz(_conv_vjp_weight())
    assert tikz.count(r"\tikzset{") == 1 and tikz.count(r"\begin{tikzpicture}") == 1
    assert tikz.count("{") == tikz.count("}")
    for line in tikz.splitlines():
        if line.startswith((r"\node[", r"\draw[")):
            assert line[line.index("[") + 1 :].startswith("tnd ") or line.startswith(r"\node[inner sep")
    standalone = to_tikz(_conv_vjp_weight(), standalone=True)
    assert standalone.startswith(r"\documentclass{article}") and standalone.rstrip().endswith(r"\end{document}")


def test_output_is_deterministic() -> None:
    expr = _conv_vjp_weight()
    assert to_tikz(expr) == to_tikz(expr) and to_svg(expr) == to_svg(expr)


def test_methods_on_diagrams_sums_and_derivations(tmp_path: Path) -> None:
    network = Linear(3, 4).network({})
    forward = network.forward
    assert forward._repr_svg_().startswith("<svg")
    assert forward.terms[0].to_svg() == to_svg(forward.terms[0])
    assert r"\begin{tikzpicture}" in forward.to_tikz()
    derivation = tnderiv.simplify(QUANTITIES["vjp"].build(network, "weight"), trace=True)
    strip = picture_of(derivation)
    panels, arrows = strip_of_derivation(derivation)
    assert len(strip.arrows) == len(arrows) == len(panels) - 1 >= 1
    rules = {t.plain for t in strip.texts if t.role.value == "rule"}
    assert any("delta elimination" in r for r in rules)
    assert derivation.to_tikz().count(r"\draw[tnd arrow]") == len(arrows)
    ET.fromstring(derivation._repr_svg_())
    assert derivation.save(tmp_path / "strip.svg").read_text().startswith("<svg")


def test_save_by_suffix(tmp_path: Path) -> None:
    expr = _conv_vjp_weight()
    assert save(expr, tmp_path / "d.svg").read_text() == to_svg(expr)
    assert save(expr, tmp_path / "d.tex").read_text() == to_tikz(expr, standalone=True)
    with pytest.raises(ValueError, match="ending in one of .tex, .svg, .pdf, .png"):
        save(expr, tmp_path / "d.jpg")


def test_missing_pdflatex_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="needs 'pdflatex'.*apt-get install texlive-latex-base"):
        save(_conv_vjp_weight(), tmp_path / "d.pdf")
    assert not (tmp_path / "d.pdf").exists()


@pytest.mark.skipif(
    shutil.which("pdflatex") is None or shutil.which("pdftoppm") is None, reason="needs pdflatex and pdftoppm"
)
def test_save_pdf_and_png(tmp_path: Path) -> None:
    expr = _conv_vjp_weight()
    pdf = save(expr, tmp_path / "d.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and pdf.rstrip().endswith(b"%%EOF")
    png = save(expr, tmp_path / "d.png", dpi=100).read_bytes()
    assert png.startswith(b"\x89PNG")


@pytest.mark.skipif(shutil.which("rsvg-convert") is None, reason="needs rsvg-convert (librsvg2-bin) to rasterize SVG")
def test_svg_rasterizes(tmp_path: Path) -> None:
    (tmp_path / "d.svg").write_text(to_svg(_conv_vjp_weight()))
    subprocess.run(["rsvg-convert", "d.svg", "-o", "d.png"], cwd=tmp_path, check=True, timeout=60)
    assert (tmp_path / "d.png").read_bytes().startswith(b"\x89PNG")
