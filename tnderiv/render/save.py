"""Writing pictures to files: ``.tex`` and ``.svg`` directly, ``.pdf`` with ``pdflatex``, ``.png`` with ``pdftoppm``."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

TEX_INSTALL_HINT = "on Debian/Ubuntu: apt-get install texlive-latex-base texlive-pictures poppler-utils"
SUFFIXES = (".tex", ".svg", ".pdf", ".png")


def require_tool(name: str, purpose: str) -> str:
    """The path of the program ``name``; raises naming what needs it and how to install it."""
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(
            f"{purpose} needs {name!r}, which is not on PATH ({TEX_INSTALL_HINT}); save as .svg or .tex instead"
        )
    return found


def compile_pdf(document: str, *, timeout: float = 120.0, purpose: str = "writing PDF") -> bytes:
    """Compile a LaTeX ``document`` with ``pdflatex`` and return the PDF; raises with the log's error lines."""
    pdflatex = require_tool("pdflatex", purpose)
    with tempfile.TemporaryDirectory(prefix="tnderiv-") as tmp:
        source = Path(tmp) / "picture.tex"
        source.write_text(document, encoding="utf-8")
        result = subprocess.run(
            [pdflatex, "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape", source.name],
            cwd=tmp, capture_output=True, text=True, errors="replace", timeout=timeout, check=False,
        )  # fmt: skip
        pdf = Path(tmp) / "picture.pdf"
        if result.returncode != 0 or not pdf.exists():
            errors = [line for line in result.stdout.splitlines() if line.startswith("!") or "Error" in line]
            raise RuntimeError("pdflatex failed:\n" + "\n".join(errors[:10] or result.stdout.splitlines()[-20:]))
        return pdf.read_bytes()


def rasterize_pdf(pdf: bytes, *, dpi: int = 300, page: int = 1) -> bytes:
    """Page ``page`` of a PDF as PNG bytes (``pdftoppm``)."""
    pdftoppm = require_tool("pdftoppm", "writing PNG")
    if not isinstance(dpi, int) or dpi < 10:
        raise ValueError(f"dpi={dpi!r}: expected an int ≥ 10")
    with tempfile.TemporaryDirectory(prefix="tnderiv-") as tmp:
        (Path(tmp) / "in.pdf").write_bytes(pdf)
        subprocess.run(
            [pdftoppm, "-png", "-r", str(dpi), "-f", str(page), "-l", str(page), "-singlefile", "in.pdf", "out"],
            cwd=tmp, capture_output=True, check=True, timeout=120,
        )  # fmt: skip
        return (Path(tmp) / "out.png").read_bytes()


def write(path: str | Path, *, tex_standalone: str, svg: str, dpi: int = 300) -> Path:
    """Write one of the formats by ``path``'s suffix (``.tex``, ``.svg``, ``.pdf``, ``.png``)."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"cannot save {str(path)!r}: expected a file name ending in one of {', '.join(SUFFIXES)}")
    if suffix == ".tex":
        target.write_text(tex_standalone, encoding="utf-8")
    elif suffix == ".svg":
        target.write_text(svg, encoding="utf-8")
    elif suffix == ".pdf":
        target.write_bytes(compile_pdf(tex_standalone))
    else:
        # a PNG is rasterized from the PDF: both tools are checked before anything runs, the error says PNG
        require_tool("pdftoppm", "writing PNG")
        target.write_bytes(rasterize_pdf(compile_pdf(tex_standalone, purpose="writing PNG (LaTeX → PDF → PNG)"), dpi=dpi))
    return target
