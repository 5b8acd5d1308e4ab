"""The committed gallery is what the code draws now, and every TikZ file in it compiles with plain pdflatex."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from render_checks import layout_problems, term_picture

from tnderiv.render.gallery import Entry, gallery_files
from tnderiv.render.tikz import STANDALONE

GALLERY = Path(__file__).resolve().parents[2] / "diagrams"
REGENERATE = "run `tnderiv render --gallery diagrams/` and commit the result"


def _committed() -> dict[str, str]:
    files = {p.relative_to(GALLERY).as_posix(): p for p in GALLERY.glob("*/*") if p.suffix in (".tex", ".svg")}
    files["README.md"] = GALLERY / "README.md"
    return {k: p.read_text(encoding="utf-8") for k, p in files.items() if p.exists()}


def test_committed_gallery_is_up_to_date(entries: list[Entry]) -> None:
    expected, committed = gallery_files(entries=entries), _committed()
    missing = sorted(set(expected) - set(committed))
    extra = sorted(set(committed) - set(expected))
    changed = sorted(k for k in set(expected) & set(committed) if expected[k] != committed[k])
    assert not (missing or extra or changed), (
        f"gallery is stale ({REGENERATE}): missing {missing[:5]}, extra {extra[:5]}, changed {changed[:5]}"
    )


def test_every_gallery_drawing_is_clean(entries: list[Entry]) -> None:
    """Every leg drawn once, every node placed, no overlaps, labelled open legs: in every term of the gallery."""
    problems = []
    checked = 0
    for entry in entries:
        if entry.picture is None or entry.quantity.startswith("derivation"):
            continue
        for index, term in enumerate(getattr(entry.expression, "terms", (entry.expression,))):
            found = layout_problems(term, term_picture(entry.picture, index))
            problems += [f"{entry.layer}/{entry.quantity} term {index}: {p}" for p in found]
            checked += 1
    assert checked > 150 and problems == []


def test_gallery_readme_shows_every_drawing() -> None:
    readme = (GALLERY / "README.md").read_text(encoding="utf-8")
    for svg in GALLERY.glob("*/*.svg"):
        assert f"]({svg.parent.name}/{svg.name})" in readme


def _compile(tex_files: list[Path], workdir: Path, name: str) -> Path:
    pages = "".join("\\tnderivpage{%\n\\input{" + f.resolve().as_posix() + "}%\n}\n" for f in tex_files)
    (workdir / f"{name}.tex").write_text(STANDALONE + pages + "\\end{document}\n", encoding="utf-8")
    result = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape", f"{name}.tex"],
        cwd=workdir, capture_output=True, text=True, errors="replace", timeout=600, check=False,
    )  # fmt: skip
    errors = [line for line in result.stdout.splitlines() if line.startswith("!")]
    assert result.returncode == 0, f"pdflatex failed on {name}: {errors[:5]}"
    return workdir / f"{name}.pdf"


def _pages(pdf: Path) -> int:
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    return int(next(line.split()[-1] for line in info.splitlines() if line.startswith("Pages:")))


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed (CI installs it)")
def test_every_gallery_tikz_file_compiles_with_pdflatex_and_rasterizes() -> None:
    tex_files = sorted(GALLERY.glob("*/*.tex"))
    assert len(tex_files) > 50
    chunks = [tex_files[i::2] for i in range(2)]  # two pdflatex runs side by side
    with tempfile.TemporaryDirectory(prefix="tnderiv-gallery-") as tmp:
        with ThreadPoolExecutor(max_workers=2) as pool:
            pdfs = list(pool.map(lambda c: _compile(c[1], Path(tmp), f"part{c[0]}"), enumerate(chunks)))
        assert sum(_pages(pdf) for pdf in pdfs) == len(tex_files)
        # one page as a grayscale image: it has ink, and its size matches the picture's bounding box
        subprocess.run(["pdftoppm", "-gray", "-r", "72", "-f", "1", "-l", "1", "-singlefile", str(pdfs[0]), "page"],
                       cwd=tmp, check=True, timeout=120)  # fmt: skip
        width, height, pixels = _read_pgm(Path(tmp) / "page.pgm")
        first = chunks[0][0].read_text(encoding="utf-8")
        box = first.split(r"\useasboundingbox ")[1].split(";")[0]
        (x0, y0), (x1, y1) = (tuple(float(v) for v in part.strip(" ()").split(",")) for part in box.split("rectangle"))
        assert width == pytest.approx((x1 - x0) / 2.54 * 72, abs=2)
        assert height == pytest.approx((y1 - y0) / 2.54 * 72, abs=2)
        dark = sum(1 for v in pixels if v < 128)
        assert 0.005 < dark / len(pixels) < 0.5


def _read_pgm(path: Path) -> tuple[int, int, bytes]:
    data = path.read_bytes()
    fields, pos = [], 0
    while len(fields) < 4:
        while data[pos : pos + 1].isspace():
            pos += 1
        start = pos
        while not data[pos : pos + 1].isspace():
            pos += 1
        fields.append(data[start:pos])
    assert fields[0] == b"P5"
    width, height = int(fields[1]), int(fields[2])
    return width, height, data[pos + 1 : pos + 1 + width * height]
