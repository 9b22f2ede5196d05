"""Backend choice, the array module of a backend, and op dispatch.

A backend decides two things: which array library holds tensor data (NumPy or CuPy)
and which implementation of each op family runs. Every op family lives in a module
with the same function names for every backend:

    gpukernels.reference.<family>   NumPy/CuPy-generic code (the ``numpy`` backend)
    gpukernels.triton.<family>      Triton launchers (``cuda`` / ``interpret``, later)

Autograd Functions never import an implementation directly; they ask
``kernels(family)`` for the module of the current backend, so a new backend plugs in
here without touching the autograd or the modules.

Backends registered today:

- ``numpy``: ``numpy.ndarray`` and the reference code. Always available.
- ``cuda``:  ``cupy.ndarray``; the same reference code runs on CuPy (Chainer style:
  one NumPy-compatible code path). CuPy is imported lazily, only when asked for.

The choice is process-wide: ``set_backend(name)`` or the ``GPUKERNELS_BACKEND``
environment variable; the default is ``cuda`` when CuPy sees a GPU, else ``numpy``.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import numpy as np

BACKENDS = ("numpy", "cuda")

_state = {"name": None}


def _cupy():
    """Import CuPy, or raise an error that says how to get it."""
    try:
        import cupy  # noqa: PLC0415 - lazy on purpose: NumPy-only installs must work
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError(
            "the 'cuda' backend needs CuPy and an NVIDIA GPU: pip install 'gpukernels[cuda]'"
        ) from exc
    return cupy


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one GPU."""
    try:
        import cupy  # noqa: PLC0415
    except ImportError:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - no driver, no device: all mean "no GPU"
        return False


def _default_backend() -> str:
    env = os.environ.get("GPUKERNELS_BACKEND")
    if env:
        return _check_name(env, "GPUKERNELS_BACKEND")
    return "cuda" if cuda_available() else "numpy"


def _check_name(name, what="backend"):
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"{what} must be one of {BACKENDS}, got {name!r}")
    return name


def get_backend() -> str:
    """The name of the process-wide backend (``"numpy"`` or ``"cuda"``)."""
    if _state["name"] is None:
        _state["name"] = _default_backend()
    return _state["name"]


def set_backend(name: str) -> None:
    """Choose the process-wide backend.

    Args:
        name: ``"numpy"`` (NumPy arrays, reference kernels) or ``"cuda"`` (CuPy arrays
            on the current GPU). Tensors created before the switch keep their arrays;
            ``Tensor.to(device)`` moves them.
    """
    name = _check_name(name)
    if name == "cuda" and not cuda_available():
        raise RuntimeError("set_backend('cuda'): CuPy does not see a GPU on this machine")
    _state["name"] = name


def device_of_backend(name: str | None = None) -> str:
    """The PyTorch-style device string of a backend's arrays: ``"cpu"`` or ``"cuda"``."""
    return "cuda" if (name or get_backend()) == "cuda" else "cpu"


# ----------------------------------------------------------------------------- arrays


def xp_for_device(device: str) -> ModuleType:
    """The array module (numpy or cupy) that holds arrays of ``device``."""
    return _cupy() if device == "cuda" else np


def default_xp() -> ModuleType:
    """The array module new tensors are created with under the current backend."""
    return xp_for_device(device_of_backend())


def get_array_module(*arrays) -> ModuleType:
    """numpy or cupy, whichever holds ``arrays`` (NumPy when CuPy is not imported)."""
    for a in arrays:
        if type(a).__module__.startswith("cupy"):
            return _cupy()
    return np


def device_of(array) -> str:
    """``"cuda"`` for a CuPy array, ``"cpu"`` for anything else."""
    return "cuda" if type(array).__module__.startswith("cupy") else "cpu"


def normalize_device(device) -> str:
    """Accept ``"cpu"``, ``"cuda"``, ``"cuda:0"`` (PyTorch spellings); return cpu/cuda."""
    text = str(device)
    if text == "cpu":
        return "cpu"
    if text == "cuda" or text.startswith("cuda:"):
        return "cuda"
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


def to_device(array, device: str):
    """Copy ``array`` to ``device`` (no copy when it is already there)."""
    device = normalize_device(device)
    if device_of(array) == device:
        return array
    if device == "cuda":
        if not cuda_available():
            raise RuntimeError("to('cuda'): CuPy does not see a GPU on this machine")
        return _cupy().asarray(array)
    return _cupy().asnumpy(array)


def to_numpy(array) -> np.ndarray:
    """A host ``numpy.ndarray`` with the data of ``array``."""
    return array if isinstance(array, np.ndarray) else _cupy().asnumpy(array)


# ----------------------------------------------------------------------------- dispatch

# Which implementation package serves each backend. The Triton backends of later work
# register theirs here; families a package lacks are a clear error, never a silent
# fallback to another backend.
_IMPLEMENTATIONS = {"numpy": "gpukernels.reference", "cuda": "gpukernels.reference"}

#: The last implementation module each family dispatched to (tests assert on it).
last_dispatch: dict[str, str] = {}

# (package, family) -> module: every op's forward and backward dispatch, so no import
# machinery on that path after the first call.
_modules: dict[tuple[str, str], ModuleType] = {}


def kernels(family: str, device: str = "cpu") -> ModuleType:
    """The module implementing op ``family`` (``"conv"``, ``"pool"``, ...) for arrays on
    ``device``: CuPy arrays take the ``cuda`` implementation, host arrays the current
    backend's when it works on host memory, else the NumPy reference."""
    if device == "cuda":
        backend = "cuda"
    else:
        backend = get_backend()
        backend = backend if device_of_backend(backend) == "cpu" else "numpy"
    key = (_IMPLEMENTATIONS[backend], family)
    module = _modules.get(key)
    if module is None:
        module = _modules[key] = importlib.import_module(f"{key[0]}.{family}")
    last_dispatch[family] = module.__name__
    return module
