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
from typing import Any, Literal

import torch
from laplace.baselaplace import KronLaplace
from laplace.curvature import EFInterface, GGNInterface
from laplace.lllaplace import KronLLLaplace
from laplace.utils import Kron, KronDecomposed
from torch import nn

from tnderiv.api import plan
from tnderiv.api_kfac import kfac_factors_input, kfac_factors_output
from tnderiv.ir import Diagram
from tnderiv.ir.nodes import operand
from tnderiv.model import Curvature
from tnderiv.model.batch import _column_chunks, partition
from tnderiv.model.columns import Pass, call_model, pull_back
from tnderiv.model.record import Recorder
from tnderiv.model.reduce import ExactCurvature
from tnderiv.model.units import owners


class _TnderivInterface:
    """What the GGN and EF backends share: a ``tnderiv.Curvature`` of the model under laplace's summed loss."""

    fisher: Literal["type-2", "empirical"] = "type-2"  # the backend's kind of curvature (stochastic: "mc")

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
        return {name: per[quantity] for name, per in res._per_param().items() if quantity in per}

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
        run, found, cols = self._identity_columns(x, "jacobians")
        with torch.no_grad():
            js = self._flat(_columns_by_param(run, found, cols), lead=2)  # [C, N, P]
        return js.transpose(0, 1).contiguous(), run.output.detach()

    def _identity_columns(self, x: Any, caller: str, check: Any = None) -> tuple[Pass, list[Any], dict[Any, list[Any]]]:
        """A recorded forward; the owners (each passed to ``check``); the identity's columns ``[C, *output]`` pulled
        back to every recorded layer output (``∂f_c/∂y``)."""
        curv = self._curvature()
        recorder = Recorder(curv.selection.record)
        with recorder.recording():
            f = call_model(curv.model, x)
        if not isinstance(f, torch.Tensor) or f.ndim != 2:
            raise ValueError(f"{caller}: the model's output has shape {list(getattr(f, 'shape', []))}; laplace expects [N, C]")
        n, c = f.shape
        run = Pass(f.detach(), f, f, n, 1, recorder.uses, {}, {})
        found, _ = owners(curv.selection, {k for k, u in recorder.uses.items() if u})
        for owner in found:
            if check is not None:
                check(owner, len(recorder.uses[owner.name]))
        keys = [(o.name, i) for o in found for i in range(len(recorder.uses[o.name]))]
        eye = torch.eye(c, dtype=f.dtype, device=f.device)[:, None, :].expand(c, n, c)
        with torch.no_grad():
            cols = next(pull_back(run, eye, keys, c))
        return run, found, cols

    def kron_pieces(self, x: Any) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor | None]]]:
        """``(f [N, C], pieces)``: per parameter in laplace's order, ``(D [C, N, S, d_out], a [N, S, d_in] or None)``:
        the output columns ``∂f_c/∂y`` of its layer (an identity square root pulled back) and, for a weight, the
        layer's unfolded input (``S`` weight-sharing positions; a bias has ``None``). The per-sample Jacobian of a
        weight is ``J[n, c] = Σ_s D[c, n, s] a[n, s]ᵀ``, of a bias ``Σ_s D[c, n, s]``; neither is formed here."""
        run, found, cols = self._identity_columns(x, "kron_pieces", _check_kron_module)
        f = run.output
        n, c = f.shape
        pieces: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        with torch.no_grad():
            for owner in found:
                use = run.uses[owner.name][0]
                x_in, d = use.x.detach(), cols[(owner.name, 0)][0]
                if d is None:  # the output does not depend on this layer
                    d = x_in.new_zeros(c, *use.outputs[0].shape)
                g = kfac_factors_output(owner.module, d, loss_average=None, hessian_sqrt=True, unreduced=True)[1]
                g = g.reshape(c, n, -1, g.shape[-1])
                for local, canonical in owner.local.items():
                    a = None
                    if local == "weight":
                        a = kfac_factors_input(owner.module, x_in, unreduced=True)[1]
                        a = a.reshape(n, -1, a.shape[-1])
                    pieces[canonical] = (g, a)
        return f.detach(), [pieces[name] for name, _ in self._order]

    def gradients(self, x: Any, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Gs [N, P], loss)``: per-sample gradients of the summed loss."""
        res = self._curvature().compute(x, y, ("per_sample_grad",), set_grad=False)
        return self._flat(self._by_param(res, "per_sample_grad"), lead=1), res.loss


def _columns_by_param(run: Pass, found: list[Any], cols: Any) -> dict[str, torch.Tensor]:
    """Each parameter's columns ``[M, N, *p]``, summed over its uses."""
    part = partition(run, found)
    return {canonical: part.columns(canonical, cols) for canonical in part.contribs}


