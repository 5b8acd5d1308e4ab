"""Which parameters a ``Curvature`` covers, who owns them, and how each one is computed.

Every selected parameter has a canonical name (``named_parameters``) and one or more *owners*: the
modules that hold it directly (several for tied weights). An owner is an *engine* layer when it has a
tnderiv spec and runs the stock ``forward`` of its torch type (its quantities come from the derived
diagrams); otherwise it is a *fallback* (its quantities come from ``torch.func`` on the module alone).
An owner that is never called (``MultiheadAttention.out_proj``, whose weight its parent reads
directly) hands its parameters to the nearest ancestor that is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from torch import nn

from tnderiv.layers.base import _FROM_MODULE, spec_of

ParamSelector = Iterable[str] | Iterable[nn.Module] | Callable[[str, nn.Parameter], bool] | None


@dataclass(frozen=True)
class Owner:
    """A module holding selected parameters: ``local`` names (relative to the module) → canonical names."""

    name: str
    module: nn.Module
    local: dict[str, str]
    engine: bool

    @property
    def kind(self) -> str:
        return "engine" if self.engine else "fallback"


@dataclass
class Selection:
    """The selected parameters by canonical name, and the modules to record (owners and their ancestors)."""

    params: dict[str, nn.Parameter]
    holders: dict[str, list[tuple[str, str]]]  # canonical name → [(module name, local name)], tied weights: several
    record: list[tuple[str, nn.Module]]
    modules: dict[str, nn.Module] = field(default_factory=dict)

    def owner_of(self, canonical: str) -> str:
        """The module whose name prefixes the canonical parameter name (where its results are listed)."""
        return canonical.rpartition(".")[0]


def select(model: nn.Module, params: ParamSelector) -> Selection:
    """The trainable parameters chosen by ``params`` (names, modules, a predicate ``(name, p) → bool``, or None = all)."""
    named = dict(model.named_parameters())
    if params is None:
        chosen = {n: p for n, p in named.items() if p.requires_grad}
    elif callable(params):
        chosen = {n: p for n, p in named.items() if params(n, p)}
    else:
        items = list(params)
        if isinstance(params, str) or not items:
            raise ValueError(f"params={params!r}: expected parameter names, modules or a predicate (name, param) -> bool")
        chosen = {}
        for item in items:
            if isinstance(item, str):
                if item not in named:
                    raise ValueError(f"params: no parameter named {item!r}; the model has {sorted(named)[:8]}…")
                chosen[item] = named[item]
            elif isinstance(item, nn.Module):
                ids = {id(p) for p in item.parameters()}
                found = {n: p for n, p in named.items() if id(p) in ids}
                if not found:
                    raise ValueError(f"params: module {type(item).__name__} has no parameters in this model")
                chosen.update(found)
            else:
                raise TypeError(f"params: {type(item).__name__} is neither a parameter name nor a module")
    frozen = [n for n, p in chosen.items() if not p.requires_grad]
    if frozen:
        raise ValueError(f"params selects {frozen} but they do not require grad")
    if not chosen:
        raise ValueError("no trainable parameters selected")
    by_id = {id(p): n for n, p in chosen.items()}
    holders: dict[str, list[tuple[str, str]]] = {n: [] for n in chosen}
    modules = dict(model.named_modules(remove_duplicate=False))
    for mname, module in modules.items():
        for local, p in module._parameters.items():
            if p is not None and id(p) in by_id and (mname, local) not in holders[by_id[id(p)]]:
                holders[by_id[id(p)]].append((mname, local))
    wanted: set[str] = set()
    for pairs in holders.values():
        for mname, _ in pairs:
            wanted.update(_ancestors(mname))
    record = [(n, m) for n, m in dict(model.named_modules()).items() if n in wanted]
    return Selection(chosen, holders, record, modules)


def _ancestors(name: str) -> list[str]:
    parts = name.split(".") if name else []
    return [".".join(parts[:i]) for i in range(len(parts) + 1)]


def is_engine_module(module: nn.Module) -> bool:
    """A module with a tnderiv spec whose ``forward`` is its torch type's own (a subclass may compute something else)."""
    for base in type(module).__mro__:
        if base in _FROM_MODULE:
            if type(module).forward is not base.forward:
                return False
            try:
                spec_of(module)
            except (TypeError, ValueError):
                return False
            return True
    return False


def owners(selection: Selection, called: set[str], unreached: Iterable[str] = ()) -> tuple[list[Owner], list[str]]:
    """The owners that compute each parameter (an uncalled holder hands over to its nearest called ancestor),
    and the canonical names of parameters that no called module holds or the backward did not reach
    (``unreached``: unused in the forward; no ancestor is re-run for them)."""
    found: dict[str, dict[str, str]] = {}
    unused = []
    skip = set(unreached)
    for canonical, pairs in selection.holders.items():
        if canonical in skip:
            unused.append(canonical)
            continue
        placed = False
        for mname, local in pairs:
            owner = next((a for a in reversed(_ancestors(mname)) if a in called), None)
            if owner is None:
                continue
            rel = mname[len(owner) :].lstrip(".") if owner else mname
            found.setdefault(owner, {})[f"{rel}.{local}" if rel else local] = canonical
            placed = True
        if not placed:
            unused.append(canonical)
    result = []
    for mname, local in found.items():
        module = selection.modules[mname]
        engine = is_engine_module(module) and all("." not in k for k in local)
        if engine:
            spec_params = set(_spec_params(module))
            if not set(local) <= spec_params:
                engine = False
        result.append(Owner(mname, module, local, engine))
    return result, unused


def _spec_params(module: nn.Module) -> tuple[str, ...]:
    return tuple(n for n in ("weight", "bias") if module._parameters.get(n) is not None)


__all__ = ["Owner", "ParamSelector", "Selection", "is_engine_module", "owners", "select"]
