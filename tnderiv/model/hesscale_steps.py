"""One backward step of Hessian-diagonal backpropagation per module role.

The curvature at a module's output is either

- *exact*: ``H = Σ_m s_m s_mᵀ + diag(extra)`` per sample, with ``sqrt`` ``[M, N, *out]`` the loss-Hessian square
  root pulled back so far and ``extra`` the ``f″·g`` terms of activations passed on the way (HesScale keeps this
  form from the loss down to the input of the last parameterized layer), or
- *diagonal*: only ``diag`` ``[N, *out]`` (BL89 everywhere; HesScale below the last parameterized layer).

Layers (``Linear``, ``Conv``) run the derived ``hadamard_vjp`` quantity of tnderiv; the other roles use autograd
VJPs of the recorded forward, which are exact for their Jacobians' structure (see ``hesscale_modules``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

import tnderiv
from tnderiv.api import run_quantity
from tnderiv.calculus.hadamard import DIAG_OUT, SQUARED
from tnderiv.model.hesscale_modules import ELEMENTWISE_TYPES, avg_pool_as_conv


@dataclass(frozen=True)
class OutputCurvature:
    """The curvature at a module's output: exact (``sqrt``, ``extra``) or diagonal (``diag``); see the module docstring."""

    diag: torch.Tensor | None = None
    sqrt: torch.Tensor | None = None
    extra: torch.Tensor | None = None

    @property
    def exact(self) -> bool:
        return self.sqrt is not None

    def diagonal(self) -> torch.Tensor:
        """``diag(H)`` ``[N, *out]``."""
        if self.sqrt is None:
            assert self.diag is not None
            return self.diag
        d = (self.sqrt**2).sum(0)
        return d if self.extra is None else d + self.extra


