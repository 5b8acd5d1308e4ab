"""Generic per-sample gradients and backpropagated columns for any module, from ``torch.func`` on the module alone.

A module without a tnderiv spec (``Embedding``, ``MultiheadAttention``, a custom module, the model itself
for a bare ``nn.Parameter``) is re-run on its recorded inputs, one sample at a time under ``vmap``; its
batch axes are found by reproducing the recorded output (a module that mixes samples, or draws random
numbers, cannot reproduce it and raises). Correct for every module, slower than the derived diagrams.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vjp, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from tnderiv.model.record import Use


@dataclass(frozen=True)
class SampleAxes:
    """Where the batch axis is in each tensor input (None: shared by all samples) and each tensor output."""

    inputs: tuple[int | None, ...]
    outputs: tuple[int, ...]


class Fallback:
    """``torch.func`` on one recorded call of ``module`` with respect to its parameters ``local`` (names in the module)."""

    def __init__(self, name: str, module: nn.Module, use: Use, local: tuple[str, ...], n: int) -> None:
        self.name, self.module, self.use, self.local, self.n = name, module, use, local, n
        self.leaves, self.spec = tree_flatten((use.args, use.kwargs))
        self.params = {k: module.get_parameter(k).detach() for k in local}
        self.axes = self._find_axes()

    # ----- the function of parameters and one sample ------------------------------------------------
    def _call(self, params: Mapping[str, torch.Tensor], leaves: list[Any]) -> list[torch.Tensor]:
        args, kwargs = tree_unflatten(leaves, self.spec)
        out = functional_call(self.module, dict(params), tuple(args), kwargs, strict=False)
        return [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]

    def _per_sample(self, fn: Callable[..., Any], in_axes: tuple[int | None, ...]) -> Callable[..., Any]:
        """``fn(params, leaves of one sample, *extra)`` for ``vmap`` over the batch axes ``in_axes``: each sample
        keeps a batch axis of size 1, so the module runs as it does on a batch."""
        tensor_pos = [i for i, leaf in enumerate(self.leaves) if isinstance(leaf, torch.Tensor)]

        def one(params: Any, tensors: tuple[torch.Tensor, ...], *extra: Any) -> Any:
            leaves = list(self.leaves)
            for pos, t, axis in zip(tensor_pos, tensors, in_axes):
                leaves[pos] = t if axis is None else t.unsqueeze(axis)
            return fn(params, leaves, *extra)

        return one

    def _tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(leaf.detach() for leaf in self.leaves if isinstance(leaf, torch.Tensor))

    def _find_axes(self) -> SampleAxes:
        """Batch axes that reproduce the recorded outputs; raises when none do."""
        tensors = self._tensors()
        candidates: list[tuple[int | None, ...]] = []
        for offset in range(max((t.ndim for t in tensors), default=0)):
            axes = tuple(_axis(t, self.n, offset) for t in tensors)
            if any(a is not None for a in axes) and axes not in candidates:
                candidates.append(axes)
        recorded = [o.detach() for o in self.use.outputs]
        errors: list[str] = []
        for in_axes in candidates:
            try:
                with torch.no_grad():
                    outs = vmap(self._per_sample(self._call, in_axes), in_dims=(None, in_axes), randomness="error")(self.params, tensors)
            except Exception as error:  # noqa: BLE001  (a candidate that does not even run is not the batch axis)
                errors.append(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
                continue
            out_axes = _match(outs, recorded, self.n)
            if out_axes is not None:
                return SampleAxes(in_axes, out_axes)
        # every candidate raised: torch.func could not run the module (e.g. no vmap rule for an RNN), say so
        why = f"; torch.func.vmap could not run it: {errors[0]}" if errors and len(errors) == len(candidates) else ""
        raise ValueError(
            f"module {self.name or '(model)'} ({type(self.module).__name__}) does not act on each sample separately "
            "(re-running it one sample at a time does not reproduce its output: it mixes samples, draws random numbers — "
            "dropout in train mode —, or its inputs have no batch axis of size N); its per-sample and curvature "
            f"quantities are not defined{why}"
        )

    # ----- quantities ------------------------------------------------------------------------------
    def per_sample(self, grads_out: list[torch.Tensor | None]) -> dict[str, torch.Tensor]:
        """Each sample's gradient ``{local: [N, *p]}`` for output gradients shaped like the outputs."""
        cot = [self._cotangent(g, i) for i, g in enumerate(grads_out)]
        return self._vjps(cot, lead=1)

    def columns(self, cols_out: list[torch.Tensor | None]) -> dict[str, torch.Tensor]:
        """Backpropagated columns ``{local: [M, N, *p]}`` from output columns ``[M, *output]``."""
        cot = [None if c is None else torch.stack([self._cotangent(cm, i) for cm in c]) for i, c in enumerate(cols_out)]
        return self._vjps(cot, lead=2)

    def _cotangent(self, g: torch.Tensor | None, i: int) -> torch.Tensor | None:
        """``[N, ...]`` with each sample's output gradient shaped like its output (batch axis of size 1)."""
        if g is None:
            return None
        axis = self.axes.outputs[i]
        return g.movedim(axis, 0).unsqueeze(axis + 1)

    def _vjps(self, cot: list[torch.Tensor | None], lead: int) -> dict[str, torch.Tensor]:
        used = [i for i, c in enumerate(cot) if c is not None]
        if not used:
            shape = (self.n,) if lead == 1 else (1, self.n)
            return {k: p.new_zeros(*shape, *p.shape) for k, p in self.params.items()}

        def pull(params: Any, leaves: list[Any], cts: tuple[torch.Tensor, ...]) -> Any:
            outs, back = vjp(lambda p: tuple(self._call(p, leaves)[i] for i in used), params)
            return back(tuple(cts))[0]

        one = self._per_sample(pull, self.axes.inputs)
        sample_axes = (None, self.axes.inputs, 0)
        per_n = vmap(one, in_dims=sample_axes)
        cts = tuple(cot[i] for i in used)
        with torch.enable_grad():
            if lead == 1:
                return per_n(self.params, self._tensors(), cts)
            per_mn = vmap(per_n, in_dims=(None, None, 0))
            return per_mn(self.params, self._tensors(), cts)


def _axis(t: torch.Tensor, n: int, offset: int) -> int | None:
    """The ``offset``-th axis of size ``n`` of ``t`` (or its last such axis when there are fewer), None if it has none."""
    axes = [d for d in range(t.ndim) if t.shape[d] == n]
    if not axes:
        return None
    return axes[min(offset, len(axes) - 1)]


def _match(outs: list[torch.Tensor], recorded: list[torch.Tensor], n: int) -> tuple[int, ...] | None:
    """The batch axis of each recorded output: where the per-sample outputs (stacked on axis 0, each with a
    batch axis of size 1) reproduce it; None when some output is not reproduced."""
    if len(outs) != len(recorded):
        return None
    axes = []
    for out, rec in zip(outs, recorded):
        found = None
        for d in range(rec.ndim):
            if rec.shape[d] == n and out.ndim == rec.ndim + 1 and out.shape[d + 1] == 1:
                per = out.squeeze(d + 1)
                if tuple(per.shape) != tuple(rec.movedim(d, 0).shape):
                    continue
                tol = 1e-10 if rec.dtype == torch.float64 else 1e-4
                if torch.allclose(rec.movedim(d, 0).to(per.dtype), per, rtol=tol, atol=tol * (1 + float(rec.abs().max()))):
                    found = d
                    break
        if found is None:
            return None
        axes.append(found)
    return tuple(axes)


__all__ = ["Fallback", "SampleAxes"]
