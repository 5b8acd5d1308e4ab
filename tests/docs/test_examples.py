"""The gallery's examples run (in this process, matplotlib's Agg backend) and write what they promise.

Each example asserts its own numbers against an independent oracle (a plain-torch unfold, a dense
solve, per-sample ``torch.autograd``), so running it is the test.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
import torch

matplotlib = pytest.importorskip("matplotlib", reason="the examples draw with matplotlib (the docs extra)")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from gallery_module import ROOT, load_gallery  # noqa: E402

gallery = load_gallery()


def run(name: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(folder)
    try:
        with torch.random.fork_rng():  # the examples seed torch; later tests keep their random state
            runpy.run_path(str(ROOT / "examples" / f"{name}.py"), run_name="__main__")
    finally:
        plt.close("all")


def test_every_example_is_in_the_gallery() -> None:
    on_disk = {p.stem for p in (ROOT / "examples").glob("*.py")} - {"gallery"}
    assert on_disk == set(gallery.EXAMPLES)
    for name in gallery.EXAMPLES:
        title, text, body = gallery.title_and_text(ROOT / "examples" / f"{name}.py")
        assert title and text and "import" in body


@pytest.mark.parametrize("name", list(gallery.EXAMPLES))
def test_example_runs(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    run(name, tmp_path, monkeypatch)
    assert capsys.readouterr().out.strip(), "an example prints what it shows"
    for file in gallery.EXAMPLES[name]:
        data = (tmp_path / file).read_bytes()
        if file.endswith(".png"):
            assert data.startswith(b"\x89PNG"), file
        elif file.endswith(".svg"):
            assert b"<svg" in data[:500], file
        else:
            assert b"tikzpicture" in data, file


def test_backpack_comparison_degrades_without_backpack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "backpack", None)  # import backpack now raises ImportError
    run("kfac_reflect_padding", tmp_path, monkeypatch)
    out = capsys.readouterr().out
    assert "BackPACK is not installed" in out and "| tnderiv" in out and "| BackPACK" not in out
    assert (tmp_path / "kfac_factors.png").read_bytes().startswith(b"\x89PNG")


def test_gallery_page_shows_output_figures_and_source() -> None:
    run_ = gallery.Run("plan_candidates", "the table\n", {"candidates.png": b"\x89PNG", "notes.tex": b"x"}, 1.5)
    page = gallery.page(run_)
    assert page.startswith("# A plan and its candidates\n")
    assert "[![candidates.png](plan_candidates/candidates.png)](plan_candidates/candidates.png)" in page
    assert "[`notes.tex`](plan_candidates/notes.tex)" in page
    assert "```text\nthe table\n```" in page and "```python\n" in page and '"""' not in page
