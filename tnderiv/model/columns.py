"""One forward and backward of a model with recorded layers, and the batched pull-back of loss-Hessian columns.

``run_model`` returns the loss, the parameters' gradients and each recorded call's output gradients from a
single ``torch.autograd.grad``. ``pull_back`` sends square-root columns ``S [M, N, *F]`` from the model's
output to every recorded output in one batched backward (``is_grads_batched``), in chunks of columns.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd.graph import GradientEdge

from tnderiv.model.loss import ModelLoss
from tnderiv.model.record import Recorder, Use


@dataclass
class Pass:
    """What one recorded forward and backward produced."""

    loss: torch.Tensor
    output: torch.Tensor  # the model's output, canonical layout (classes on axis 1)
    y: torch.Tensor
    n: int
    divisor: int
    uses: dict[str, list[Use]]
    grads_out: dict[tuple[str, int], list[torch.Tensor | None]]
    param_grads: dict[str, torch.Tensor | None]


def call_model(model: torch.nn.Module, x: Any) -> Any:
    """``model(x)``, ``model(*x)`` for a tuple or list, ``model(**x)`` for a dict (HuggingFace style)."""
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


def run_model(
    model: torch.nn.Module, loss: ModelLoss, recorder: Recorder, x: Any, y: torch.Tensor, params: dict[str, torch.Tensor]
) -> Pass:
    """Forward with recording, the loss, and one backward for parameters and recorded outputs."""
    recorder.clear()
    with recorder.recording():
        raw = call_model(model, x)
    out = raw.logits if hasattr(raw, "logits") and not isinstance(raw, torch.Tensor) else raw
    output, target = loss.canonical(out, y)
    divisor = loss.divisor(output, target)
    value = loss.summed(output, target) / divisor
    keys, edges = [], []
    for name, uses in recorder.uses.items():
        for i, use in enumerate(uses):
            for j, edge in enumerate(use.edges):
                if edge is not None:
                    keys.append((name, i, j))
                    edges.append(edge)
    names = list(params)
    inputs: list[Any] = [params[k] for k in names] + edges
    grads = torch.autograd.grad(value, inputs, retain_graph=True, allow_unused=True, materialize_grads=False)
    param_grads = dict(zip(names, grads[: len(names)]))
    grads_out: dict[tuple[str, int], list[torch.Tensor | None]] = {}
    for name, uses in recorder.uses.items():
        for i, use in enumerate(uses):
            grads_out[(name, i)] = [None] * len(use.outputs)
    for (name, i, j), g in zip(keys, grads[len(names) :]):
        grads_out[(name, i)][j] = g
    return Pass(value.detach(), output, target, int(y.shape[0]), divisor, recorder.uses, grads_out, param_grads)


def pull_back(
    run: Pass, sqrt: torch.Tensor, keys: Sequence[tuple[str, int]], chunk: int
) -> Iterator[dict[tuple[str, int], list[torch.Tensor | None]]]:
    """For each chunk of at most ``chunk`` columns of ``sqrt`` ``[M, N, *F]``: the columns at the recorded outputs
    ``{(module, use): [[m, *output] per output]}``."""
    flat: list[tuple[tuple[str, int], int, GradientEdge]] = []
    for key in keys:
        use = run.uses[key[0]][key[1]]
        for j, edge in enumerate(use.edges):
            if edge is not None:
                flat.append((key, j, edge))
    m = sqrt.shape[0]
    for start in range(0, m, chunk):
        part = sqrt[start : start + chunk].to(run.output.dtype)
        if not flat:
            yield {key: [] for key in keys}
            continue
        grads = torch.autograd.grad(
            run.output, [e for _, _, e in flat], grad_outputs=part, retain_graph=True, is_grads_batched=True, allow_unused=True
        )
        result: dict[tuple[str, int], list[torch.Tensor | None]] = {
            key: [None] * len(run.uses[key[0]][key[1]].outputs) for key in keys
        }
        for (key, j, _), g in zip(flat, grads):
            result[key][j] = g
        yield result


__all__ = ["Pass", "call_model", "pull_back", "run_model"]
