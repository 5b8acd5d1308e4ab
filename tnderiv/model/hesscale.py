"""Hessian diagonals in one backward pass: BL89, HesScale and HesScaleGN for sequential models.

For a chain ``z = layer(h)``, ``h = f(z)`` and the loss at the model output, each method carries a diagonal
``d`` of the Hessian w.r.t. every module's output backwards (``g`` are the gradients):

- at the output ``d = diag(∇²ℓ)`` per sample (exact, from the loss-Hessian square root ``S``);
- a layer's parameter diagonal ``Σ_{n,out} d[n, out] (∂out/∂θ)²`` and its input diagonal ``(J ⊙ J)ᵀ d`` come from
  the derived ``hadamard_vjp`` quantity (the Hadamard square of the layer's Jacobian diagram; for a zero-padded
  convolution the transposed convolution with squared weights, because ``Π ⊙ Π = Π``);
- through an elementwise activation ``d_z = f′(z)² d_h + f″(z) g_h`` (``hesscale_gn`` drops ``f″ g_h``).

``bl89`` (Becker & LeCun 1989) does this from the loss on. ``hesscale`` and ``hesscale_gn`` (Elsayed et al.,
arXiv 2210.11639, 2406.03276) keep the *full* output Hessian down to the input of the last Linear/Conv layer, so
that its input diagonal is the exact ``diag(W_Lᵀ H W_L) = Σ_m (W_Lᵀ s_m)²`` where BL89 has ``(W_L ⊙ W_L)ᵀ diag(H)``.
All three are exact for the last layer's parameters; ``hesscale`` is the exact Hessian diagonal of a network with
one hidden layer, ``hesscale_gn`` its exact GGN diagonal; with a diagonal output Hessian (MSE, BCE) ``bl89`` and
``hesscale`` agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
import torch.nn as nn

from tnderiv.model.hesscale_loss import check_target, loss_spec, output_sqrt
from tnderiv.model.hesscale_modules import Role, Step, flatten_model, mark_elementwise
from tnderiv.model.hesscale_steps import (
    OutputCurvature,
    avg_pool_input,
    diagonal_input,
    elementwise_input,
    layer_input,
    layer_param_diagonals,
    select_input,
)

Method = Literal["bl89", "hesscale", "hesscale_gn"]
METHODS: tuple[str, ...] = ("bl89", "hesscale", "hesscale_gn")


def hessian_diagonal(
    model: nn.Module,
    loss_fn: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    method: Method,
    params: Iterable[Any] | None = None,
    elementwise: Iterable[Any] = (),
) -> tuple[torch.Tensor, dict[str, dict[str, torch.Tensor]]]:
    """``(loss, {module_path: {param_name: diagonal shaped like the parameter}})`` for a sequential model.

    ``model``: an ``nn.Sequential`` (nested ones are flattened; paths as in ``model.named_modules()``);
    ``loss_fn``: ``CrossEntropyLoss``, ``MSELoss`` or ``BCEWithLogitsLoss`` with ``reduction`` ``"mean"``/``"sum"``;
    ``method``: ``"bl89"``, ``"hesscale"`` or ``"hesscale_gn"``; ``params``: parameter names (as in
    ``model.named_parameters()``) or the parameters themselves (default: every parameter that requires grad);
    ``elementwise``: extra module types or instances to treat as elementwise activations.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {list(METHODS)}")
    steps = flatten_model(model, elementwise)
    spec = loss_spec(loss_fn)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point torch.Tensor, got {_describe(x)}")
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    check_target(loss_fn, y)
    wanted = _select_params(model, steps, params)

    with torch.enable_grad():  # the VJPs below need the recorded graph, also when called under no_grad
        inputs, outputs = _record(steps, x)
        loss = loss_fn(outputs[-1], y)
    exact = method != "bl89"
    need_grads = method != "hesscale_gn"
    lowest = min((i for i, s in enumerate(steps) if wanted.get(s.path)), default=len(steps))
    grads = _output_grads(loss, steps, outputs, lowest, need_grads)

    sqrt = output_sqrt(spec, outputs[-1], y)
    curv = OutputCurvature(sqrt=sqrt) if exact else OutputCurvature(diag=(sqrt**2).sum(0))
    result: dict[str, dict[str, torch.Tensor]] = {}
    for i in range(len(steps) - 1, lowest - 1, -1):
        step, inp, out = steps[i], inputs[i], outputs[i]
        with torch.no_grad():
            if step.role is Role.LAYER and wanted.get(step.path):
                result[step.path] = layer_param_diagonals(step.module, inp.detach(), curv, wanted[step.path])
        if i == lowest:
            break
        curv = _backward(step, inp, out, grads.get(i), curv)
    loss_value = loss.detach()
    return loss_value, {path: result[path] for path in sorted(result, key=_order(steps))}


