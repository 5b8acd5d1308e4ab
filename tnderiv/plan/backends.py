"""Array backends that run plans: torch (CPU and CUDA) and cupy (imported only when used)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from tnderiv.ir import Registry

BackendName = Literal["torch", "cupy"]
BACKEND_NAMES: tuple[BackendName, ...] = get_args(BackendName)


@dataclass(frozen=True)
class Backend:
    """How to recognise, create and reshape arrays of one library; ``name`` is opt_einsum's backend name."""

    name: BackendName

    def __post_init__(self) -> None:
        if self.name not in BACKEND_NAMES:
            raise ValueError(f"name={self.name!r}: expected one of {list(BACKEND_NAMES)}")

    @property
    def is_torch(self) -> bool:
        """Whether arrays are ``torch.Tensor`` (else ``cupy.ndarray``)."""
        return self.name == "torch"

    def owns(self, array: Any) -> bool:
        module = type(array).__module__.split(".")[0]
        return module == self.name

    def from_numpy(self, array: np.ndarray, like: Any) -> Any:
        """``array`` with the dtype and device of ``like``."""
        if self.is_torch:
            import torch

            return torch.tensor(array, dtype=like.dtype, device=like.device)
        import cupy  # type: ignore[import-not-found]

        with cupy.cuda.Device(like.device.id):
            return cupy.asarray(array, dtype=like.dtype)

    def device_key(self, array: Any) -> str:
        if self.is_torch:
            return str(array.device)
        return f"cuda:{array.device.id}"

    def dtype_key(self, array: Any) -> str:
        return str(array.dtype)

    def is_floating(self, array: Any) -> bool:
        """Real floating point (complex dtypes are not supported: derivatives here are real)."""
        if self.is_torch:
            return bool(array.is_floating_point())
        return array.dtype.kind == "f"

    def is_complex(self, array: Any) -> bool:
        if self.is_torch:
            return bool(array.is_complex())
        return array.dtype.kind == "c"

    def full(self, value: float, like: Any) -> Any:
        """A 0-d array holding ``value`` with ``like``'s dtype and device."""
        if self.is_torch:
            import torch

            return torch.full((), value, dtype=like.dtype, device=like.device)
        import cupy  # type: ignore[import-not-found]

        return cupy.full((), value, dtype=like.dtype)

    def broadcast_to(self, array: Any, shape: tuple[int, ...]) -> Any:
        """A broadcast view of ``array`` with ``shape`` (no copy)."""
        if self.is_torch:
            return array.expand(*shape)
        import cupy  # type: ignore[import-not-found]

        return cupy.broadcast_to(array, shape)

    def concatenate(self, arrays: list[Any], axis: int) -> Any:
        """``arrays`` joined along ``axis`` (``torch.cat`` or ``cupy.concatenate``)."""
        if self.is_torch:
            import torch

            return torch.cat(arrays, dim=axis)
        import cupy  # type: ignore[import-not-found]

        return cupy.concatenate(arrays, axis=axis)


TORCH = Backend("torch")
CUPY = Backend("cupy")
BACKENDS = (TORCH, CUPY)
_BY_NAME: Registry[str, Backend] = Registry("backend")
for _backend in BACKENDS:
    _BY_NAME.register(_backend.name, _backend)


def backend_named(name: BackendName | Backend) -> Backend:
    """The backend called ``name`` (a ``Backend`` is returned as is); raises ``UnknownNameError`` naming the valid ones."""
    return name if isinstance(name, Backend) else _BY_NAME.lookup(name)


_BY_TYPE: dict[type, Backend] = {}


def backend_of(array: Any, name: str = "tensor") -> Backend:
    """The backend owning ``array``; raises a TypeError naming ``name`` for anything else."""
    found = _BY_TYPE.get(type(array))
    if found is not None:
        return found
    for backend in BACKENDS:
        if backend.owns(array):
            _BY_TYPE[type(array)] = backend  # the hot path of every call: look types up once
            return backend
    raise TypeError(f"{name} must be a torch.Tensor or a cupy.ndarray, got {type(array).__name__}")