_KRON_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _check_kron_module(owner: Any, uses: int) -> None:
    """The Kronecker variance needs laplace's weight layout ``[d_out, d_in]`` and one call per layer."""
    module = owner.module
    if not isinstance(module, _KRON_MODULES) or getattr(module, "groups", 1) != 1:
        groups = f" with groups={module.groups}" if getattr(module, "groups", 1) != 1 else ""
        raise NotImplementedError(
            f"kron_functional_variance: module {owner.name} ({type(module).__name__}{groups}) is not supported; "
            "supported: Linear and Conv1d/2d/3d without groups (use la.functional_variance(Js) with Js from la.backend.jacobians)"
        )
    if uses != 1:
        raise NotImplementedError(
            f"kron_functional_variance: module {owner.name} is called {uses} times per forward; its Jacobian is a sum over "
            "the calls, which this quadratic form does not cover (use la.functional_variance(Js))"
        )


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


# ----- the linearized predictive variance from Kronecker quadratic forms -------------------------------------


def _quadratic_form(d: torch.Tensor, q_out: torch.Tensor, weights: torch.Tensor, a: torch.Tensor | None, q_in: torch.Tensor | None) -> torch.Tensor:
    """``[N, C, C]``: ``Σ_{k,l} w[k,l] J̃[n,c,k,l] J̃[n,e,k,l]`` with ``J̃ = (Q_outᵀ D) (Q_inᵀ a)ᵀ`` summed over positions
    (without ``a``: ``Σ_k w[k] (Q_outᵀ D)[n,c,k] (Q_outᵀ D)[n,e,k]``), one diagram for the planner: it chooses between
    the position pairs ``(s, t)`` and the rotated per-layer Jacobian by cost."""
    c, n, s, d_out = d.shape
    shared = s > 1
    pos = ("s",) if shared else ()
    pos2 = ("t",) if shared else ()
    sizes = {"c": c, "e": c, "n": n, "i": d_out, "i2": d_out, "k": d_out} | ({"s": s, "t": s} if shared else {})
    nodes = [operand("D", "c", "n", *pos, "i"), operand("QB", "i", "k"), operand("D", "e", "n", *pos2, "i2"), operand("QB", "i2", "k")]
    operands = {"D": d if shared else d[:, :, 0], "QB": q_out, "W": weights}
    if a is None:
        nodes.append(operand("W", "k"))
    else:
        d_in = a.shape[-1]
        sizes |= {"j": d_in, "j2": d_in, "l": d_in}
        nodes += [operand("W", "k", "l"), operand("A", "n", *pos, "j"), operand("QA", "j", "l"), operand("A", "n", *pos2, "j2"), operand("QA", "j2", "l")]
        operands |= {"A": a if shared else a[:, 0], "QA": q_in}
    diagram = Diagram(tuple(nodes), ("n", "c", "e"), sizes)
    operands = {k: v.contiguous() for k, v in operands.items()}
    shapes = {k: tuple(v.shape) for k, v in operands.items()}
    return plan(diagram, shapes, dtype=d.dtype, device=d.device)(**operands)


