"""The model's loss as tnderiv sees it: its value, its divisor, and square roots of its Hessian.

A loss module (``CrossEntropyLoss``, ``MSELoss``, ``BCEWithLogitsLoss``, reduction ``mean`` or ``sum``)
is read once into a ``ModelLoss``. Cross-entropy also takes sequence outputs ``[N, *S, C]`` with
targets ``[N, *S]`` (classes last, as language models return them) and ``ignore_index``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from tnderiv.api_ggn import loss_hessian_sqrt

_NAMES = {nn.CrossEntropyLoss: "cross_entropy", nn.MSELoss: "mse", nn.BCEWithLogitsLoss: "bce_with_logits"}
FISHERS = ("type-2", "mc", "empirical", "forward-only")


@dataclass(frozen=True)
class ModelLoss:
    """A supported torch loss: ``name`` (tnderiv's loss name), ``reduction`` and cross-entropy's ``ignore_index``."""

    name: str
    reduction: str
    ignore_index: int = -100

    @classmethod
    def from_module(cls, loss_fn: Any) -> ModelLoss:
        """Read a torch loss module; raises naming any loss or setting that is not supported."""
        name = next((n for t, n in _NAMES.items() if type(loss_fn) is t), None)
        if name is None:
            supported = ", ".join(t.__name__ for t in _NAMES)
            raise TypeError(f"loss_fn of type {type(loss_fn).__name__} is not supported; expected one of {supported}")
        reduction = loss_fn.reduction
        if reduction not in ("mean", "sum"):
            raise ValueError(f"loss_fn has reduction={reduction!r}; expected 'mean' or 'sum'")
        if getattr(loss_fn, "weight", None) is not None:
            raise ValueError(f"{type(loss_fn).__name__} with weight= is not supported (class weights)")
        if getattr(loss_fn, "pos_weight", None) is not None:
            raise ValueError("BCEWithLogitsLoss with pos_weight= is not supported")
        if getattr(loss_fn, "label_smoothing", 0.0):
            raise ValueError(f"CrossEntropyLoss with label_smoothing={loss_fn.label_smoothing} is not supported")
        return cls(name, reduction, getattr(loss_fn, "ignore_index", -100))

    # ----- shapes ----------------------------------------------------------------------------------
    def canonical(self, output: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(output, y)`` in torch's layout (classes on axis 1); checks ``y`` against ``output``."""
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"the model returned {type(output).__name__}; expected a tensor (the model's output)")
        if output.ndim < 1 or y.ndim < 1 or output.shape[0] != y.shape[0]:
            raise ValueError(
                f"y has shape {tuple(y.shape)} but the model's output has shape {tuple(output.shape)}; "
                "expected the same batch size N on axis 0"
            )
        if self.name != "cross_entropy":
            if tuple(y.shape) != tuple(output.shape):
                raise ValueError(f"y has shape {tuple(y.shape)}; {self.name} expects the output's shape {tuple(output.shape)}")
            if not y.is_floating_point():
                raise TypeError(f"y has dtype {y.dtype}; {self.name} expects floating-point targets")
            return output, y.to(output.dtype)
        if output.ndim < 2:
            raise ValueError(f"the model's output has shape {tuple(output.shape)}; cross-entropy expects [N, C, ...]")
        if y.is_floating_point():
            if tuple(y.shape) != tuple(output.shape):
                raise ValueError(f"y has shape {tuple(y.shape)}; class probabilities must have the output's shape {tuple(output.shape)}")
            return output, y
        if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise TypeError(f"y has dtype {y.dtype}; cross-entropy expects integer class indices or probabilities")
        n = output.shape[0]
        if tuple(y.shape) == (n, *output.shape[2:]):
            return output, y.long()
        if output.ndim >= 3 and tuple(y.shape) == tuple(output.shape[:-1]):
            return output.movedim(-1, 1), y.long()  # [N, *S, C] → [N, C, *S]
        raise ValueError(
            f"y has shape {tuple(y.shape)} for an output of shape {tuple(output.shape)}; cross-entropy expects "
            f"class indices of shape {(n, *output.shape[2:])} (classes on axis 1) or {tuple(output.shape[:-1])} (classes last)"
        )

    def _kept(self, y: torch.Tensor) -> torch.Tensor | None:
        """The positions that count (``y != ignore_index``), or None when all do."""
        if self.name != "cross_entropy" or y.is_floating_point():
            return None
        kept = y != self.ignore_index
        return None if bool(kept.all()) else kept

    def divisor(self, output: torch.Tensor, y: torch.Tensor) -> int:
        """What ``reduction="mean"`` divides the summed loss by (1 for ``"sum"``); ``output`` canonical."""
        if self.reduction == "sum":
            return 1
        kept = self._kept(y)
        if kept is not None:
            return int(kept.sum())
        return output.numel() // output.shape[1] if self.name == "cross_entropy" else output.numel()

    # ----- values ----------------------------------------------------------------------------------
    def summed(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss with ``reduction="sum"`` (``output`` canonical; ignored positions count 0)."""
        if self.name == "cross_entropy":
            return F.cross_entropy(output, y, reduction="sum", ignore_index=self.ignore_index)
        if self.name == "mse":
            return F.mse_loss(output, y, reduction="sum")
        return F.binary_cross_entropy_with_logits(output, y, reduction="sum")

    def value(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss as the user's module computes it (``output`` canonical)."""
        return self.summed(output, y) / self.divisor(output, y)

    def hessian_sqrt(
        self, output: torch.Tensor, y: torch.Tensor, fisher: str, mc_samples: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        """``S`` ``[M, N, *F]`` of the reduced loss (``output`` canonical): exact (type-2) or Monte-Carlo."""
        kept = self._kept(y)
        target = y if kept is None else torch.where(kept, y, torch.zeros_like(y))
        s = loss_hessian_sqrt(
            self.name, output.detach(), target, mc_samples=mc_samples if fisher == "mc" else 0, reduction="sum", generator=generator
        )
        if kept is not None:
            s = s * kept.unsqueeze(1).to(s.dtype)  # ignored positions have no Hessian
        d = self.divisor(output, y)
        return s if d == 1 else s / math.sqrt(d)


__all__ = ["FISHERS", "ModelLoss"]
