"""The code on docs/whole-models.md runs as written, and what it claims holds (checked against torch)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[2] / "docs" / "whole-models.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def _run(blocks: list[str]) -> dict:
    scope: dict = {}
    torch.manual_seed(0)
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), scope)  # noqa: S102  (our own documentation)
    return scope


def test_every_block_runs() -> None:
    assert len(_blocks()) >= 4
    _run(_blocks())


def test_first_example_fills_grad_as_backward() -> None:
    scope = _run(_blocks()[:1])
    model, x, y, res = scope["model"], scope["x"], scope["y"], scope["res"]
    assert tuple(res["0"]["ggn_diag"]["weight"].shape) == (8, 3, 3, 3)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert torch.allclose(res.loss, loss.detach())
    for n, p in model.named_parameters():
        assert torch.allclose(grads[n], p.grad, atol=1e-6)


def test_over_batches_equals_the_concatenation() -> None:
    scope = _run(_blocks()[:2])
    over, batches, curv = scope["over"], scope["batches"], scope["curv"]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    full = curv.compute(x, y, ("grad", "sum_grad_squared", "variance", "ggn_diag"), set_grad=False)
    for module in full:
        for q, per in full[module].items():
            for name, value in per.items():
                assert torch.allclose(over[module][q][name], value, rtol=1e-4, atol=1e-7), (module, q, name)