def _backward(step: Step, inp: torch.Tensor, out: torch.Tensor, grad: torch.Tensor | None, curv: OutputCurvature) -> OutputCurvature:
    """The curvature at the module's input from the curvature at its output."""
    if step.role is Role.LAYER:
        with torch.no_grad():
            return layer_input(step.module, inp.detach(), curv)
    if step.role is Role.ELEMENTWISE:
        return elementwise_input(step.module, inp, out, grad, curv)
    if step.role is Role.SELECT:
        return select_input(inp, out, curv)
    if step.role is Role.DIAGONAL:
        return diagonal_input(inp, out, curv)
    return avg_pool_input(step.module, inp, out, curv)


def _record(steps: list[Step], x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each module's input and output, recorded by autograd (the input gets ``requires_grad`` so every VJP exists)."""
    h = x.detach().requires_grad_(True)
    inputs, outputs = [], []
    for step in steps:
        inputs.append(h)
        # in-place modules (ReLU(inplace=True)) would overwrite the recorded input
        h = step.module(h.clone() if getattr(step.module, "inplace", False) else h)
        if not isinstance(h, torch.Tensor):
            raise TypeError(f"module {step.path!r} ({type(step.module).__name__}) returned {type(h).__name__}; expected a tensor")
        outputs.append(h)
    return inputs, outputs


def _output_grads(loss: torch.Tensor, steps: list[Step], outputs: list[torch.Tensor], lowest: int, need: bool) -> dict[int, torch.Tensor]:
    """``∂loss/∂h`` at the outputs of the elementwise modules above ``lowest`` (where ``f″ g`` enters)."""
    if not need:
        return {}
    where = [i for i in range(lowest + 1, len(steps)) if steps[i].role is Role.ELEMENTWISE]
    if not where:
        return {}
    grads = torch.autograd.grad(loss, [outputs[i] for i in where], retain_graph=True)
    return {i: g.detach() for i, g in zip(where, grads)}


def _select_params(model: nn.Module, steps: list[Step], params: Iterable[Any] | None) -> dict[str, list[str]]:
    """``{module_path: [param_name, ...]}`` of the requested parameters; raises naming an unknown or unsupported one."""
    owner = {}
    for step in steps:
        for name, p in step.module.named_parameters(recurse=False):
            owner[f"{step.path}.{name}"] = (step, name, p)
    for full, _ in model.named_parameters():
        if full not in owner:
            raise ValueError(f"parameter {full!r} is not a direct parameter of a module of the flattened model")
    if params is None:
        chosen = [full for full, (_, _, p) in owner.items() if p.requires_grad]
    else:
        if isinstance(params, (str, torch.Tensor)):
            params = [params]
        by_id = {id(p): full for full, (_, _, p) in owner.items()}
        chosen = []
        for item in params:
            if isinstance(item, str):
                if item not in owner:
                    raise ValueError(f"params: unknown parameter {item!r}; the model has {sorted(owner)}")
                chosen.append(item)
            elif isinstance(item, torch.Tensor):
                if id(item) not in by_id:
                    raise ValueError(f"params: a tensor of shape {tuple(item.shape)} is not a parameter of the model")
                chosen.append(by_id[id(item)])
            else:
                raise TypeError(f"params: expected parameter names or parameters, got {type(item).__name__}")
    wanted: dict[str, list[str]] = {}
    for full in dict.fromkeys(chosen):
        step, name, _ = owner[full]
        if step.role is not Role.LAYER:
            raise ValueError(f"params: {full!r} belongs to module {step.path!r} ({type(step.module).__name__}), which has no Hessian diagonal here")
        wanted.setdefault(step.path, []).append(name)
    return wanted


def _order(steps: list[Step]) -> Any:
    index = {s.path: i for i, s in enumerate(steps)}
    return lambda path: index[path]


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of dtype {value.dtype}"
    return type(value).__name__


__all__ = ["METHODS", "Method", "hessian_diagonal", "mark_elementwise"]
