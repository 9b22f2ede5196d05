"""Which code runs each op family: the library's one dispatch table.

Every op family has a module with the same function names in each kernel package:

    gpukernels/reference/<family>.py   the naive NumPy oracle (tests only)
    gpukernels/cpu/<family>.py         fast NumPy: the ``numpy`` backend
    gpukernels/triton/<family>.py      Triton launchers: the ``cuda`` and ``interpret`` backends

An entry below names a family's CPU module and its Triton module; an op asks its entry
for the module that serves its arrays and calls the function by name::

    y = kernels.conv.on(x).conv2d_forward(x, weight, ...)

``on(array)`` picks the Triton module for CuPy arrays (``cuda``) and, on host arrays,
under the ``interpret`` backend; the CPU module otherwise (the ``numpy`` backend, or
host arrays while the backend is ``cuda``). The Triton modules are imported on first
use, by their dotted path: Triton fixes interpreter mode when a kernel is decorated, so
importing them here would freeze the mode before ``set_backend`` could choose it.

The first call that gets a CPU module applies ``cpu._memory``'s allocator settings
(freed activations kept for reuse: a ResNet-8 step's page faults 19.5k -> 2 on the dev VM).

Also here: ``cast_array`` and ``add_arrays``, the two array-level ops the autograd core
needs (dtype casts, gradient sums), dispatched like the families.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np

from . import backend
from .cpu import _memory as cpu_memory
from .cpu import activation as cpu_activation
from .cpu import batchnorm as cpu_batchnorm
from .cpu import cast as cpu_cast
from .cpu import conv as cpu_conv
from .cpu import cross_entropy as cpu_cross_entropy
from .cpu import dropout as cpu_dropout
from .cpu import linear as cpu_linear
from .cpu import loss as cpu_loss
from .cpu import optim as cpu_optim
from .cpu import pool as cpu_pool
from .dtypes import bfloat16, float16, float32, from_float32, to_float32

#: ``backend.last_dispatch[family]``: the module that family's last call ran (the tests
#: and the doctor assert on it: no silent fallback to NumPy on a Triton backend).
last_dispatch = backend.last_dispatch


class Family:
    """One op family's implementations.

    Args:
        name: the family (``"conv"``), as in error messages and ``last_dispatch``.
        cpu: its module of ``gpukernels.cpu``.
        triton: the dotted path of its Triton module (imported on first use).
        cpu_bf16: whether the CPU module handles bf16 (uint16 bit patterns); the NumPy
            kernels of the NN ops have no bf16 arithmetic, so they refuse it.
    """

    def __init__(self, name: str, cpu: ModuleType, triton: str, cpu_bf16: bool = False):
        self.name, self.cpu, self.triton_path, self.cpu_bf16 = name, cpu, triton, cpu_bf16
        self._triton: ModuleType | None = None

    def __repr__(self):
        return f"Family({self.name!r}, cpu={self.cpu.__name__}, triton={self.triton_path})"

    def triton(self) -> ModuleType:
        """The Triton module (imported now if it is not yet)."""
        if self._triton is None:
            self._triton = importlib.import_module(self.triton_path)
        return self._triton

    def uses_triton(self, device: str = "cpu") -> bool:
        """Whether arrays on ``device`` run the Triton module under the current backend."""
        return device == "cuda" or backend.get_backend() == "interpret"

    def for_device(self, device: str = "cpu") -> ModuleType:
        """The module serving arrays on ``device`` (``"cpu"`` / ``"cuda"``)."""
        if self.uses_triton(device):
            if device == "cuda":
                backend._launch_triton_on_cupy_streams()
            module = self.triton()
        else:
            module = self.cpu
            cpu_memory.apply()  # once per process (a dict lookup after): cpu/_memory.py
        last_dispatch[self.name] = module.__name__
        return module

    def on(self, array) -> ModuleType:
        """The module serving ``array``; a TypeError for bf16 that module cannot do."""
        module = self.for_device(backend.device_of(array))
        if module is self.cpu and not self.cpu_bf16 and array.dtype == bfloat16:
            raise TypeError(
                f"{self.name}: bfloat16 needs the Triton kernels (the 'cuda' or 'interpret' backend); "
                f"the NumPy kernels have no bf16 arithmetic (backend {backend.get_backend()!r}); "
                "use float16 or float32 there")
        return module


activation = Family("activation", cpu_activation, "gpukernels.triton.activation")
batchnorm = Family("batchnorm", cpu_batchnorm, "gpukernels.triton.batchnorm")
cast = Family("cast", cpu_cast, "gpukernels.triton.cast", cpu_bf16=True)
conv = Family("conv", cpu_conv, "gpukernels.triton.conv")
cross_entropy = Family("cross_entropy", cpu_cross_entropy, "gpukernels.triton.cross_entropy")
dropout = Family("dropout", cpu_dropout, "gpukernels.triton.dropout")
linear = Family("linear", cpu_linear, "gpukernels.triton.linear")
loss = Family("loss", cpu_loss, "gpukernels.triton.loss")
optim = Family("optim", cpu_optim, "gpukernels.triton.optim", cpu_bf16=True)
pool = Family("pool", cpu_pool, "gpukernels.triton.pool")

#: Every family by name.
FAMILIES: dict[str, Family] = {f.name: f for f in (
    activation, batchnorm, cast, conv, cross_entropy, dropout, linear, loss, optim, pool)}


# ----------------------------------------------------------------------------- array ops


def cast_array(a, dtype):
    """``a`` as ``dtype``, bf16 (uint16 bits) included; ``a`` itself when it already is.
    Conversions to or from bf16 take the backend's ``cast`` kernel (one pass on a GPU)."""
    dtype = np.dtype(dtype)
    if a.dtype == dtype:
        return a
    if dtype != bfloat16 and a.dtype != bfloat16:
        return a.astype(dtype)
    if a.dtype not in (float16, float32, bfloat16):
        a = a.astype(np.float32)  # float64 / integers: the kernels take 16/32-bit floats
    out = cast.on(a).cast(a, float32 if dtype not in (float16, bfloat16) else dtype)
    return out if out.dtype == dtype else out.astype(dtype)


def add_arrays(a, b):
    """a + b for gradient sums: the backend's ``add_forward`` (one kernel pass on the
    Triton backends); bf16 bit patterns are added as float32 and rounded once."""
    if a.shape == b.shape and a.dtype == b.dtype and a.dtype in (float16, float32, bfloat16):
        return activation.for_device(backend.device_of(a)).add_forward(a, b)
    if a.dtype == bfloat16 or b.dtype == bfloat16:
        xp = backend.get_array_module(a, b)
        return from_float32(xp, to_float32(xp, a) + to_float32(xp, b), bfloat16)
    return a + b
