"""A griffe extension for the API reference: keep functions that share their name with a submodule.

``tnderiv/render/__init__.py`` defines ``save`` and ``layout`` although ``tnderiv.render.save`` and
``tnderiv.render.layout`` are also submodules. Python's ``tnderiv.render.save`` is the function (the
``def`` runs after the submodule is imported), but griffe lets the submodule replace it. This puts the
function back once the package is loaded, so ``::: tnderiv.render.save`` documents what users call.
"""

from __future__ import annotations

from typing import Any

import griffe


class KeepShadowedFunctions(griffe.Extension):
    def __init__(self) -> None:
        self.functions: list[griffe.Function] = []

    def on_function_instance(self, *, func: griffe.Function, **kwargs: Any) -> None:
        parent = func.parent
        if isinstance(parent, griffe.Module) and parent.is_init_module:
            self.functions.append(func)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for func in self.functions:
            parent = func.parent
            current = parent.members.get(func.name)
            if current is not None and current is not func and current.is_module:
                parent.set_member(func.name, func)
