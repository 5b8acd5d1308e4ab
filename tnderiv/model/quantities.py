"""The quantities of ``Curvature.compute``: their names, what each needs, and checks of a request."""

from __future__ import annotations

from collections.abc import Sequence

from tnderiv.ir.registry import UnknownNameError
from tnderiv.model.reduce import STATS

GRAD = "grad"
PER_SAMPLE = ("per_sample_grad", *STATS)
GGN = ("ggn_diag", "per_sample_ggn_diag", "ggn_block", "ggn_gram")
HESSIAN_DIAGONALS = ("bl89", "hesscale", "hesscale_gn")
QUANTITIES = (GRAD, *PER_SAMPLE, "kfac", *GGN, *HESSIAN_DIAGONALS)
# defined per sample: undefined through a module that couples samples (train-mode batch norm)
SAMPLE_WISE = (*PER_SAMPLE, "per_sample_ggn_diag")


def parse_quantities(quantities: str | Sequence[str]) -> tuple[str, ...]:
    """The requested quantity names, checked; raises listing the valid ones."""
    if isinstance(quantities, str):
        quantities = (quantities,)
    try:
        names = tuple(quantities)
    except TypeError:
        raise TypeError(f"quantities={quantities!r}: expected a name or a sequence of names from {list(QUANTITIES)}") from None
    if not names:
        raise ValueError(f"no quantities requested; expected names from {list(QUANTITIES)}")
    for name in names:
        if not isinstance(name, str) or name not in QUANTITIES:
            raise UnknownNameError("model quantity", name, QUANTITIES, plural="model quantities")
    return tuple(dict.fromkeys(names))


def needs_columns(names: Sequence[str], fisher: str) -> bool:
    """Whether the request needs loss-Hessian square-root columns pulled back through the model."""
    return fisher in ("type-2", "mc") and any(n in GGN or n == "kfac" for n in names)


__all__ = ["GGN", "GRAD", "HESSIAN_DIAGONALS", "PER_SAMPLE", "QUANTITIES", "SAMPLE_WISE", "needs_columns", "parse_quantities"]
