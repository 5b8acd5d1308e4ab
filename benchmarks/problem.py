"""The tensors of one benchmark: a case's module, input, output gradient and loss-Hessian square root."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

from benchmarks.cases import NUM_CLASSES, Case

Tensor = torch.Tensor


@dataclass
class Problem:
    """Seeded operands of ``case`` in ``dtype`` on ``device`` (the same values for every implementation).

    ``grad_out`` ``[N, *out]`` is random; the GGN square root ``sqrt_out`` ``[M, N, *out]`` is that of
    ``MSELoss(reduction="sum")`` on a linear head ``out → M`` (``M = NUM_CLASSES``, no bias) placed
    after the layer: ``sqrt_out[m, n] = √2 · head.weight[m]``, the same for every sample.
    """

    case: Case
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        self.module = self.case.module(self.dtype, self.device, self.seed)
        self.module.requires_grad_(False)
        self.module.weight.requires_grad_(True)
        gen = torch.Generator(device="cpu").manual_seed(self.seed + 1)
        self.x = torch.randn(self.case.x_shape, generator=gen, dtype=self.dtype).to(self.device)
        self.out_shape = self.case.output_shape()
        self.grad_out = torch.randn(self.out_shape, generator=gen, dtype=self.dtype).to(self.device)
        self._gen = gen

    @cached_property
    def head(self) -> torch.nn.Linear:
        """The linear head ``prod(out[1:]) → M`` that defines ``sqrt_out`` (parameters frozen)."""
        features = math.prod(self.out_shape[1:])
        torch.manual_seed(self.seed + 2)
        head = torch.nn.Linear(features, NUM_CLASSES, bias=False).to(self.dtype).to(self.device)
        head.weight.data.mul_(math.sqrt(features) / 4)  # O(1) entries, like the other operands
        return head.requires_grad_(False)

    @cached_property
    def sqrt_out(self) -> Tensor:
        columns = math.sqrt(2.0) * self.head.weight.reshape(NUM_CLASSES, 1, *self.out_shape[1:])
        return columns.expand(NUM_CLASSES, *self.out_shape).contiguous()

    @cached_property
    def mse_target(self) -> Tensor:
        """Target for ``MSELoss(reduction="sum")`` on the flattened output so that its gradient is ``grad_out``."""
        with torch.no_grad():
            return (self.module(self.x) - self.grad_out / 2).flatten(1)
