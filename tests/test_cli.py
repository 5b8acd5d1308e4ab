"""The command line: the demo runs, checks itself against torch.autograd, and lists quantities."""

from __future__ import annotations

import pytest

from tnderiv.cli import main
from tnderiv.demo import run_demo


def test_demo_matches_autograd() -> None:
    lines: list[str] = []
    errors = run_demo(batch=2, print_fn=lines.append)
    assert set(errors) >= {"forward", "vjp_x", "vjp_weight", "vjp_bias", "per_sample_grad"}
    assert max(errors.values()) < 1e-10
    text = "\n".join(lines)
    assert "plan for" in text and "flops" in text


def test_cli_demo_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--batch", "2"]) == 0
    assert "largest deviation from torch.autograd" in capsys.readouterr().out


def test_cli_lists_quantities(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quantities"]) == 0
    out = capsys.readouterr().out
    for name in ("forward", "vjp_<operand>", "jvp_<operand>", "per_sample_grad_<param>"):
        assert name in out


def test_cli_unknown_command_fails() -> None:
    with pytest.raises(SystemExit):
        main(["no-such-command"])
