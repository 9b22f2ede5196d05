"""Backend choice, the array module of a backend, and kernel arguments.

A backend decides two things: which array library holds tensor data (NumPy or CuPy)
and which kernel package runs the ops (``gpukernels.kernels`` is the dispatch table):

- ``numpy``: ``numpy.ndarray`` and the fast NumPy kernels of ``gpukernels/cpu/``.
  Always available.
- ``cuda``: ``cupy.ndarray`` and the Triton kernels of ``gpukernels/triton/``. CuPy,
  Triton and torch are imported lazily, only when asked for.
- ``interpret``: ``numpy.ndarray`` and the same Triton kernels run by Triton's
  interpreter (``TRITON_INTERPRET=1``): how every kernel is tested on a CPU machine.
  Triton fixes interpretation when a kernel is decorated, so this is a process-wide
  mode: choose it before the first op that loads a Triton kernel.

(``gpukernels/reference/`` is the naive NumPy oracle the tests compare both against;
no backend runs it.)

The choice is process-wide: ``set_backend(name)`` or the ``GPUKERNELS_BACKEND``
environment variable; the default is ``cuda`` when CuPy sees a GPU, else ``numpy``.

Kernel arguments: Triton accepts any object with ``data_ptr()`` and ``dtype``.
``kernel_arg`` turns a CuPy array into such an object (zero-copy) and a NumPy array
into a CPU ``torch`` tensor sharing its memory (``torch.from_numpy``), which is what the
interpreter reads and writes. On ``cuda`` Triton kernels launch on CuPy's current
stream, like CuPy's own kernels (``_launch_triton_on_cupy_streams``; by default Triton
would ask torch), so a step enqueued inside ``with cupy.cuda.Stream():`` (a CUDA graph
capture, ``gpukernels.cuda_graph``) stays on one stream.

A leaf of the library: it imports NumPy only (CuPy, torch and Triton lazily), so every
kernel package may import it.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

import numpy as np

BACKENDS = ("numpy", "cuda", "interpret")



_state = {"name": None}

#: The module each op family's last call ran, by family name (``gpukernels.kernels``
#: records it; tests and the doctor check that a Triton backend never fell back to NumPy).
last_dispatch: dict[str, str] = {}


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
    """The name of the process-wide backend (``"numpy"``, ``"cuda"`` or ``"interpret"``)."""
    if _state["name"] is None:
        name = _default_backend()
        if name == "interpret":
            _enable_interpreter()
        _state["name"] = name
    return _state["name"]


def interpreting() -> bool:
    """True when Triton kernels in this process run on Triton's interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _loaded_kernel_modules() -> list[str]:
    return [m for m in sys.modules if m.startswith("gpukernels.triton.") and sys.modules[m] is not None]


