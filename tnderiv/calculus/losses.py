"""Square roots of loss Hessians w.r.t. the network output: ``H_n = Σ_m S[m, n] S[m, n]ᵀ`` per sample.

``S`` has shape ``[M, N, *F]`` with ``F = output.shape[1:]`` (features, or classes and positions). The
loss Hessian is block-diagonal over samples; ``S[:, n]`` factorizes the block of sample ``n``
(over all of its output entries jointly), so quantities built on ``S`` share the sample leg ``n``.

- exact: ``M = ∏F`` — one column per output entry (MSE, BCE: diagonal Hessians; cross-entropy:
  one column per (class, position), ``diag(p) − ppᵀ = R Rᵀ`` with ``R = diag(√p) − p √pᵀ`` at
  each position, zero across positions).
- Monte-Carlo: ``M = mc_samples`` columns ``s_m / √M`` with ``E[s sᵀ] = H`` (labels sampled from
  the model's predictive distribution, Gaussian noise for MSE): unbiased, never exact.

Scaling follows the torch loss with the same ``reduction``: ``"sum"`` is the plain sum over every
output entry (cross-entropy: every position), ``"mean"`` divides by what torch divides by
(MSE and BCE: ``output.numel()``; cross-entropy: ``output.numel() / C``, i.e. samples × positions).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

from tnderiv.ir import Registry

Reduction = Literal["mean", "sum"]
REDUCTIONS: tuple[Reduction, ...] = get_args(Reduction)


@dataclass(frozen=True)
class LossHessian:
    """How one loss factorizes its Hessian w.r.t. the output (all for ``reduction="sum"``).

    ``exact(output, target) → [∏F, N, *F]``; ``sample(output, target, M, generator) → [M, N, *F]``
    with ``E[s sᵀ] = H`` per sample (not yet divided by ``√M``); ``mean_divisor(output)`` is what
    ``reduction="mean"`` divides the loss by; ``check_target`` raises for a target of the wrong kind.
    """

    name: str
    exact: Callable[[Any, Any], Any]
    sample: Callable[[Any, Any, int, Any], Any]
    mean_divisor: Callable[[Any], int]
    check_target: Callable[[Any, Any], None]
    min_ndim: int = 1


LOSSES: Registry[str, LossHessian] = Registry("loss", plural="losses")


def register_loss(loss: LossHessian, *, replace: bool = False) -> LossHessian:
    """Add ``loss`` to the registry under its name (a taken name raises ``DuplicateNameError`` unless ``replace``)."""
    return LOSSES.register(loss.name, loss, replace=replace)


def get_loss(name: Any) -> LossHessian:
    """The loss ``name``; raises listing the valid names."""
    if not isinstance(name, str):
        raise TypeError(f"loss must be a str naming the loss, got {type(name).__name__}; valid losses are {sorted(LOSSES)}")
    return LOSSES.lookup(name)


def loss_hessian_sqrt(
    loss: str,
    output: Any,
    target: Any,
    *,
    mc_samples: int = 0,
    reduction: Literal["mean", "sum"] = "mean",
    generator: Any = None,
) -> Any:
    """``S`` of shape ``[M, N, *output.shape[1:]]`` with ``Σ_m S[m, n] S[m, n]ᵀ`` = the loss Hessian of sample ``n``.

    ``mc_samples=0``: exact (``M = ∏ output.shape[1:]``); ``mc_samples > 0``: an unbiased Monte-Carlo
    estimate with ``M = mc_samples`` drawn with ``generator``. ``reduction`` scales as torch's loss does.
    ``N = 0`` gives an empty ``[M, 0, *F]``.
    """
    spec = check_loss_inputs(loss, output, target, mc_samples, reduction, generator)
    return compute_sqrt(spec, output, target, mc_samples, reduction, generator)


def check_loss_inputs(loss: str, output: Any, target: Any, mc_samples: int, reduction: Reduction, generator: Any) -> LossHessian:
    """Raise for bad arguments of ``loss_hessian_sqrt`` (naming them); returns the loss."""
    import torch

    spec = get_loss(loss)
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"output must be a torch.Tensor, got {type(output).__name__}")
    if output.is_complex():
        raise TypeError(f"output has dtype {output.dtype}: complex dtypes are not supported (real losses only)")
    if not output.is_floating_point():
        raise TypeError(f"output has dtype {output.dtype}; expected a floating-point dtype")
    if output.ndim < spec.min_ndim or output.ndim < 1:
        raise ValueError(f"output has shape {tuple(output.shape)}; {loss} needs at least {max(spec.min_ndim, 1)} axes [N, ...]")
    if any(size == 0 for size in output.shape[1:]):
        raise ValueError(f"output has shape {tuple(output.shape)}: an empty feature axis; {loss} needs at least one output per sample")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.device != output.device:
        raise ValueError(f"target is on {target.device} but output is on {output.device}; expected one device")
    spec.check_target(output, target)
    if not isinstance(mc_samples, int) or isinstance(mc_samples, bool) or mc_samples < 0:
        raise ValueError(f"mc_samples={mc_samples!r}: expected an int ≥ 0 (0 for the exact square root)")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}: expected one of {list(REDUCTIONS)}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if mc_samples and generator is not None and generator.device != output.device:
        raise ValueError(f"generator is on {generator.device} but output is on {output.device}; expected one device")
    return spec


def sqrt_bytes(output: Any, mc_samples: int) -> tuple[int, tuple[int, ...]]:
    """Bytes ``loss_hessian_sqrt`` allocates at its peak (``S`` and one temporary of its size), and ``S``'s shape."""
    columns = mc_samples or math.prod(output.shape[1:])
    return 2 * columns * output.numel() * output.element_size(), (columns, *output.shape)


