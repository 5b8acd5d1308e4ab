"""Every cache of tnderiv in one registry (``cache_info``, ``clear_caches``); ``LRUCache`` is ``ir.lru``'s."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tnderiv.ir.lru import CacheInfo, LRUCache
from tnderiv.ir.registry import Registry, UnknownNameError


# ----- every cache of tnderiv, in one place ------------------------------------------------------------
@dataclass(frozen=True)
class CacheEntry:
    """A registered cache: how to read it, how to clear it, and how many plans one entry keeps alive."""

    name: str
    what: str
    info: Callable[[], CacheInfo]
    clear: Callable[[], None]
    plans_per_entry: int | Callable[[], int] = 0

    def plans_bound(self, maxsize: int) -> int:
        per = self.plans_per_entry() if callable(self.plans_per_entry) else self.plans_per_entry
        return maxsize * per


_REGISTRY: Registry[str, CacheEntry] = Registry("cache", plural="caches")


def register_cache(
    name: str, what: str, get: Callable[[], LRUCache | Callable], plans_per_entry: int | Callable[[], int] = 0
) -> None:
    """Add a cache to ``cache_info``/``clear_caches``: an ``LRUCache`` or a ``functools.lru_cache`` function, read through ``get``."""
    if name in _REGISTRY:
        raise _REGISTRY.duplicate(name)

    def info() -> CacheInfo:
        cache = get()
        if isinstance(cache, LRUCache):
            return cache.info()
        i = cache.cache_info()  # type: ignore[union-attr]
        return CacheInfo(i.hits, i.misses, i.currsize, i.maxsize)

    def clear() -> None:
        cache = get()
        cache.clear() if isinstance(cache, LRUCache) else cache.cache_clear()  # type: ignore[union-attr]

    _REGISTRY.register(name, CacheEntry(name, what, info, clear, plans_per_entry))


@dataclass(frozen=True)
class CachesInfo:
    """What ``tnderiv.cache_info()`` returns: each cache by name, and the bound on plans kept alive.

    ``plans_bound``: the caches together never keep more compiled plans alive than this (the sum of
    their sizes, weighted by the plans an entry holds); plans you hold yourself (a ``Plan``, a
    ``KFAC``'s or a ``GradStats``' ``plans``) come on top.
    """

    caches: dict[str, CacheInfo]
    what: dict[str, str]
    plans_bound: int

    def __getitem__(self, name: str) -> CacheInfo:
        if name not in self.caches:
            raise UnknownNameError("cache", name, self.caches, plural="caches")
        return self.caches[name]

    def __str__(self) -> str:
        lines = [f"{'cache':<14}{'size':>7}{'max':>7}{'hits':>9}{'misses':>9}  holds"]
        for name, i in self.caches.items():
            lines.append(f"{name:<14}{i.size:>7}{i.maxsize:>7}{i.hits:>9}{i.misses:>9}  {self.what[name]}")
        lines.append(f"at most {self.plans_bound} compiled plans are kept alive by these caches")
        return "\n".join(lines)


def cache_info() -> CachesInfo:
    """Every cache of tnderiv: size, bound, hits and misses, and the bound on plans they keep alive."""
    infos = {name: entry.info() for name, entry in _REGISTRY.items()}
    bound = sum(entry.plans_bound(infos[name].maxsize) for name, entry in _REGISTRY.items())
    return CachesInfo(infos, {name: entry.what for name, entry in _REGISTRY.items()}, bound)


def clear_caches() -> None:
    """Forget everything cached: warm calls, compiled plans, KFAC factors, constants (host and device), derivations."""
    for entry in _REGISTRY.values():
        entry.clear()
