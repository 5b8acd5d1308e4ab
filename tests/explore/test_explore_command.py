"""``tnderiv explore``: the static page, the served page (until Ctrl-C) and errors before any work."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from tnderiv.cli import main
from tnderiv.explore.command import parse_shapes
from tnderiv.explore.server import ExplorerServer


def test_static_page_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "page.html"
    assert main(["explore", "conv1d:stride=2", "per_sample_grad", "--shapes", "x=3x2x9", "--static", str(out)]) == 0
    page = out.read_text()
    assert 'data-mode="static"' in page and "connect-src &#x27;none&#x27;" in page  # attribute-escaped
    assert '"x":[3,2,9]' in page  # the shapes given on the command line
    assert f"wrote {out}" in capsys.readouterr().out


def test_serves_until_interrupted(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    answers: list[int] = []

    def serve_then_interrupt(self: ExplorerServer) -> None:
        self.start()
        with urllib.request.urlopen(self.url, timeout=30) as response:
            answers.append(response.status)
        self.httpd.shutdown()
        raise KeyboardInterrupt  # what Ctrl-C does to serve_forever

    opened: list[str] = []
    monkeypatch.setattr(ExplorerServer, "serve_forever", serve_then_interrupt)
    monkeypatch.setattr("webbrowser.open", opened.append)
    assert main(["explore", "linear", "vjp_weight", "--open"]) == 0
    out = capsys.readouterr().out
    assert "serving linear vjp_weight at http://127.0.0.1:" in out and "stopped" in out
    assert answers == [200] and len(opened) == 1 and opened[0] in out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["explore", "conv2d", "vjp_weight", "--host", "0.0.0.0"], "loopback"),
        (["explore", "conv9d", "vjp_weight"], "unknown layer 'conv9d'"),
        (["explore", "conv2d", "vjp_weight", "--shapes", "x=4x2x8"], "x has shape (4, 2, 8)"),
        (["explore", "conv2d", "vjp_weight", "--shapes", "x:4"], "expected NAME=AxBxC"),
        (["explore", "conv2d:in=3,groups=2", "vjp_weight"], "not divisible by groups"),
        (["explore", "conv2d", "vjp_weight", "--static", "page.txt"], "expected a .html file"),
    ],
)
def test_errors_exit_2_with_the_library_message(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tnderiv explore: error:") and message in err and "Traceback" not in err


def test_parse_shapes() -> None:
    assert parse_shapes(["x=4x2x8x8,grad_out=4x2x6x6", "y=3"]) == {"x": (4, 2, 8, 8), "grad_out": (4, 2, 6, 6), "y": (3,)}
