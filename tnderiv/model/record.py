"""Forward hooks that record what each module saw: its inputs and the gradient edges of its outputs.

Recording keeps references only (no copies). The edge of an output is taken when the module returns,
so a later in-place operation (``ReLU(inplace=True)``) does not change what its gradient means.
Hooks are removed on leaving the context, also when the forward raises.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge
from torch.utils._pytree import tree_flatten


@dataclass
class Use:
    """One call of a module: its positional and keyword inputs, its tensor outputs and their gradient edges.

    ``versions`` are the inputs' version counters at the call; an input changed in place afterwards
    would make every quantity computed from it wrong, so ``check_unchanged`` raises then.
    """

    module_name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    outputs: list[torch.Tensor]
    edges: list[GradientEdge | None]
    versions: list[tuple[torch.Tensor, int]] = field(default_factory=list)

    @property
    def x(self) -> torch.Tensor:
        """The first positional input (what a layer's ``x`` is)."""
        return self.args[0]

    def check_unchanged(self) -> None:
        for tensor, version in self.versions:
            if tensor._version != version:
                raise RuntimeError(
                    f"an input of module {self.module_name or '(model)'} was modified in place after the module used it; "
                    "its recorded input is no longer what the module saw (remove the in-place operation)"
                )


class Recorder:
    """Which modules to record; ``uses[name]`` lists their calls during the recorded forward."""

    def __init__(self, modules: Sequence[tuple[str, nn.Module]]) -> None:
        self.modules = list(modules)
        self.uses: dict[str, list[Use]] = {name: [] for name, _ in self.modules}
        self.active = False

    @contextmanager
    def recording(self) -> Iterator[Recorder]:
        """Record while inside; every hook is removed on leaving, whatever happens."""
        handles = [module.register_forward_hook(self._hook(name), with_kwargs=True) for name, module in self.modules]
        self.active = True
        try:
            yield self
        finally:
            self.active = False
            for handle in handles:
                handle.remove()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Calls inside (re-running a module under ``torch.func``) are not recorded."""
        active, self.active = self.active, False
        try:
            yield
        finally:
            self.active = active

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            if not self.active:
                return
            outputs = [t for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)]
            edges = [get_gradient_edge(t) if t.requires_grad else None for t in outputs]
            inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
            versions = [(t, t._version) for t in inputs]
            self.uses[name].append(Use(name, args, dict(kwargs), outputs, edges, versions))

        return hook

    def clear(self) -> None:
        self.uses = {name: [] for name, _ in self.modules}


__all__ = ["Recorder", "Use"]
