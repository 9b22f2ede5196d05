"""Compiled loops for the numpy backend's memory-bound passes, through numba (optional).

Why
---
NumPy runs one operation per pass over an array, and has no fused multiply-add, so a
pass that does three things (batch norm's ``dx = a (g + k (x - mean) + k0)``) is three
or four passes, each a read and a write of a full-size operand (in L2-sized blocks
where the code can arrange it, ``batchnorm``'s module docstring). A compiled loop does
the whole formula per element in one read of its inputs and one write. numba (with
llvmlite) is the standard tool for such loops in Python: the kernels are ordinary
Python functions over NumPy arrays, compiled on first use and cached on disk
(``cache=True``: ``__pycache__`` beside the module, or numba's user cache directory when
that is not writable).

Users: batch norm's passes (``batchnorm``), winograd's transforms
(``_conv_winograd``) and the 2x2 / 2 max pool (``pool``). Measured on the 2-core dev VM
(float32, two threads): batch norm training forward + backward 1.8-2.5x faster than its
NumPy passes and 1.4-2.0x faster than PyTorch 2.13's CPU kernels; winograd convs
fwd+bwd 1.8-2.1x faster, so that they take over from 32 channels; the max pool forward
2.2x, forward + backward 1.4x (the modules' docstrings have the figures).

Threads: the kernels are compiled ``nogil`` and run on ``_parallel``'s threads, one
piece each, exactly as the NumPy passes they replace. numba's own parallel layer
(``parallel=True``) is not used: its OpenMP workers spin after a region, on the core
the next conv's second thread needs (a ResNet-8 step 149 -> 208 ms, median of 20).

When
----
``enabled()``: numba imports (it is the ``cpu`` extra; the GPU machine has none), the
environment does not say ``GPUKERNELS_CPU_JIT=0``, and the knob ``cpu_jit`` (tests)
is not ``"off"``. Otherwise every caller runs its NumPy code, which stays the
documented, tested fallback. A first call compiles its kernel (~0.3 s each; ~0.1 s
to load one from the cache in a later process).
"""

from __future__ import annotations

import importlib
import os

from .. import knobs

_state = {"module": None, "error": None}


def _env_off() -> bool:
    return os.environ.get("GPUKERNELS_CPU_JIT", "").strip().lower() in ("0", "off", "false", "no")


def kernels():
    """The compiled kernels module (``_jit_kernels``), or None when numba is missing,
    fails to import, or is turned off (see the module docstring)."""
    if knobs.get("cpu_jit") == "off" or _env_off():
        return None
    if _state["module"] is None and _state["error"] is None:
        try:
            _state["module"] = importlib.import_module("gpukernels.cpu._jit_kernels")
        except Exception as e:  # noqa: BLE001 - missing, or a numba/NumPy mismatch: NumPy it is
            _state["error"] = f"{type(e).__name__}: {e}"
    return _state["module"]


def enabled() -> bool:
    """Whether the compiled kernels serve the calls that can use them."""
    return kernels() is not None


def why_not() -> str | None:
    """Why the compiled kernels are not used (None when they are)."""
    if knobs.get("cpu_jit") == "off":
        return "knob cpu_jit='off'"
    if _env_off():
        return "GPUKERNELS_CPU_JIT=0"
    return None if kernels() is not None else f"numba unavailable ({_state['error']})"
