"""The shared registry: duplicates rejected unless replaced, unknown names raise one error naming the valid ones."""

from __future__ import annotations

import re

import pytest

from tnderiv.ir import DuplicateNameError, Registry, UnknownNameError


def _colours() -> Registry[str, int]:
    registry: Registry[str, int] = Registry("colour")
    registry.register("red", 1)
    registry["blue"] = 2
    return registry


def test_lookup_and_mapping_behaviour() -> None:
    registry = _colours()
    assert registry["red"] == 1 and registry.lookup("blue") == 2
    assert list(registry) == ["red", "blue"] and len(registry) == 2
    assert "red" in registry and "green" not in registry and ["unhashable"] not in registry
    assert registry.get("green") is None and dict(registry.items()) == {"red": 1, "blue": 2}
    assert repr(registry) == "Registry('colour': ['blue', 'red'])"


def test_duplicates_are_rejected_unless_replaced() -> None:
    registry = _colours()
    with pytest.raises(DuplicateNameError, match=r"^colour 'red' is already registered; pass replace=True to replace it$"):
        registry.register("red", 3)
    with pytest.raises(ValueError, match="already registered"):
        registry["blue"] = 3
    assert registry["red"] == 1 and registry["blue"] == 2
    registry.register("red", 3, replace=True)
    assert registry["red"] == 3
    with pytest.raises(TypeError, match="replace='yes': expected a bool"):
        registry.register("red", 4, replace="yes")  # type: ignore[arg-type]


def test_replacing_runs_the_hook_only_on_replacement() -> None:
    calls: list[str] = []
    registry: Registry[str, int] = Registry("colour", on_replace=lambda: calls.append("cleared"))
    registry.register("red", 1)
    registry.register("blue", 2, replace=True)  # a new name: nothing to clear
    assert calls == []
    registry.register("red", 3, replace=True)
    assert calls == ["cleared"]


@pytest.mark.parametrize("bad", ["green", 3, None, ["red"]])
def test_unknown_names_raise_one_error_naming_registry_value_and_choices(bad: object) -> None:
    registry = _colours()
    message = f"unknown colour {bad!r}; valid colours are ['blue', 'red']"
    with pytest.raises(UnknownNameError, match=re.escape(message)) as info:
        registry[bad]  # type: ignore[index]
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    assert info.value.kind == "colour" and info.value.value == bad and info.value.valid == ["blue", "red"]
    assert str(info.value) == message  # not quoted as KeyError would


def test_plural_context_deletion_and_type_keys() -> None:
    registry: Registry[object, str] = Registry("module type", plural="module types")
    registry.register(int, "int")
    with pytest.raises(UnknownNameError, match=r"^unknown module type float in the test; valid module types are \['int'\]$"):
        registry.lookup(float, where="in the test")
    with pytest.raises(DuplicateNameError, match="module type 'int' is already registered"):
        registry.register(int, "again")
    del registry[int]
    assert len(registry) == 0
    with pytest.raises(KeyError, match="unknown module type int"):
        del registry[int]
