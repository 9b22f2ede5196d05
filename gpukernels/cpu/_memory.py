"""Host memory settings for the numpy backend: keep freed activations for reuse.

Why
---
A training step allocates every activation afresh in the forward pass and frees it in
the backward pass, so each step asks the allocator for the same few hundred MiB again.
With glibc's defaults that memory goes back to the kernel and returns as new pages:
arrays above malloc's mmap threshold (128 KiB, raised dynamically to at most 32 MiB)
are fresh ``mmap`` regions, unmapped on free, and the top of the heap is trimmed
(``brk``) once 2x that threshold is free there; each new page is then faulted in and
zeroed again.

Measured on the 2-core dev VM, a ResNet-8 batch-128 step: 19.5k page faults and
~90-110 ms of kernel (system) time per step of ~270 ms. With malloc's mmap threshold
fixed at MMAP_THRESHOLD_BYTES and its trim threshold at TRIM_THRESHOLD_BYTES: ~2 faults
and 3-10 ms of system time per step, the step ~150-195 ms (the same heap blocks are
reused). A trim threshold of 64 MiB was not enough (33k faults a step). NumPy's
huge-page advice for arrays of 4 MiB and more is left on: turning it off changed the
step by less than the noise and made fresh arrays beyond 32 MiB (still mmapped) 3x
slower to fill (np.maximum over 16M float32: 16 -> 40-54 ms). PyTorch's CPU guides
reach the same end with jemalloc or tcmalloc preloaded; this does it in-process, with
nothing to install.

``apply`` runs once, on the numpy backend's first kernel call (``kernels.Family``), and
changes, process-wide, on glibc only: ``mallopt(M_MMAP_THRESHOLD, 32 MiB)`` (glibc's
largest) and ``mallopt(M_TRIM_THRESHOLD, 256 MiB)``, each unless ``MALLOC_MMAP_THRESHOLD_``
/ ``MALLOC_TRIM_THRESHOLD_`` or a ``glibc.malloc`` tunable in ``GLIBC_TUNABLES`` already
chose. Cost: up to 256 MiB of freed memory stays with the process (what the next step
reuses). ``GPUKERNELS_CPU_MALLOC=default`` leaves malloc as it is.
"""

from __future__ import annotations

import ctypes
import os
import sys

#: glibc's ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Arrays up to this size come from malloc's heap instead of fresh mmaps (glibc's maximum).
MMAP_THRESHOLD_BYTES = 32 << 20
#: Free memory at the heap's top kept for reuse instead of returned to the kernel.
TRIM_THRESHOLD_BYTES = 256 << 20

_state = {"applied": None}  # None: not yet; else what apply() did


def _glibc():
    """glibc's libc, or None (musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only
        return libc
    except (OSError, AttributeError):
        return None


def apply() -> dict:
    """The settings above, once per process; returns what was set (``{}`` when nothing,
    e.g. under ``GPUKERNELS_CPU_MALLOC=default`` or off glibc)."""
    if _state["applied"] is not None:
        return _state["applied"]
    done = {}
    env = os.environ
    libc = None if env.get("GPUKERNELS_CPU_MALLOC", "").strip().lower() == "default" else _glibc()
    if libc is not None and "glibc.malloc" not in env.get("GLIBC_TUNABLES", ""):
        if "MALLOC_MMAP_THRESHOLD_" not in env and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1:
            done["mmap_threshold"] = MMAP_THRESHOLD_BYTES
        if "MALLOC_TRIM_THRESHOLD_" not in env and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1:
            done["trim_threshold"] = TRIM_THRESHOLD_BYTES
    _state["applied"] = done
    return done