def compute_sqrt(spec: LossHessian, output: Any, target: Any, mc_samples: int, reduction: Reduction, generator: Any) -> Any:
    """``S`` for checked arguments (see ``loss_hessian_sqrt``)."""
    import torch

    if output.shape[0] == 0:
        return output.new_zeros(sqrt_bytes(output, mc_samples)[1])
    with torch.no_grad():
        out, tgt = output.detach(), target.detach()
        if mc_samples:
            s = spec.sample(out, tgt, mc_samples, generator) / math.sqrt(mc_samples)
        else:
            s = spec.exact(out, tgt)
        if reduction == "mean":
            s = s / math.sqrt(spec.mean_divisor(out))
    return s


# ----- the losses ----------------------------------------------------------------------------------
def _one_hot_columns(scale: Any) -> Any:
    """``S[f, n, *F] = δ(f, F) · √scale[n, *F]``: a diagonal Hessian ``diag(scale)`` per sample."""
    import torch

    n = scale.shape[0]
    flat = scale.reshape(n, -1).sqrt()
    cols = torch.diag_embed(flat).permute(1, 0, 2)  # [F, N, F]
    return cols.reshape(flat.shape[1], *scale.shape)


def _same_shape_target(loss: str) -> Callable[[Any, Any], None]:
    def check(output: Any, target: Any) -> None:
        if tuple(target.shape) != tuple(output.shape):
            raise ValueError(f"target has shape {tuple(target.shape)}; {loss} expects the output's shape {tuple(output.shape)}")
        if not target.is_floating_point():
            raise TypeError(f"target has dtype {target.dtype}; {loss} expects a floating-point target")

    return check


def _mse_exact(output: Any, target: Any) -> Any:
    import torch

    return _one_hot_columns(torch.full_like(output, 2.0))


def _mse_sample(output: Any, target: Any, m: int, generator: Any) -> Any:
    import torch

    noise = torch.randn((m, *output.shape), generator=generator, dtype=output.dtype, device=output.device)
    return math.sqrt(2.0) * noise


def _bce_exact(output: Any, target: Any) -> Any:
    import torch

    p = torch.sigmoid(output)
    return _one_hot_columns(p * (1 - p))