def _kron_predictive(la: Any, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f_mu [N, C], f_var [N, C, C])`` of laplace's GLM predictive from the posterior's Kronecker eigenbases."""
    if not isinstance(la, KronLaplace):
        raise TypeError(f"kron_functional_variance needs a KronLaplace (hessian_structure='kron'), got {type(la).__name__}")
    if not issubclass(la._backend_cls, _TnderivInterface):
        raise TypeError(
            f"kron_functional_variance needs a Laplace with backend=TnderivGGN or TnderivEF, got {la._backend_cls.__name__}"
        )
    if not isinstance(la.H, KronDecomposed):
        raise ValueError("kron_functional_variance: the Laplace approximation is not fitted; call la.fit(train_loader) first")
    precision = la.posterior_precision
    f, pieces = la.backend.kron_pieces(x)
    if len(pieces) != len(precision.eigenvalues):
        raise ValueError(f"kron_functional_variance: {len(pieces)} parameters but {len(precision.eigenvalues)} Kronecker blocks")
    var = f.new_zeros(f.shape[0], f.shape[1], f.shape[1])
    for (d, a), qs, ls, delta in zip(pieces, precision.eigenvectors, precision.eigenvalues, precision.deltas):
        if len(ls) == 1:  # laplace's full block (a bias): Q diag(1/(λ + δ)) Qᵀ
            var = var + _quadratic_form(d, qs[0], 1.0 / (ls[0] + delta), None, None)
        elif a is None:
            raise ValueError("kron_functional_variance: a Kronecker block of two factors on a parameter that is not a weight")
        else:
            l_out, l_in = ls
            if precision.damping:
                root = torch.sqrt(delta)
                weights = 1.0 / torch.outer(l_out + root, l_in + root)
            else:
                weights = 1.0 / (torch.outer(l_out, l_in) + delta)
            var = var + _quadratic_form(d, qs[0], weights, a, qs[1])
    return f, var


def kron_functional_variance(la: Any, x: Any) -> torch.Tensor:
    """``f_var [N, C, C]``: ``J_n Σ J_nᵀ`` of a ``KronLaplace`` (all weights or last layer) fitted with ``TnderivGGN``
    (or ``TnderivEF``), ``Σ`` its Kronecker posterior covariance, without forming the Jacobian ``[N, C, P]``.

    Equal to laplace's ``la.functional_variance(Js)``. Per weight with eigenbases ``Q_B, Q_A`` and weights
    ``w = 1/(λ_B λ_Aᵀ + δ)`` (damping: ``1/((λ_B + √δ)(λ_A + √δ)ᵀ)``):
    ``f_var[n, c, e] += Σ_{s,t} Σ_{k,l} (Q_Bᵀ D_c)[s,k] (Q_Bᵀ D_e)[t,k] w[k,l] (Q_Aᵀ a)[s,l] (Q_Aᵀ a)[t,l]``;
    per bias ``Σ_k w[k] (Q_Bᵀ Σ_s D_c)[k] (Q_Bᵀ Σ_s D_e)[k]``. Supported layers: Linear (any leading axes) and
    Conv1d/2d/3d without groups, each called once per forward; others raise ``NotImplementedError``.
    """
    return _kron_predictive(la, x)[1]


class _KronPredictive:
    """Overrides laplace's GLM predictive: ``f_var`` from ``kron_functional_variance`` (no Jacobians), except for
    ``joint=True`` and ``enable_backprop=True``, which keep laplace's Jacobian-based computation."""

    def __init__(self, model: nn.Module, likelihood: Any, *args: Any, backend: type | None = None, **kwargs: Any) -> None:
        backend = TnderivGGN if backend is None else backend
        if not (isinstance(backend, type) and issubclass(backend, _TnderivInterface)):
            raise TypeError(f"{type(self).__name__} needs backend=TnderivGGN or TnderivEF, got {getattr(backend, '__name__', backend)}")
        super().__init__(model, likelihood, *args, backend=backend, **kwargs)  # type: ignore[call-arg]

    def _glm_predictive_distribution(self, X: Any, joint: bool = False, diagonal_output: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        if joint or self.enable_backprop:  # type: ignore[attr-defined]
            return super()._glm_predictive_distribution(X, joint=joint, diagonal_output=diagonal_output)  # type: ignore[misc]
        f_mu, f_var = _kron_predictive(self, X)
        if diagonal_output:
            f_var = torch.diagonal(f_var, dim1=-2, dim2=-1)
        return f_mu, f_var


class TnderivKronLaplace(_KronPredictive, KronLaplace):
    """laplace's ``KronLaplace`` (all weights) with ``backend=TnderivGGN`` by default and the predictive variance
    from Kronecker quadratic forms (``kron_functional_variance``)."""

    _key = ("all", "kron", "tnderiv")  # its own key: laplace's Laplace(...) factory keeps choosing KronLaplace


class TnderivKronLLLaplace(_KronPredictive, KronLLLaplace):
    """laplace's ``KronLLLaplace`` (last layer) with ``backend=TnderivGGN`` by default and the predictive variance
    from Kronecker quadratic forms (``kron_functional_variance``)."""

    _key = ("last_layer", "kron", "tnderiv")


__all__ = ["TnderivEF", "TnderivGGN", "TnderivKronLLLaplace", "TnderivKronLaplace", "kron_functional_variance"]
