"""The small ones: messages that say how to fix the call, and documentation where people look."""

from __future__ import annotations

import importlib
import re
import shutil
from pathlib import Path

import pytest
import torch

import tnderiv

save = importlib.import_module("tnderiv.render.save")  # the module (tnderiv.render.save is also a function's name)

ROOT = Path(__file__).resolve().parents[1]


def raises(kind: type[Exception], *words: str):
    return pytest.raises(kind, match="(?s)" + "".join(f"(?=.*{re.escape(w)})" for w in words))


def test_getting_started_example_runs_and_a_missing_bias_says_how_to_fix_it():
    spec = tnderiv.Conv(8, 16, 3, dims=2, stride=2, padding=1)
    x, w, b = torch.randn(4, 8, 32, 32), torch.randn(16, 8, 3, 3), torch.randn(16)
    y = tnderiv.forward(spec, x, w, b)
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x, w, b, stride=2, padding=1), rtol=1e-4, atol=1e-4)
    with raises(ValueError, "forward of Conv2d", "bias=<tensor>", "bias=False"):
        tnderiv.forward(spec, x, w)
    text = (ROOT / "docs" / "getting-started.md").read_text()
    assert "y = tnderiv.forward(spec, x, w, b)" in text


@pytest.mark.parametrize(
    "call, expected",
    [
        (lambda: tnderiv.forward(tnderiv.Conv(8, 16, 3, bias=False), torch.randn(2, 8, 9, 9), torch.randn(16, 4, 3, 3)), "expected 8 (the layer's c_in)"),
        (lambda: tnderiv.forward(tnderiv.Linear(8, 16, bias=False), torch.randn(2, 8), torch.randn(16, 4)), "expected 8 (the layer's c_in)"),
        (lambda: tnderiv.vjp(tnderiv.Conv(4, 6, 3, bias=False), "weight", torch.randn(2, 6, 4, 3), x=torch.randn(2, 4, 5, 5)), "expected 3 = I0 - 2 with I0=5"),
    ],
    ids=["conv-c_in", "linear-c_in", "formula"],
)
def test_size_mismatch_says_where_the_expected_size_comes_from(call, expected):
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert expected in message
    assert not re.search(r"expected (\d+) = \1\b", message), message  # never "expected 8 = 8"


def test_layernorm_messages_never_name_internal_operands():
    ln = torch.nn.LayerNorm(4)
    assert tnderiv.forward(ln, torch.randn(0, 4)).shape == (0, 4)
    for call in (
        lambda: tnderiv.forward(ln, torch.randn(3, 5)),
        lambda: tnderiv.vjp(ln, "x", torch.randn(3, 4)),
        lambda: tnderiv.forward(tnderiv.LayerNorm(4), torch.randn(3, 4)),
    ):
        with pytest.raises(ValueError) as info:
            call()
        assert "x_hat" not in str(info.value) and "inv_std" not in str(info.value), str(info.value)


def test_png_without_tex_speaks_of_png(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "pdflatex" else real(name))
    with raises(RuntimeError, "writing PNG", "pdflatex", ".svg"):
        save.write(tmp_path / "d.png", tex_standalone="", svg="")
    with raises(RuntimeError, "writing PDF", "pdflatex"):
        save.write(tmp_path / "d.pdf", tex_standalone="", svg="")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with raises(RuntimeError, "writing PNG", "pdftoppm"):
        save.write(tmp_path / "d.png", tex_standalone="", svg="")


def test_kfac_loss_average_is_said_where_people_look():
    for function in (tnderiv.kfac, tnderiv.kfac_factors_output):
        first = function.__doc__.strip().splitlines()[0]
        assert "N · Σ g gᵀ" in first and "batch-mean" in first, first
    readme = (ROOT / "README.md").read_text()
    assert "loss_average=None" in readme.split("tnderiv.kfac(conv", 1)[1].split("```", 1)[0]
    # and what it says holds: G = N · Σ_n g gᵀ for a Linear layer (oracle: an outer product in torch)
    lin = torch.nn.Linear(3, 2).double()
    x, g = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    k = tnderiv.kfac(lin, x, g)
    torch.testing.assert_close(k.G[0], 5 * g.T @ g)
    torch.testing.assert_close(tnderiv.kfac(lin, x, g, loss_average=None).G[0], g.T @ g)
