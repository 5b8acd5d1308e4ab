"""What a derivative reads: the free operands of a layer's VJP diagrams (memsave's analysis).

An autograd function must keep, from its forward to its backward, exactly the operands that the
backward's diagrams read. For a layer network these are the operands of ``vjp_<wrt>`` for every
requested ``wrt``, except the cotangent ``grad_out`` (it arrives with the backward). Examples,
read off the diagrams (never tabulated):

- convolution / dense: ``vjp_x`` reads ``weight``; ``vjp_weight`` reads ``x``; ``vjp_bias`` nothing;
- normalization: ``vjp_weight`` reads ``x_hat``; ``vjp_x`` reads ``weight, inv_std`` and, with
  batch statistics, ``x_hat`` (running statistics make it a per-channel diagonal map).

``x_hat`` and ``inv_std`` are *derived* operands that the layer's ``prepare`` computes from the
user's tensors. :func:`derived_sources` finds which of those tensors each one is computed from by
running ``prepare`` on redrawn tensors once, so :func:`saved_operands` can name the user tensors to keep.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from tnderiv.calculus.quantities import QUANTITIES
from tnderiv.layers.base import LayerNetwork

COTANGENT = "grad_out"


def _wrt_tuple(network: LayerNetwork, wrt: str | Iterable[str]) -> tuple[str, ...]:
    names = (wrt,) if isinstance(wrt, str) else tuple(wrt)
    for name in names:
        if not isinstance(name, str) or name not in network.operands:
            raise ValueError(f"wrt={wrt!r}: {name!r} is not an operand of this layer; expected names from {list(network.operands)}")
    return tuple(dict.fromkeys(names))


def required_operands(network: LayerNetwork, wrt: str | Iterable[str]) -> tuple[str, ...]:
    """The operands the VJP diagrams of ``wrt`` read, ``grad_out`` excluded (may include derived ones).

    Order: the layer's inputs and parameters, then its derived operands, then any other operand.
    """
    return _required(network, _wrt_tuple(network, wrt))


@lru_cache(maxsize=512)
def _required(network: LayerNetwork, wrt: tuple[str, ...]) -> tuple[str, ...]:
    build = QUANTITIES["vjp"].build
    read: set[str] = set()
    for name in wrt:
        read.update(build(network, name).operand_names)
    read.discard(COTANGENT)
    order = network.operands + network.derived
    return tuple(name for name in order if name in read) + tuple(sorted(read - set(order)))


_SOURCES: weakref.WeakKeyDictionary[LayerNetwork, dict[str, tuple[str, ...]]] = weakref.WeakKeyDictionary()


def derived_sources(network: LayerNetwork, tensors: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """``{derived operand: the given tensors it is computed from}``, found by running ``prepare``.

    ``tensors``: torch tensors by operand name (``x``, and ``running_mean``/``running_var`` where the
    layer uses them). A derived operand depends on a tensor iff redrawing that tensor (independent
    values in ``[0.5, 1.5)``, valid for variances) changes it. Nothing is recorded for autograd; the
    answer is a property of the network and is remembered per network.
    """
    if not network.derived or network.prepare is None:
        return {}
    cached = _SOURCES.get(network)
    if cached is not None:
        return cached
    import torch

    given = {name: t for name, t in tensors.items() if isinstance(t, torch.Tensor) and t.is_floating_point()}
    generator = torch.Generator(device=next(iter(given.values())).device).manual_seed(0)
    with torch.no_grad():
        base = network.prepare(dict(given))
        sources: dict[str, list[str]] = {name: [] for name in network.derived}
        for name, value in given.items():
            redrawn = dict(given)
            redrawn[name] = torch.rand(value.shape, generator=generator, dtype=value.dtype, device=value.device) + 0.5
            changed = network.prepare(redrawn)
            for derived in network.derived:
                if not torch.equal(changed[derived], base[derived]):
                    sources[derived].append(name)
    result = {name: tuple(names) for name, names in sources.items()}
    _SOURCES[network] = result
    return result


def saved_operands(network: LayerNetwork, wrt: str | Iterable[str], tensors: Mapping[str, Any]) -> tuple[str, ...]:
    """The given tensors a backward for ``wrt`` must keep: :func:`required_operands`, derived ones by their sources."""
    required = required_operands(network, wrt)
    sources = derived_sources(network, tensors) if any(name in network.derived for name in required) else {}
    saved: dict[str, None] = {}
    for name in required:
        for source in sources.get(name, (name,)):
            saved[source] = None
    return tuple(saved)
