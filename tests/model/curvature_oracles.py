"""Independent oracles for ``tnderiv.Curvature``: torch.func and torch.autograd on the whole model, in float64.

- ``Oracle.psg``: ``torch.func.vmap(grad)`` of each sample's share of the reduced loss;
- ``Oracle.ggn``: the dense ``Jᵀ H J`` from ``torch.func.jacrev`` of the model output and
  ``torch.func.hessian`` of the reduced loss at the output;
- ``Oracle.layer_columns``: a square root of that ``H`` (``eigh``), each column backpropagated to the
  layers' outputs with ``torch.autograd.grad`` (any square root: KFAC's ``G`` only sums ``Σ_m c cᵀ``);
- ``kfac_oracle``: KFAC factors and their dense Kronecker matrix formed from those columns and the layer's
  unfolded input (read off ``jacrev`` of the layer w.r.t. its weight), following docs/conventions.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, hessian, jacrev, vmap
from torch.nn import functional as F
from torch.utils._pytree import tree_map


def call(model: nn.Module, x: Any) -> Any:
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, tuple):
        return model(*x)
    return model(x)


def _args(x: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(x, dict):
        return (), x
    if isinstance(x, tuple):
        return x, {}
    return (x,), {}


def summed_loss(loss_fn: nn.Module, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss with ``reduction="sum"`` (ignored positions count 0)."""
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        return F.cross_entropy(out, y, reduction="sum", ignore_index=loss_fn.ignore_index)
    if isinstance(loss_fn, nn.MSELoss):
        return F.mse_loss(out, y, reduction="sum")
    return F.binary_cross_entropy_with_logits(out, y, reduction="sum")


def divisor(loss_fn: nn.Module, y: torch.Tensor) -> int:
    """What ``reduction="mean"`` divides by: kept targets (cross-entropy), all entries (MSE, BCE)."""
    if loss_fn.reduction == "sum":
        return 1
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        if y.is_floating_point():  # class probabilities [N, C, *S]: one term per sample and position
            return y.numel() // y.shape[1]
        return int((y != loss_fn.ignore_index).sum())
    return y.numel()


