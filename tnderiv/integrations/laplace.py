"""A laplace-torch curvature backend on tnderiv: ``Laplace(model, ..., backend=TnderivGGN)`` (or ``TnderivEF``).

laplace-torch takes its curvature from a backend (BackPACK, ASDL, curvlinops). This one computes it with
``tnderiv.Curvature``, so it is exact where those are not (reflect/circular/replicate padding, groups,
transposed convolutions), and supports every model ``Curvature`` supports.

Conventions are laplace-torch's: the loss is the summed loss (``MSELoss(reduction="sum")`` times ``factor``
= ½ for regression, ``CrossEntropyLoss(reduction="sum")`` for classification), vectors follow
``model.parameters()``; ``kron`` returns per weight ``[B, A·M/N]`` (``B`` the output-side factor, ``A`` the
input-side average over the batch of size ``M``, rescaled to a data set of ``N``) and per bias ``[B]``,
as laplace's curvlinops backend does. ``full`` and ``jacobians`` materialize the backpropagated columns
(their results are dense by definition); ``diag`` and ``kron`` come from the derived diagrams.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import torch
from laplace.curvature import EFInterface, GGNInterface
from laplace.utils import Kron

from tnderiv.model import Curvature
from tnderiv.model.batch import _column_chunks, _materialized_cols, partition
from tnderiv.model.columns import Pass, call_model, pull_back
from tnderiv.model.record import Recorder
from tnderiv.model.reduce import ExactCurvature
from tnderiv.model.units import owners


class _TnderivInterface:
    """What the GGN and EF backends share: a ``tnderiv.Curvature`` of the model under laplace's summed loss."""

    fisher: str = "type-2"

    def _check_supported(self) -> None:
        if self.subnetwork_indices is not None:
            raise NotImplementedError("TnderivGGN/TnderivEF with subnetwork_indices: use another backend for SubnetLaplace")

    def _curvature(self, **options: Any) -> Curvature:
        """The curvature of the whole model (``last_layer``: of the last layer's parameters, through the model)."""
        self._check_supported()
        fisher, mc = self.fisher, {}
        if getattr(self, "stochastic", False):
            fisher, mc = "mc", {"mc_samples": int(getattr(self, "num_samples", 1))}
        ids = {id(p) for p in self.params}
        curv = Curvature(
            self.model, self.lossfunc, fisher=fisher, loss_average=None, params=lambda _, p: id(p) in ids, **mc, **options
        )
        by_id = {id(p): name for name, p in curv.selection.params.items()}
        self._order = [(by_id[id(p)], p.numel()) for p in self.params]  # canonical names in laplace's order
        return curv

    def _flat(self, per_param: dict[str, torch.Tensor], lead: int = 0) -> torch.Tensor:
        """Concatenate ``{canonical: [*lead, *p]}`` in laplace's parameter order: ``[*lead, P]``."""
        parts = [per_param[name].reshape(*per_param[name].shape[:lead], numel) for name, numel in self._order]
        return torch.cat(parts, dim=lead)

    def _by_param(self, res: Any, quantity: str) -> dict[str, torch.Tensor]:
        return {name: t for name, per in res._per_param().items() if quantity in per for t in [per[quantity]]}

    def _materialized(self, curv: Curvature, x: Any, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, V)`` with ``V`` ``[M, N, P]`` the backpropagated square-root columns (or ``√D·g``, empirical)."""
        run, found = curv.recorded_pass(x, y)
        sqrt = curv.square_root(run)
        with torch.no_grad():
            cols = next(_column_chunks(run, found, sqrt, curv.options))
            return run.loss, self._flat(_columns_by_param(run, found, cols), lead=2)

    # ----- laplace-torch's interface --------------------------------------------------------------------
    def full(self, x: Any, y: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(factor·loss, factor·H)`` with ``H`` ``[P, P]`` the GGN (or EF) of the summed loss."""
        loss, v = self._materialized(self._curvature(), x, y)
        flat = v.reshape(-1, v.shape[-1])
        return self.factor * loss, self.factor * (flat.T @ flat)

    def diag(self, x: Any, y: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(factor·loss, factor·diag(H))`` ``[P]`` from the derived GGN diagonals."""
        res = self._curvature().compute(x, y, ("ggn_diag",), set_grad=False)
        return self.factor * res.loss, self.factor * self._flat(self._by_param(res, "ggn_diag"))

    def kron(self, x: Any, y: torch.Tensor, N: int, **kwargs: Any) -> tuple[torch.Tensor, Kron]:
        """``(factor·loss, factor·Kron)``: per weight ``[B, A·M/N]``, per bias ``[B]`` (laplace's layout)."""
        approx = kwargs.get("kfac_approx", "expand")
        res = self._curvature(approx=approx).compute(x, y, ("kfac",), set_grad=False)
        m = _batch_size(x, y, self.dict_key_x)
        kfacs = []
        for name, _ in self._order:
            module, _, local = name.rpartition(".")
            k = res[module]["kfac"]
            if isinstance(k, ExactCurvature):
                raise NotImplementedError(f"{name}: module {module} has no KFAC (tnderiv computed its exact GGN); use 'diag' or 'full'")
            if k.G.shape[0] != 1:
                raise NotImplementedError(
                    f"{name}: a grouped layer's KFAC is one Kronecker product per group ({k.G.shape[0]} groups), "
                    "which laplace's Kron cannot hold; use 'diag' or 'full'"
                )
            if local == "weight":
                kfacs.append([k.G[0], k.A[0] * (m / N)])
            else:
                kfacs.append([(k.G_bias if k.G_bias is not None else k.G)[0] * (k.A_bias[0, 0, 0] if k.A_bias is not None else 1.0)])
        return self.factor * res.loss, Kron(kfacs) * self.factor

    def jacobians(self, x: Any, enable_backprop: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Js [N, C, P], f [N, C])``: per-sample Jacobians, the columns of an identity square root."""
        if enable_backprop:
            return super().jacobians(x, enable_backprop=True)  # type: ignore[misc]
        curv = self._curvature()
        recorder = Recorder(curv.selection.record)
        with recorder.recording():
            f = call_model(curv.model, x)
        if not isinstance(f, torch.Tensor) or f.ndim != 2:
            raise ValueError(f"jacobians: the model's output has shape {list(getattr(f, 'shape', []))}; laplace expects [N, C]")
        n, c = f.shape
        run = Pass(f.detach(), f, f, n, 1, recorder.uses, {}, {})
        found, _ = owners(curv.selection, {k for k, u in recorder.uses.items() if u})
        keys = [(o.name, i) for o in found for i in range(len(recorder.uses[o.name]))]
        eye = torch.eye(c, dtype=f.dtype, device=f.device)[:, None, :].expand(c, n, c)
        with torch.no_grad():
            cols = next(pull_back(run, eye, keys, c))
            js = self._flat(_columns_by_param(run, found, cols), lead=2)  # [C, N, P]
        return js.transpose(0, 1).contiguous(), f.detach()

    def gradients(self, x: Any, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Gs [N, P], loss)``: per-sample gradients of the summed loss."""
        res = self._curvature().compute(x, y, ("per_sample_grad",), set_grad=False)
        return self._flat(self._by_param(res, "per_sample_grad"), lead=1), res.loss


def _columns_by_param(run: Pass, found: list[Any], cols: Any) -> dict[str, torch.Tensor]:
    """Each parameter's columns ``[M, N, *p]``, summed over its uses."""
    part = partition(run, found)
    per: dict[str, torch.Tensor] = {}
    for canonical, uses in part.contribs.items():
        for owner, i, local in uses:
            v = _materialized_cols(owner, i, local, run, cols, part.fallback)
            per[canonical] = v if canonical not in per else per[canonical] + v
    return per


def _batch_size(x: Any, y: torch.Tensor, key: str) -> int:
    if isinstance(x, MutableMapping):
        return int(x[key].shape[0])
    return int(y.shape[0])


class TnderivGGN(_TnderivInterface, GGNInterface):
    """laplace-torch's GGN backend on tnderiv (``stochastic=True``: the Monte-Carlo Fisher with ``num_samples``)."""

    fisher = "type-2"


class TnderivEF(_TnderivInterface, EFInterface):
    """laplace-torch's empirical-Fisher backend on tnderiv."""

    fisher = "empirical"


__all__ = ["TnderivEF", "TnderivGGN"]
