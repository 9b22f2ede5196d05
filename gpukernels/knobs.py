"""Knobs for tests and benchmarks: every switch that changes which code path or tile
config runs, in one place, set through one context manager. A leaf module.

    from gpukernels import knobs

    with knobs.override(split_k=5):                  # Triton conv/linear grad-W split-K
        ...
    with knobs.override(configs={tuned: cfg}):       # pin one Triton kernel's config
        ...

========================  =========  ===============================================
knob                      default    what it does
========================  =========  ===============================================
``conv_cpu_path``         ``None``   the CPU conv's layout path: ``"nhwc"``, ``"flat"``
                                     (stride-1 only), ``"batch_inner"``,
                                     ``"generic"``, ``"pointwise"`` (1x1, groups 1,
                                     no padding only) or ``"winograd"`` (3x3,
                                     stride 1, dilation 1, groups 1, float32/64
                                     only); a path that cannot serve a call
                                     falls back to generic; None lets
                                     ``cpu.conv`` choose
``cpu_threads``           ``None``   the CPU kernels' threads (``cpu/_parallel``):
                                     ``"serial"`` keeps every call on the calling
                                     thread, ``"forced"`` hands every call to two
                                     threads in pieces as small as the array allows
                                     (conv at any size); None: the size thresholds
``cpu_jit``               ``None``   ``"off"``: the CPU kernels run their NumPy code
                                     even where numba's compiled loops could serve
                                     (``cpu/_jit``); None: compiled where numba is
                                     installed
``split_k``               ``None``   grad-W split-K count of the Triton conv and linear
                                     under the interpreter (on a GPU the policy picks);
                                     None: one split
``check_targets``         ``True``   cross-entropy (Triton) reads its out-of-range-target
                                     flag back (one host sync) and raises; False writes
                                     NaN rows instead
``configs``               ``{}``     ``{Tuned: config}``: those kernels launch with that
                                     config instead of autotuning (the gpu tests run
                                     every config this way)
========================  =========  ===============================================

Values are process-wide (not per thread), like the module globals they replace; nested
``override`` calls restore what was there before, on any exit.
"""

from __future__ import annotations

import contextlib

_DEFAULTS = {"conv_cpu_path": None, "cpu_threads": None, "cpu_jit": None, "split_k": None, "check_targets": True,
             "configs": {}}
_values = dict(_DEFAULTS)
_values["configs"] = {}

_CONV_PATHS = (None, "nhwc", "flat", "batch_inner", "generic", "pointwise", "winograd")


def get(name: str):
    """The current value of knob ``name``."""
    return _values[name]


def _check(name, value):
    if name not in _DEFAULTS:
        raise KeyError(f"knobs.override(): no knob {name!r}; the knobs are {sorted(_DEFAULTS)}")
    if name == "conv_cpu_path" and value not in _CONV_PATHS:
        raise ValueError(f"knobs.override(): conv_cpu_path must be one of {_CONV_PATHS}, got {value!r}")
    if name == "cpu_threads" and value not in (None, "serial", "forced"):
        raise ValueError(f"knobs.override(): cpu_threads must be None, 'serial' or 'forced', got {value!r}")
    if name == "cpu_jit" and value not in (None, "off"):
        raise ValueError(f"knobs.override(): cpu_jit must be None or 'off', got {value!r}")
    if name == "split_k" and value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f"knobs.override(): split_k must be None or an int >= 1, got {value!r}")
    if name == "check_targets" and not isinstance(value, bool):
        raise TypeError(f"knobs.override(): check_targets must be a bool, got {value!r}")
    if name == "configs" and not isinstance(value, dict):
        raise TypeError(f"knobs.override(): configs must be a dict {{Tuned: config}}, got {value!r}")


@contextlib.contextmanager
def override(**values):
    """Set knobs for the ``with`` block. ``configs`` is merged into the pinned configs
    (a value of None unpins that kernel); the others replace the knob's value."""
    for name, value in values.items():
        _check(name, value)
    saved = {name: _values[name] for name in values}
    try:
        for name, value in values.items():
            if name == "configs":
                merged = {**_values["configs"], **value}
                value = {k: v for k, v in merged.items() if v is not None}
            _values[name] = value
        yield
    finally:
        _values.update(saved)
