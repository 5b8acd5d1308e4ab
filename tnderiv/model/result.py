"""The result of ``Curvature.compute``: quantities by module, then quantity, then parameter; a report; KFAC steps."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from tnderiv.model.batch import Row


def split_name(canonical: str) -> tuple[str, str]:
    """``"features.0.weight"`` → ``("features.0", "weight")`` (the module a parameter is listed under)."""
    module, _, local = canonical.rpartition(".")
    return module, local


class CurvatureResult(Mapping[str, Mapping[str, Any]]):
    """``res[module][quantity]``: ``{param: tensor}`` for per-parameter quantities, a ``KFAC`` (or, where KFAC
    is not defined, an ``ExactCurvature``) for ``"kfac"``. ``res.loss``, ``res.ggn_gram`` (``[M, N, M, N]``,
    summed over all parameters), ``res.report()``, ``res.precondition(damping)``.
    """

    def __init__(
        self,
        loss: torch.Tensor,
        quantities: Sequence[str],
        values: Mapping[str, Mapping[str, Any]],
        curvature: Mapping[str, Any],
        grads: Mapping[str, torch.Tensor],
        gram: torch.Tensor | None,
        rows: Sequence[Row],
        n: int,
        notes: Sequence[str] = (),
        *,
        divisor: int = 1,
        positions: Mapping[str, int] | None = None,
    ) -> None:
        self.loss = loss
        self.quantities = tuple(quantities)
        self.grads = dict(grads)
        self.ggn_gram = gram
        self.rows = list(rows)
        self.n = n
        self.notes = list(notes)
        self._divisor = divisor  # what reduction="mean" divided the loss by (1 for "sum")
        self._positions = dict(positions or {})  # weight-sharing positions per KFAC module (expand)
        by_module: dict[str, dict[str, Any]] = {}
        for canonical, per_q in values.items():
            module, local = split_name(canonical)
            entry = by_module.setdefault(module, {})
            for q, value in per_q.items():
                entry.setdefault(q, {})[local] = value
        for module, curv in curvature.items():
            by_module.setdefault(module, {})["kfac"] = curv
        self._modules = by_module

    def __getitem__(self, module: str) -> Mapping[str, Any]:
        try:
            return self._modules[module]
        except KeyError:
            listed = ", ".join(repr(m) for m in list(self._modules)[:12])
            raise KeyError(f"no results for module {module!r}; modules with results: {listed}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def __len__(self) -> int:
        return len(self._modules)

    def _per_param(self) -> dict[str, dict[str, Any]]:
        """``{canonical parameter name: {quantity: tensor}}`` (without ``kfac``)."""
        out: dict[str, dict[str, Any]] = {}
        for module, entry in self._modules.items():
            for q, value in entry.items():
                if q == "kfac":
                    continue
                for local, t in value.items():
                    out.setdefault(f"{module}.{local}" if module else local, {})[q] = t
        return out

    # ----- KFAC steps -----------------------------------------------------------------------------
    def precondition(self, damping: float, *, grads: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """``(C + damping·I)⁻¹ g`` per parameter (canonical names), ``C`` each module's KFAC (or exact GGN block);
        ``g`` the batch gradient unless ``grads`` (canonical names) are given."""
        if "kfac" not in self.quantities:
            raise ValueError("precondition needs the 'kfac' quantity: compute(x, y, (..., 'kfac'))")
        grads = self.grads if grads is None else dict(grads)
        out: dict[str, torch.Tensor] = {}
        for module, entry in self._modules.items():
            curv = entry.get("kfac")
            if curv is None:
                continue
            local = _param_names(curv)
            canon = {name: f"{module}.{name}" if module else name for name in local}
            missing = [canon[n] for n in local if grads.get(canon[n]) is None]
            if missing:
                raise ValueError(f"precondition: no gradient for {missing}")
            step = curv.inverse(damping).matvec({n: grads[canon[n]] for n in local})
            for n in local:
                out[canon[n]] = step[n]
        return out

    # ----- reading ----------------------------------------------------------------------------------
    def report(self) -> str:
        """Per module: how it was computed (derived diagrams or a materialized fallback), its quantities' shapes, time."""
        lines = [f"Curvature result: N={self.n}, loss={float(self.loss):.6g}, quantities={list(self.quantities)}"]
        per_param = self._per_param()
        for row in self.rows:
            module = row.module or "(model)"
            lines.append(f"  {module} [{row.type}] {row.path}, {row.seconds * 1e3:.2f} ms")
            for canonical in row.params:
                shapes = ", ".join(f"{q} {_shape(v)}" for q, v in per_param.get(canonical, {}).items())
                lines.append(f"      {canonical}: {shapes}")
            curv = self._modules.get(row.module, {}).get("kfac")
            if curv is not None:
                lines.append(f"      kfac: {_describe(curv)}")
            for stat, strategy in row.strategies.items():
                lines.append(f"      {stat} strategy: {strategy}")
        if self.ggn_gram is not None:
            lines.append(f"  ggn_gram (all parameters): {list(self.ggn_gram.shape)}")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)

    def __repr__(self) -> str:
        shown = [m or "(model)" for m in list(self._modules)[:4]]
        more = f", … {len(self._modules) - 4} more" if len(self._modules) > 4 else ""
        listed = ", ".join(shown) + more
        return f"CurvatureResult(N={self.n}, loss={float(self.loss):.4g}, quantities={list(self.quantities)}, modules=[{listed}])"


def _param_names(curv: Any) -> tuple[str, ...]:
    if hasattr(curv, "names"):
        return tuple(curv.names)
    return tuple(p.name for p in curv.params)


def _shape(value: Any) -> str:
    return str(list(value.shape)) if hasattr(value, "shape") else type(value).__name__


def _describe(value: Any) -> str:
    if hasattr(value, "A") and hasattr(value, "G"):
        return f"KFAC({value.approx}) A {list(value.A.shape)}, G {list(value.G.shape)}"
    return repr(value)


__all__ = ["CurvatureResult", "split_name"]
