"""Triton kernels and their launchers, one module per op family (same function names as
``gpukernels.cpu``). Imported lazily by ``backend.kernels`` under the ``cuda`` and
``interpret`` backends only: importing this package needs ``triton`` (and ``torch``,
whose CUDA stream Triton launches on)."""
