"""The example on docs/singd.md runs and its shapes are as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "singd.md"


def test_singd_page_example_runs() -> None:
    (block,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    scope: dict = {}
    exec(compile(block, str(DOC), "exec"), scope)  # noqa: S102  (our own documentation)
    a = scope["a"]
    assert tuple(scope["blocks"].parts["blocks"].shape) == (8, 8, 8)
    assert torch.allclose(scope["diag"].parts["diag"], (a * a).sum(1), rtol=1e-5)
    assert tuple(scope["h"].shape) == (16, 5, 3, 3)
    assert [tuple(m.parts["diag"].shape) for m in scope["per_mode"]] == [(16,), (8,), (3,), (3,)]
