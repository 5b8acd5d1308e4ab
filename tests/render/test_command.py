"""``tnderiv render``: the spec syntax, files by suffix, clear errors."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tnderiv.layers import Conv, Linear
from tnderiv.render.command import run_render  # noqa: F401
from tnderiv.render.spec import parse_spec, parse_value


def _main(argv: list[str]) -> int:
    from tnderiv.cli import main

    return main(argv)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("conv2d", Conv(2, 2, 3, dims=2)),
        ("conv2d:stride=2,groups=2", Conv(4, 4, 3, dims=2, stride=2, groups=2)),
        (
            "conv1d:kernel=5,dilation=2,padding=same,bias=false",
            Conv(2, 2, 5, dims=1, dilation=2, padding="same", bias=False),
        ),
        ("conv2d:stride=2x1", Conv(2, 2, 3, dims=2, stride=(2, 1))),
        (
            "conv_transpose2d:stride=2,output_padding=1",
            Conv(2, 2, 3, dims=2, stride=2, transposed=True, output_padding=1),
        ),
        ("linear:in=8,out=5", Linear(8, 5)),
    ],
)
def test_spec_syntax(text: str, expected) -> None:
    assert parse_spec(text)[0] == expected


def test_values_and_shapes() -> None:
    assert parse_value("2x3") == (2, 3) and parse_value("true") is True and parse_value("1e-5") == 1e-5
    assert parse_value("reflect") == "reflect"
    assert parse_spec("linear:shared=2")[1] == {"x": (2, 3, 3, 3)}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("conv9d", "unknown layer 'conv9d'.*valid layers are"),
        ("conv2d:foo=1", "unknown key 'foo' for conv2d.*valid keys are"),
        ("conv2d:stride", "expected key=value"),
        ("conv2d:groups=3,in=4", "not divisible by groups=3"),
        ("", "expected KIND"),
    ],
)
def test_spec_errors(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_spec(text)


def test_render_to_svg_and_tex(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _main(["render", "conv2d:stride=2", "vjp_weight", "-o", str(tmp_path / "a.svg")]) == 0
    ET.parse(tmp_path / "a.svg")
    assert _main(["render", "linear", "vjp_weight", "--trace", "-o", str(tmp_path / "b.tex")]) == 0
    assert r"\draw[tnd arrow]" in (tmp_path / "b.tex").read_text()
    capsys.readouterr()
    assert _main(["render", "conv1d", "forward", "-o", "-"]) == 0
    assert r"\begin{tikzpicture}" in capsys.readouterr().out


def test_render_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _main(["render", "conv2d", "vjp_nope", "-o", str(tmp_path / "a.svg")]) == 2
    assert "unknown operand 'nope'" in capsys.readouterr().err
    assert _main(["render", "conv2d", "forward"]) == 2
    assert "expected SPEC QUANTITY -o FILE" in capsys.readouterr().err
    assert _main(["render", "conv2d", "--gallery", str(tmp_path)]) == 2


def test_layer_kinds_are_registered_once() -> None:
    from tnderiv.ir import DuplicateNameError, UnknownNameError
    from tnderiv.render.spec import LAYER_KINDS, register_layer_kind

    linear = LAYER_KINDS["linear"]
    with pytest.raises(DuplicateNameError, match=r"^layer 'linear' is already registered; pass replace=True"):
        register_layer_kind("linear", linear.defaults, linear.doc)(linear.build)
    register_layer_kind("linear", linear.defaults, linear.doc, replace=True)(linear.build)
    assert LAYER_KINDS["linear"] == linear
    with pytest.raises(UnknownNameError, match=r"^unknown layer 'conv9d' in spec 'conv9d:stride=2'; valid layers are \['batchnorm1d'"):
        parse_spec("conv9d:stride=2")
