"""The example on docs/laplace.md runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

DOC = Path(__file__).resolve().parents[2] / "docs" / "laplace.md"


def test_laplace_page_example_runs() -> None:
    pytest.importorskip("laplace", reason="laplace-torch is an optional peer (the peers extra)")
    (block,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    scope: dict = {}
    torch.manual_seed(0)
    exec(compile(block, str(DOC), "exec"), scope)  # noqa: S102  (our own documentation)
    probs = scope["probs"]
    assert tuple(probs.shape) == (4, 3) and torch.allclose(probs.sum(1), torch.ones(4), atol=1e-5)
