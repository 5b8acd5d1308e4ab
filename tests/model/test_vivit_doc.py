"""The example on docs/vivit.md runs and its shapes are as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[2] / "docs" / "vivit.md"


def test_vivit_page_example_runs() -> None:
    (block,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    scope: dict = {}
    torch.manual_seed(0)
    exec(compile(block, str(DOC), "exec"), scope)  # noqa: S102  (our own documentation)
    eig, dd, step = scope["eig"], scope["dd"], scope["step"]
    assert tuple(eig.eigenvalues.shape) == (5,) and tuple(eig.eigenvectors["0.weight"].shape) == (5, 8, 3, 3, 3)
    assert tuple(dd.gammas.shape) == (16, 5) and tuple(dd.lambdas.shape) == (16, 5)
    assert set(step) == {n for n, _ in scope["model"].named_parameters()}
    # Σ_n λ[n, k] = λ_k (the page's scaling statement)
    assert torch.allclose(dd.lambdas.sum(0), eig.eigenvalues, rtol=1e-3)
