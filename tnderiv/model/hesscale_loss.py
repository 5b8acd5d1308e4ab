"""The loss at the end of the model: which torch losses are supported, and the exact square root of their Hessian."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from tnderiv.api_ggn import loss_hessian_sqrt

# torch loss type → tnderiv loss name (tnderiv.loss_hessian_sqrt)
LOSS_TYPES: dict[type[nn.Module], str] = {
    nn.CrossEntropyLoss: "cross_entropy",
    nn.MSELoss: "mse",
    nn.BCEWithLogitsLoss: "bce_with_logits",
}


@dataclass(frozen=True)
class LossSpec:
    """A supported loss: tnderiv's name for it and torch's ``reduction`` (``"mean"`` or ``"sum"``)."""

    name: str
    reduction: str


def loss_spec(loss_fn: Any) -> LossSpec:
    """The spec of a torch loss module; raises naming the loss and the setting that is not supported."""
    kind = next((name for t, name in LOSS_TYPES.items() if type(loss_fn) is t), None)
    if kind is None:
        valid = ", ".join(t.__name__ for t in LOSS_TYPES)
        raise TypeError(f"loss_fn of type {type(loss_fn).__name__} is not supported; expected one of {valid}")
    where = f"loss_fn {type(loss_fn).__name__}"
    if loss_fn.reduction not in ("mean", "sum"):
        raise ValueError(f"{where} has reduction={loss_fn.reduction!r}; expected 'mean' or 'sum'")
    if getattr(loss_fn, "weight", None) is not None:
        raise ValueError(f"{where} has weight= set; per-class or per-entry loss weights are not supported")
    if getattr(loss_fn, "pos_weight", None) is not None:
        raise ValueError(f"{where} has pos_weight= set; it is not supported")
    # label smoothing mixes targets that each sum to one: the Hessian w.r.t. the logits is unchanged
    return LossSpec(kind, loss_fn.reduction)


def check_target(loss_fn: nn.Module, target: torch.Tensor) -> None:
    """Raise where the loss's Hessian would not be the one ``loss_hessian_sqrt`` factorizes.

    Label smoothing leaves the cross-entropy Hessian unchanged only for targets of total mass one per position
    (class indices, or probabilities summing to one): it mixes the target with the uniform distribution.
    """
    smoothing = getattr(loss_fn, "label_smoothing", 0.0)
    if smoothing and target.is_floating_point() and target.ndim >= 2:
        mass = target.sum(1)
        if not torch.allclose(mass, torch.ones_like(mass)):
            raise ValueError(
                f"loss_fn CrossEntropyLoss has label_smoothing={smoothing} and y holds probabilities that do not sum "
                "to one per sample (and position); expected class indices or probabilities summing to one"
            )


def output_sqrt(spec: LossSpec, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Exact ``S`` ``[M, N, *output.shape[1:]]`` with ``Σ_m S[m, n] S[m, n]ᵀ`` the loss Hessian of sample ``n``."""
    return loss_hessian_sqrt(spec.name, output, target, reduction=spec.reduction)


__all__ = ["LOSS_TYPES", "LossSpec", "check_target", "loss_spec", "output_sqrt"]