def _bce_sample(output: Any, target: Any, m: int, generator: Any) -> Any:
    import torch

    p = torch.sigmoid(output)
    labels = torch.bernoulli(p.expand(m, *p.shape), generator=generator)
    return p - labels


def _ce_check(output: Any, target: Any) -> None:
    n, c, positions = output.shape[0], output.shape[1], tuple(output.shape[2:])
    if target.is_floating_point():
        if tuple(target.shape) != tuple(output.shape):
            raise ValueError(
                f"target has shape {tuple(target.shape)}; cross_entropy expects class probabilities of the output's "
                f"shape {tuple(output.shape)} or class indices of shape {(n, *positions)}"
            )
        return
    if target.dtype.is_complex or tuple(target.shape) != (n, *positions):
        raise ValueError(
            f"target has shape {tuple(target.shape)} and dtype {target.dtype}; cross_entropy expects class indices "
            f"of shape {(n, *positions)} or class probabilities of shape {tuple(output.shape)}"
        )
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= c):
        raise ValueError(
            f"target has class indices in [{int(target.min())}, {int(target.max())}]; expected indices in [0, {c}) "
            "(ignore_index is not supported)"
        )


def _ce_target_mass(output: Any, target: Any) -> Any:
    """``Σ_c t[n, c, *P]`` (1 for class indices): probability targets scale the Hessian by their total."""
    if target.is_floating_point():
        return target.sum(1, keepdim=True).to(output.dtype)
    return None


def _ce_exact(output: Any, target: Any) -> Any:
    import torch

    n, c = output.shape[:2]
    positions = tuple(output.shape[2:])
    p = torch.softmax(output, dim=1).reshape(n, c, -1)  # [N, C, L]
    eye = torch.eye(c, dtype=output.dtype, device=output.device)
    # R[n, c_m, c, l] = √p[c_m] (δ(c_m, c) − p[c]) at position l: Σ_{c_m} R Rᵀ = diag(p) − ppᵀ
    r = p.sqrt()[:, :, None, :] * (eye[None, :, :, None] - p[:, None, :, :])
    mass = _ce_target_mass(output, target)
    if mass is not None:
        r = r * mass.reshape(n, 1, 1, -1).sqrt()
    length = p.shape[2]
    # one column per (class, position): zero at every other position
    cols = torch.diag_embed(r.permute(1, 0, 2, 3))  # [C_m, N, C, L, L_m]
    cols = cols.permute(0, 4, 1, 2, 3).reshape(c * length, n, c, *positions)
    return cols


def _ce_sample(output: Any, target: Any, m: int, generator: Any) -> Any:
    import torch

    n, c = output.shape[:2]
    p = torch.softmax(output, dim=1)
    flat = p.movedim(1, -1).reshape(-1, c)  # [N·L, C]
    labels = torch.multinomial(flat, m, replacement=True, generator=generator)  # [N·L, M]
    one_hot = torch.nn.functional.one_hot(labels.T, c).to(output.dtype)  # [M, N·L, C]
    one_hot = one_hot.reshape(m, n, *output.shape[2:], c).movedim(-1, 2)  # [M, N, C, *P]
    s = p - one_hot
    mass = _ce_target_mass(output, target)
    return s if mass is None else s * mass.sqrt()


register_loss(LossHessian("mse", _mse_exact, _mse_sample, lambda out: out.numel(), _same_shape_target("mse")))
register_loss(
    LossHessian("bce_with_logits", _bce_exact, _bce_sample, lambda out: out.numel(), _same_shape_target("bce_with_logits"))
)
register_loss(
    LossHessian("cross_entropy", _ce_exact, _ce_sample, lambda out: out.numel() // out.shape[1], _ce_check, min_ndim=2)
)

__all__ = ["LOSSES", "REDUCTIONS", "LossHessian", "Reduction", "get_loss", "loss_hessian_sqrt", "register_loss"]