# ----- layers: the derived hadamard_vjp quantity -----------------------------------------------------
def hadamard_vjp(layer: object, wrt: str, diag_out: torch.Tensor, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """``diag(Jᵀ diag(diag_out) J)`` for operand ``wrt`` of a tnderiv layer (module or spec), shaped like ``wrt``."""
    quantity = f"hadamard_vjp_{wrt}"
    needed = tnderiv.diagram(layer, quantity, shapes={"x": tuple(x.shape)}).operand_names
    base = {"x": x, **params}
    tensors = {DIAG_OUT: diag_out}
    for name in needed:
        if name == DIAG_OUT:
            continue
        if name.endswith(SQUARED) and name[: -len(SQUARED)] in base:
            tensors[name] = base[name[: -len(SQUARED)]] ** 2
        else:
            tensors[name] = base[name]
    shape = tuple(x.shape) if wrt == "x" else tuple(params[wrt].shape)
    return run_quantity(layer, quantity, tensors, output_shape=shape)


def layer_param_diagonals(module: nn.Module, x: torch.Tensor, curv: OutputCurvature, names: list[str]) -> dict[str, torch.Tensor]:
    """``{name: Σ_{n,out} d[n, out] (∂out/∂θ)²}`` for the named parameters of a Linear/Conv module."""
    params = {name: p.detach() for name, p in module.named_parameters()}
    d = curv.diagonal()
    return {name: hadamard_vjp(module, name, d, x, params) for name in names}


def layer_input(module: nn.Module, x: torch.Tensor, curv: OutputCurvature) -> OutputCurvature:
    """The diagonal at the layer's input: exact ``Σ_m (Jᵀ s_m)² + (J⊙J)ᵀ extra``, or ``(J⊙J)ᵀ diag``."""
    params = {name: p.detach() for name, p in module.named_parameters()}
    if not curv.exact:
        assert curv.diag is not None
        return OutputCurvature(diag=hadamard_vjp(module, "x", curv.diag, x, params))
    assert curv.sqrt is not None
    m, n = curv.sqrt.shape[:2]
    # a VJP to x does not read x: the columns of S ride on the batch axis
    stacked = curv.sqrt.reshape(m * n, *curv.sqrt.shape[2:])
    pulled = tnderiv.vjp(module, "x", stacked, x_shape=(m * n, *x.shape[1:]), **params)
    diag = (pulled.reshape(m, n, *x.shape[1:]) ** 2).sum(0)
    if curv.extra is not None:
        diag = diag + hadamard_vjp(module, "x", curv.extra, x, params)
    return OutputCurvature(diag=diag)


# ----- elementwise activations: f′ and f″ from torch.func ------------------------------------------
def elementwise_derivatives(module: nn.Module, z: torch.Tensor, out: torch.Tensor, *, second: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``f′(z)`` and (``second``) ``f″(z)`` of an elementwise module, by forward-mode ``torch.func.jvp`` along ones.

    For an elementwise ``f`` the Jacobian is diagonal, so ``J·1 = f′(z)`` and the JVP of that JVP is ``f″(z)``; no
    code per activation. Modules outside ``ELEMENTWISE_TYPES`` (marked by the user) are first checked: applied to
    each entry alone (``vmap`` over scalars) they must reproduce their output ``out``, else this raises.
    """

    def f(t: torch.Tensor) -> torch.Tensor:
        return module(t.clone())  # clone: in-place activations must not write into torch.func's input

    z = z.detach()
    if not isinstance(module, ELEMENTWISE_TYPES):
        _check_elementwise(f, z, out, type(module).__name__)
    ones = torch.ones_like(z)
    if not second:
        return torch.func.jvp(f, (z,), (ones,))[1], None

    def slope(t: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(f, (t,), (ones,))[1]

    fp, fpp = torch.func.jvp(slope, (z,), (ones,))
    return fp, fpp


def _check_elementwise(f: Any, z: torch.Tensor, out: torch.Tensor, name: str) -> None:
    problem = (
        f"{name} was treated as elementwise, but applied to each entry alone it does not reproduce its output; "
        "only mark modules that act on every entry independently"
    )
    flat = z.reshape(-1)
    try:
        values = torch.func.vmap(f)(flat)
    except Exception as err:  # a module that needs more than one entry fails on a scalar
        raise ValueError(f"{problem} (on one entry it raised {type(err).__name__}: {err})") from err
    if values.shape != flat.shape or not torch.allclose(values, out.detach().reshape(-1), rtol=1e-5, atol=1e-6):
        raise ValueError(problem)


def elementwise_input(module: nn.Module, z: torch.Tensor, out: torch.Tensor, grad_out: torch.Tensor | None, curv: OutputCurvature) -> OutputCurvature:
    """``d_z = f′² d_h + f″ g_h`` (``grad_out=None``: the Gauss–Newton form, ``f″`` dropped)."""
    fp, fpp = elementwise_derivatives(module, z, out, second=grad_out is not None)
    curvature_term = None if fpp is None or grad_out is None else fpp * grad_out
    if curv.exact:
        assert curv.sqrt is not None
        extra = None if curv.extra is None else fp**2 * curv.extra
        if curvature_term is not None:
            extra = curvature_term if extra is None else extra + curvature_term
        return OutputCurvature(sqrt=curv.sqrt * fp, extra=extra)
    assert curv.diag is not None
    diag = fp**2 * curv.diag
    return OutputCurvature(diag=diag if curvature_term is None else diag + curvature_term)


# ----- pooling, flatten, dropout: autograd VJPs of the recorded forward ------------------------------
def _vjp(out: torch.Tensor, inp: torch.Tensor, v: torch.Tensor, *, batched: bool = False) -> torch.Tensor:
    return torch.autograd.grad(out, inp, v, retain_graph=True, is_grads_batched=batched)[0]


def select_input(inp: torch.Tensor, out: torch.Tensor, curv: OutputCurvature) -> OutputCurvature:
    """0/1 Jacobians with one 1 per output (max pooling, flatten): ``J ⊙ J = J``, and ``Jᵀ diag(e) J`` stays diagonal."""
    if curv.exact:
        assert curv.sqrt is not None
        extra = None if curv.extra is None else _vjp(out, inp, curv.extra)
        return OutputCurvature(sqrt=_vjp(out, inp, curv.sqrt, batched=True), extra=extra)
    assert curv.diag is not None
    return OutputCurvature(diag=_vjp(out, inp, curv.diag))


def diagonal_input(inp: torch.Tensor, out: torch.Tensor, curv: OutputCurvature) -> OutputCurvature:
    """Diagonal Jacobians (dropout with the forward's mask): ``(J ⊙ J)ᵀ d = Jᵀ (Jᵀ d)``."""
    if curv.exact:
        assert curv.sqrt is not None
        extra = None if curv.extra is None else _vjp(out, inp, _vjp(out, inp, curv.extra))
        return OutputCurvature(sqrt=_vjp(out, inp, curv.sqrt, batched=True), extra=extra)
    assert curv.diag is not None
    return OutputCurvature(diag=_vjp(out, inp, _vjp(out, inp, curv.diag)))


def avg_pool_input(module: nn.Module, inp: torch.Tensor, out: torch.Tensor, curv: OutputCurvature) -> OutputCurvature:
    """Average pooling as a depthwise convolution with weights ``1/divisor``: its ``hadamard_vjp`` (squared weights).

    In the exact form the square root is pulled back exactly; ``Jᵀ diag(extra) J`` is not diagonal for a pooling
    window, so only its diagonal ``(J ⊙ J)ᵀ extra`` is kept.
    """
    if inp.ndim < 3:
        raise ValueError(f"{type(module).__name__} got input of shape {tuple(inp.shape)}; expected a batch [N, C, *I]")
    spec, value = avg_pool_as_conv(module, inp.shape[1])
    if inp.ndim != spec.dims + 2 or tuple(int(o) for o in spec.output_sizes(tuple(inp.shape[2:]))) != tuple(out.shape[2:]):
        raise ValueError(
            f"{type(module).__name__} gave output shape {tuple(out.shape)} for input {tuple(inp.shape)}; expected a "
            f"batch [N, C, *I] pooled like a convolution with kernel {spec.kernel_size}, stride {spec.stride}, padding {spec.padding}"
        )
    weight = torch.full((spec.out_channels, 1, *spec.kernel_size), value, dtype=inp.dtype, device=inp.device)

    def pull(d: torch.Tensor) -> torch.Tensor:
        return hadamard_vjp(spec, "x", d, inp, {"weight": weight})

    if curv.exact:
        assert curv.sqrt is not None
        extra = None if curv.extra is None else pull(curv.extra)
        return OutputCurvature(sqrt=_vjp(out, inp, curv.sqrt, batched=True), extra=extra)
    assert curv.diag is not None
    return OutputCurvature(diag=pull(curv.diag))


__all__ = [
    "OutputCurvature",
    "avg_pool_input",
    "diagonal_input",
    "elementwise_derivatives",
    "elementwise_input",
    "hadamard_vjp",
    "layer_input",
    "layer_param_diagonals",
    "select_input",
]