class Oracle:
    """Dense float64 quantities of the reduced loss ``loss_fn(model(x), y)`` w.r.t. the parameters ``names``."""

    def __init__(
        self, model: nn.Module, loss_fn: nn.Module, x: Any, y: torch.Tensor, *, classes_last: bool = False, names: Sequence[str] | None = None
    ) -> None:
        self.model, self.loss_fn, self.x, self.y, self.classes_last = model, loss_fn, x, y, classes_last
        named = dict(model.named_parameters())
        self.names = list(named) if names is None else list(names)
        self.theta = {n: named[n].detach().clone() for n in self.names}
        self.shapes = {n: tuple(t.shape) for n, t in self.theta.items()}
        self.D = divisor(loss_fn, y)
        self._ggn: torch.Tensor | None = None

    # ----- functions of the parameters ------------------------------------------------------------------
    def canon(self, out: torch.Tensor) -> torch.Tensor:
        return out.movedim(-1, 1) if self.classes_last else out

    def output(self, theta: dict[str, torch.Tensor], x: Any = None) -> torch.Tensor:
        args, kwargs = _args(self.x if x is None else x)
        return self.canon(functional_call(self.model, theta, args, kwargs))

    def loss(self, theta: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.loss_fn(self.output(theta), self.y)

    # ----- first order --------------------------------------------------------------------------------
    def grad(self) -> dict[str, torch.Tensor]:
        return grad(self.loss)(self.theta)

    def psg(self) -> dict[str, torch.Tensor]:
        """Per-sample gradients ``[N, *p]`` by ``vmap(grad)``: sample ``n``'s summed loss over the batch's divisor."""

        def sample_loss(theta: dict[str, torch.Tensor], xn: Any, yn: torch.Tensor) -> torch.Tensor:
            out = self.output(theta, tree_map(lambda t: t.unsqueeze(0), xn))
            return summed_loss(self.loss_fn, out, yn.unsqueeze(0)) / self.D

        psg = vmap(grad(sample_loss), in_dims=(None, 0, 0))(self.theta, self.x, self.y)
        total = self.grad()
        for n in self.names:  # the oracle checks itself: its per-sample gradients sum to the gradient
            torch.testing.assert_close(psg[n].sum(0), total[n], rtol=1e-10, atol=1e-12)
        return psg

    # ----- the dense GGN -------------------------------------------------------------------------------
    def jacobian(self) -> torch.Tensor:
        """``J`` ``[N·F, P]`` of the canonical output w.r.t. the parameters (flattened in ``names`` order)."""
        jac = jacrev(self.output)(self.theta)
        rows = self.output(self.theta).numel()
        return torch.cat([jac[n].reshape(rows, -1) for n in self.names], dim=1)

    def loss_hessian(self) -> torch.Tensor:
        """``H`` ``[N·F, N·F]`` of the reduced loss w.r.t. the canonical output."""
        out = self.output(self.theta).detach()
        h = hessian(lambda o: self.loss_fn(o, self.y))(out)
        return h.reshape(out.numel(), out.numel())

    def ggn(self) -> torch.Tensor:
        if self._ggn is None:
            j = self.jacobian()
            self._ggn = j.T @ self.loss_hessian() @ j
        return self._ggn

    def slice(self, name: str) -> slice:
        start = 0
        for n in self.names:
            size = int(torch.Size(self.shapes[n]).numel())
            if n == name:
                return slice(start, start + size)
            start += size
        raise KeyError(name)

    def ggn_block(self, name: str, other: str | None = None) -> torch.Tensor:
        other = name if other is None else other
        return self.ggn()[self.slice(name), self.slice(other)].reshape(*self.shapes[name], *self.shapes[other])

    def ggn_diag(self, name: str) -> torch.Tensor:
        return self.ggn()[self.slice(name), self.slice(name)].diagonal().reshape(self.shapes[name])

    def joint_block(self, names: Sequence[str]) -> torch.Tensor:
        idx = torch.cat([torch.arange(self.slice(n).start, self.slice(n).stop) for n in names])
        return self.ggn()[idx][:, idx]

    def per_sample_ggn_diag(self, name: str) -> torch.Tensor:
        """``diag(J_nᵀ H_nn J_n)`` per sample ``[N, *p]`` (H is block-diagonal over samples)."""
        j, h = self.jacobian()[:, self.slice(name)], self.loss_hessian()
        n = self.y.shape[0]
        f = j.shape[0] // n
        out = []
        for i in range(n):
            rows = slice(i * f, (i + 1) * f)
            out.append((j[rows].T @ h[rows, rows] @ j[rows]).diagonal())
        return torch.stack(out).reshape(n, *self.shapes[name])

    # ----- columns at layer outputs ------------------------------------------------------------------------
    def layer_columns(self, modules: dict[str, nn.Module], kind: str = "type-2") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per module: ``(input, columns [R, *output])`` recorded with forward hooks; the columns are a square root of
        the loss Hessian backpropagated with ``torch.autograd.grad`` (``kind="type-2"``), or the output gradient of the
        reduced loss (``kind="empirical"``, ``R = 1``)."""
        seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        handles = [
            m.register_forward_hook(lambda mod, args, out, name=name: seen.__setitem__(name, (args[0].detach(), out)))
            for name, m in modules.items()
        ]
        try:
            out = self.canon(call(self.model, self.x))
        finally:
            for h in handles:
                h.remove()
        names = list(modules)
        outs = [seen[n][1] for n in names]
        if kind == "empirical":
            cols = torch.autograd.grad(self.loss_fn(out, self.y), outs)
            return {n: (seen[n][0], c.unsqueeze(0)) for n, c in zip(names, cols)}
        lam, vec = torch.linalg.eigh(self.loss_hessian())
        keep = lam > 1e-12 * float(lam.abs().max())
        root = vec[:, keep] * lam[keep].sqrt()  # [N·F, R], root rootᵀ = H
        flat = out.reshape(-1)
        per = [torch.autograd.grad(flat, outs, root[:, r], retain_graph=True) for r in range(root.shape[1])]
        return {n: (seen[n][0], torch.stack([p[i] for p in per])) for i, n in enumerate(names)}


# ----- KFAC formed in the test ----------------------------------------------------------------------------


@dataclass
class KfacOracle:
    """Factors ``A [Gr, d_in(+1), d_in(+1)]``, ``G [Gr, d_out, d_out]`` and the dense matrix on (weight.flatten, bias)."""

    A: torch.Tensor
    G: torch.Tensor
    dense: torch.Tensor


def _unfold(module: nn.Module, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``a [N, S, Gr, d_in]`` and per weight/bias entry its ``(group, output row, input column)`` (bias: column ``d_in``)."""
    w = module.weight
    n = x.shape[0]
    if isinstance(module, nn.Linear):
        a = x.reshape(n, -1, 1, x.shape[-1])
        c_out, d_in = w.shape
        rows = torch.arange(c_out).repeat_interleave(d_in)
        return a, torch.stack([torch.zeros_like(rows), rows, torch.arange(d_in).repeat(c_out)]), torch.stack(
            [torch.zeros(c_out, dtype=torch.long), torch.arange(c_out), torch.full((c_out,), d_in)]
        )
    if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
        if isinstance(module, nn.BatchNorm2d):
            xhat = (x - module.running_mean[:, None, None]) / (module.running_var[:, None, None] + module.eps).sqrt()
            a = xhat.movedim(1, -1).reshape(n, -1, xhat.shape[1], 1)
        else:
            xhat = (x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=False, keepdim=True) + module.eps).sqrt()
            a = xhat.reshape(n, -1, xhat.shape[-1], 1)
        c = a.shape[2]
        zeros = torch.zeros(c, dtype=torch.long)
        return a, torch.stack([torch.arange(c), zeros, zeros]), torch.stack([torch.arange(c), zeros, zeros + 1])
    # convolutions: the unfolded input read off the Jacobian of the layer w.r.t. its weight (z is linear in it)
    groups = module.groups
    jac = jacrev(lambda wt: functional_call(module, {"weight": wt}, (x,)))(w.detach())  # [N, C_out, *O, *w]
    c_out = z.shape[1]
    og = c_out // groups
    jac = jac.reshape(n, c_out, -1, *w.shape)
    transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
    if transposed:  # weight [C_in, C_out/G, *K]
        ig = w.shape[0] // groups
        a = torch.stack([jac[:, g * og, :, g * ig : (g + 1) * ig, 0].reshape(n, jac.shape[2], -1) for g in range(groups)], 2)
        cin, j, k = torch.meshgrid(torch.arange(w.shape[0]), torch.arange(og), torch.arange(w[0, 0].numel()), indexing="ij")
        idx = torch.stack([(cin // ig).reshape(-1), j.reshape(-1), ((cin % ig) * w[0, 0].numel() + k).reshape(-1)])
    else:  # weight [C_out, C_in/G, *K]
        a = torch.stack([jac[:, g * og, :, g * og].reshape(n, jac.shape[2], -1) for g in range(groups)], 2)
        d_in = w[0].numel()
        c, i = torch.meshgrid(torch.arange(c_out), torch.arange(d_in), indexing="ij")
        idx = torch.stack([(c // og).reshape(-1), (c % og).reshape(-1), i.reshape(-1)])
    d_in = a.shape[-1]
    c = torch.arange(c_out)
    return a, idx, torch.stack([c // og, c % og, torch.full((c_out,), d_in)])


def _output_rows(module: nn.Module, cols: torch.Tensor, groups: int) -> torch.Tensor:
    """Columns ``[R, *output]`` as ``[R, N, S, Gr, d_out]``."""
    r, n = cols.shape[0], cols.shape[1]
    if isinstance(module, (nn.Linear, nn.LayerNorm)):
        return cols.reshape(r, n, -1, groups, cols.shape[-1] // groups)
    moved = cols.movedim(2, -1)  # channels last
    return moved.reshape(r, n, -1, groups, moved.shape[-1] // groups)


def kfac_oracle(
    module: nn.Module, x: torch.Tensor, cols: torch.Tensor, *, approx: str, bias: str = "separate", scale: float = 1.0, g_identity: bool = False
) -> KfacOracle:
    """KFAC of ``module`` from its input ``x`` and output columns ``cols [R, *output]``; ``G`` times ``scale``."""
    with torch.no_grad():
        z = module(x)
    a, w_idx, b_idx = _unfold(module, x, z)
    n, s, groups, d_in = a.shape
    g = _output_rows(module, cols, groups)
    has_bias = getattr(module, "bias", None) is not None
    append = bias == "append" and has_bias
    if append:
        a = torch.cat([a, torch.ones(n, s, groups, 1, dtype=a.dtype)], -1)
    if approx == "expand":
        A = torch.einsum("nsgi,nsgj->gij", a, a) / (n * s)
        G = torch.einsum("rnsgi,rnsgj->gij", g, g) * scale
    else:
        ab, gb = a.mean(1), g.sum(2)
        A = torch.einsum("ngi,ngj->gij", ab, ab) / n
        G = torch.einsum("rngi,rngj->gij", gb, gb) * scale
    if g_identity:
        G = torch.eye(G.shape[-1], dtype=G.dtype).expand_as(G).clone()
    idx = torch.cat([w_idx, b_idx], 1) if has_bias else w_idx
    is_bias = torch.arange(idx.shape[1]) >= w_idx.shape[1]
    gk, jk, ik = idx
    same = gk[:, None] == gk[None, :]
    gpart = G[gk[:, None], jk[:, None], jk[None, :]]
    if append:
        apart = A[gk[:, None], ik[:, None], ik[None, :]]
    else:
        ic = ik.clamp(max=d_in - 1)
        apart = torch.where(
            is_bias[:, None] & is_bias[None, :],
            torch.ones((), dtype=A.dtype),
            torch.where(is_bias[:, None] | is_bias[None, :], torch.zeros((), dtype=A.dtype), A[gk[:, None], ic[:, None], ic[None, :]]),
        )
    return KfacOracle(A, G, torch.where(same, gpart * apart, torch.zeros((), dtype=A.dtype)))


def psd_inverse_apply(matrix: torch.Tensor, damping: float, v: torch.Tensor) -> torch.Tensor:
    """``(matrix + damping·I)⁻¹ v`` by a dense solve."""
    eye = torch.eye(matrix.shape[0], dtype=matrix.dtype)
    return torch.linalg.solve(matrix + damping * eye, v)


__all__ = ["KfacOracle", "Oracle", "call", "divisor", "kfac_oracle", "psd_inverse_apply", "summed_loss"]
