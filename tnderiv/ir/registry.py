"""Named registries (quantities, rules, losses, statistics, layer kinds, ...) that behave alike.

Registering a name twice raises :class:`DuplicateNameError` unless ``replace=True``; looking up an
unknown name raises :class:`UnknownNameError` (a ``KeyError`` and a ``ValueError``) naming the
registry, the bad value and the valid names, always in one phrasing.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, MutableMapping
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _name(key: Any) -> str:
    return key.__name__ if isinstance(key, type) else str(key)


def _names(valid: Iterable[Any]) -> list[str]:
    return sorted(_name(v) for v in valid)


class UnknownNameError(KeyError, ValueError):
    """A name that a registry does not hold; ``except KeyError`` and ``except ValueError`` both catch it."""

    def __init__(self, kind: str, value: Any, valid: Iterable[Any], *, plural: str | None = None, where: str = "") -> None:
        self.kind = kind
        self.value = value
        self.valid = _names(valid)
        shown = value.__name__ if isinstance(value, type) else repr(value)
        context = f" {where}" if where else ""
        super().__init__(f"unknown {kind} {shown}{context}; valid {plural or kind + 's'} are {self.valid}")

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


class DuplicateNameError(ValueError):
    """A name registered twice without ``replace=True``."""

    def __init__(self, kind: str, name: Any) -> None:
        self.kind = kind
        self.name = name
        super().__init__(f"{kind} {_name(name)!r} is already registered; pass replace=True to replace it")


class Registry(MutableMapping[K, V], Generic[K, V]):
    """A mapping ``name → value`` that rejects duplicates and names the valid choices for an unknown name.

    ``kind`` is what one entry is called in messages (``"statistic"``); ``plural`` its plural
    (default ``kind + "s"``). ``registry[name] = value`` registers (rejecting a duplicate);
    ``register(name, value, replace=True)`` replaces; ``on_replace`` runs after a replacement
    (e.g. to clear a cache of derived results).
    """

    def __init__(self, kind: str, *, plural: str | None = None, on_replace: Callable[[], Any] | None = None) -> None:
        self.kind = kind
        self.plural = plural or kind + "s"
        self._on_replace = on_replace
        self._entries: dict[K, V] = {}

    def register(self, name: K, value: V, *, replace: bool = False) -> V:
        """Add ``value`` under ``name``; raises :class:`DuplicateNameError` if taken, unless ``replace``."""
        if not isinstance(replace, bool):
            raise TypeError(f"replace={replace!r}: expected a bool")
        taken = name in self._entries
        if taken and not replace:
            raise self.duplicate(name)
        self._entries[name] = value
        if taken and self._on_replace is not None:
            self._on_replace()
        return value

    def duplicate(self, name: Any) -> DuplicateNameError:
        """The error for registering ``name`` again without ``replace=True``."""
        return DuplicateNameError(self.kind, name)

    def unknown(self, value: Any, *, where: str = "") -> UnknownNameError:
        """The error for ``value`` not being a registered name (``where`` adds context, e.g. ``"in spec 'x'"``)."""
        return UnknownNameError(self.kind, value, self._entries, plural=self.plural, where=where)

    def lookup(self, name: Any, *, where: str = "") -> V:
        """The entry ``name``; raises :class:`UnknownNameError` for anything else, unhashable values included."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise self.unknown(name, where=where) from None

    def __getitem__(self, name: K) -> V:
        return self.lookup(name)

    def __setitem__(self, name: K, value: V) -> None:
        self.register(name, value)

    def __delitem__(self, name: K) -> None:
        if name not in self._entries:
            raise self.unknown(name)
        del self._entries[name]

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[K]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {_names(self._entries)})"


__all__ = ["DuplicateNameError", "Registry", "UnknownNameError"]