def _enable_interpreter() -> None:
    """Switch Triton to its interpreter before any kernel module is imported."""
    if not interpreting():
        loaded = _loaded_kernel_modules()
        if loaded:
            raise RuntimeError(
                "set_backend('interpret'): Triton kernels were already compiled for the GPU in "
                f"this process ({', '.join(sorted(loaded))}); choose 'interpret' before the first "
                "op, e.g. GPUKERNELS_BACKEND=interpret"
            )
        os.environ["TRITON_INTERPRET"] = "1"
    for module in ("torch", "triton"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise RuntimeError(
                f"the 'interpret' backend needs {module}: pip install torch==2.13.0 triton "
                "(the CPU build of torch is enough)"
            ) from exc


def set_backend(name: str) -> None:
    """Choose the process-wide backend.

    Args:
        name: ``"numpy"`` (NumPy arrays, reference kernels), ``"cuda"`` (CuPy arrays on
            the current GPU, Triton kernels) or ``"interpret"`` (NumPy arrays, the Triton
            kernels on Triton's interpreter; slow, for tests). Tensors created before the
            switch keep their arrays; ``Tensor.to(device)`` moves them.
    """
    name = _check_name(name)
    if name == "cuda":
        if not cuda_available():
            raise RuntimeError("set_backend('cuda'): CuPy does not see a GPU on this machine")
        if interpreting():
            raise RuntimeError("set_backend('cuda'): this process runs Triton in interpreter "
                               "mode (TRITON_INTERPRET=1); the cuda backend needs compiled kernels")
    if name == "interpret":
        _enable_interpreter()
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


def cupy_from_torch(t):
    """A CuPy view of the torch CUDA tensor ``t`` (zero-copy, through DLPack): same
    memory, shape and strides, so writes through either are seen by the other.

    ``torch.bfloat16`` becomes a ``uint16`` array of its bit patterns, the library's bf16
    convention (CuPy has no bfloat16; see ``gpukernels.triton._common``); every other
    dtype keeps its own."""
    import torch  # noqa: PLC0415 - lazy: only GPU code with torch tensors gets here

    cupy = _cupy()
    if t.dtype == torch.bfloat16:
        return cupy.from_dlpack(t.view(torch.int16)).view(cupy.uint16)
    return cupy.from_dlpack(t)


def torch_from_cupy(a, bfloat16: bool = False):
    """A torch view of the CuPy array ``a`` (zero-copy, through DLPack): same memory,
    shape and strides.

    With ``bfloat16=True`` a ``uint16`` array of bf16 bit patterns (the library's bf16
    convention) is read as ``torch.bfloat16`` (any other dtype is a ``TypeError``);
    without it a ``uint16`` array comes back as ``torch.int16`` holding the same bits.
    Other dtypes keep their own."""
    import torch  # noqa: PLC0415 - lazy: only GPU code with torch tensors gets here

    cupy = _cupy()
    if bfloat16 and a.dtype != cupy.uint16:
        raise TypeError(f"torch_from_cupy(bfloat16=True): expected a uint16 array of bf16 bits, got {a.dtype}")
    t = torch.from_dlpack(a.view(cupy.int16) if a.dtype == cupy.uint16 else a)
    return t.view(torch.bfloat16) if bfloat16 else t


# ----------------------------------------------------------------------------- kernel arguments

_tf32 = {"allow": True}


def set_allow_tf32(allow: bool) -> None:
    """Let float32 convolutions on the GPU use TF32 tensor cores (10-bit mantissa
    products, float32 accumulation); on by default, as ``torch.backends.cudnn.allow_tf32``.
    ``False`` computes them in full float32."""
    if not isinstance(allow, bool):
        raise TypeError(f"set_allow_tf32(): expected a bool, got {allow!r}")
    _tf32["allow"] = allow


def get_allow_tf32() -> bool:
    return _tf32["allow"]


class DevicePointer:
    """What Triton reads of a kernel argument: an address and an element type.

    Wraps a CuPy array zero-copy. ``dtype`` may name a type CuPy lacks (``"bfloat16"``
    over a ``uint16`` array holding bf16 bit patterns)."""

    __slots__ = ("_ptr", "dtype")

    def __init__(self, ptr: int, dtype: str):
        self._ptr, self.dtype = ptr, dtype

    def data_ptr(self) -> int:
        return self._ptr


def kernel_arg(array, dtype: str | None = None):
    """``array`` (NumPy or CuPy) as a Triton kernel argument, without a copy.

    CuPy arrays become a ``DevicePointer``; NumPy arrays (``interpret`` backend) a CPU
    ``torch`` tensor sharing their memory, which is what Triton's interpreter reads and
    writes. ``dtype`` reinterprets the elements (``"bfloat16"`` over ``uint16``).
    """
    if device_of(array) == "cuda":
        if interpreting():
            raise RuntimeError("a CuPy array reached a Triton kernel in interpreter mode "
                               "(TRITON_INTERPRET=1): the cuda backend needs compiled kernels")
        return DevicePointer(array.data.ptr, dtype or array.dtype.name)
    import torch  # noqa: PLC0415 - only the Triton backends get here

    if any(st < 0 for st in array.strides) or not array.flags.writeable:
        # a copy would change the strides the launcher passes with it: refuse, loudly
        raise ValueError(
            f"kernel_arg: a {'read-only' if not array.flags.writeable else 'negative-stride'} "
            f"array (shape {array.shape}, strides {array.strides}) cannot be handed to a Triton "
            "kernel as is; the launcher must pass triton._common.kernel_view(array)")
    t = torch.from_numpy(array)
    return t.view(getattr(torch, dtype)) if dtype else t


# ----------------------------------------------------------------------------- Triton streams


def _launch_triton_on_cupy_streams() -> None:
    """Make Triton launch on CuPy's current stream. With torch imported, Triton asks
    torch for the current stream; our arrays live on CuPy's, and a CUDA graph records
    only what goes to the capturing (CuPy) stream. Idempotent."""
    from triton.runtime import driver  # noqa: PLC0415 - cuda backend only

    active = driver.active
    if getattr(active, "_gk_cupy_stream", False):
        return
    cupy = _cupy()
    active.get_current_stream = lambda device=None: cupy.cuda.get_current_stream().ptr
    active._gk_cupy_stream = True
