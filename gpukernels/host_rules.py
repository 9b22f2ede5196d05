"""Host-side rules that more than one kernel package runs, so each has one owner: a leaf
module (NumPy and ``gpukernels.backend`` only), which the backends (``reference/``,
``cpu/``, ``triton/``) import instead of reaching into each other.

- the optimizers' step counts: ``is_step_array``, ``STEP_DTYPES``, ``check_step`` (a
  device array of counts, ``capturable=True``, instead of a host int);
- global-norm clipping's arguments: ``check_norm_args``, ``norm_dtype``;
- ``activate_``: a fused activation applied on the host to an output no kernel computes
  (a convolution with no input values, whose output is its bias alone), written as the
  NumPy convolution applies it to its tiles (in place, no mask array).
"""

from __future__ import annotations

import numpy as np

from .backend import device_of, get_array_module

# ----------------------------------------------------------------------------- optimizer steps


def is_step_array(step) -> bool:
    """``step`` is a device count (capturable) rather than a host int."""
    return hasattr(step, "shape") and hasattr(step, "dtype")


STEP_DTYPES = (np.dtype(np.float32), np.dtype(np.int32))


def check_step(op, step, step_index, p):
    """Validate a step-count array (and ``step_index``) for ``p``'s update; returns the
    indices as a tuple of ints, or ``None`` (every element)."""
    if step.dtype not in STEP_DTYPES:
        raise TypeError(f"{op}: step must be a float32 or int32 array of step counts, got {step.dtype}")
    if step.size == 0 or not step.flags.c_contiguous:
        raise ValueError(f"{op}: step must be a non-empty C-contiguous array, got shape {tuple(step.shape)} "
                         f"strides {step.strides}")
    if device_of(step) != device_of(p):
        raise RuntimeError(f"{op}: step is on {device_of(step)}, p on {device_of(p)}")
    if step_index is None:
        return None
    index = tuple(int(i) for i in step_index)
    if not index or not all(0 <= i < step.size for i in index):
        raise ValueError(f"{op}: step_index must hold indices into the {step.size} step counts, got {index}")
    return index


# ----------------------------------------------------------------------------- gradient clipping


def norm_dtype(grads) -> np.dtype:
    """The dtype a global gradient norm is computed in: float64 when a gradient is
    float64, else float32 (float16 / bf16 gradients are summed in float32)."""
    return np.dtype(np.float64 if any(g.dtype == np.float64 for g in grads) else np.float32)


def check_norm_args(grads, max_norm, segments):
    """``clip_coefficient``'s arguments checked: the gradients as a non-empty list and
    one segments entry per gradient."""
    grads = list(grads)
    if not grads:
        raise ValueError("clip_coefficient: grads must hold at least one array, got none")
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or not max_norm > 0:
        raise ValueError(f"clip_coefficient: max_norm must be a number > 0, got {max_norm!r}")
    segments = [None] * len(grads) if segments is None else list(segments)
    if len(segments) != len(grads):
        raise ValueError(f"clip_coefficient: segments must have one entry per gradient "
                         f"({len(grads)}), got {len(segments)}")
    return grads, segments


# ----------------------------------------------------------------------------- activation


def activate_(xp, y, activation, slope):
    """In place: ``activation`` (None, ``"relu"`` or ``"leaky_relu"`` with ``slope`` >= 0)
    of ``y``; returns ``y``. leaky_relu is ``max(y, slope y)`` (``min`` for slope > 1),
    one temporary and no mask."""
    if activation == "relu":
        xp.maximum(y, 0, out=y)
    elif activation == "leaky_relu" and slope != 1:
        scaled = y * slope
        (xp.maximum if slope < 1 else xp.minimum)(y, scaled, out=y)
    return y


def advance_step(op, step, step_index, p):
    """``step += 1`` in place on the device (only the elements at ``step_index`` when
    given); returns the new count of the first of them as a float64 0-d array on that
    device (the counts advanced together are equal: the optimizers launch together only
    parameters with equal counts)."""
    index = check_step(op, step, step_index, p)
    xp = get_array_module(step)
    flat = step.reshape(-1)
    if index is None:
        flat += 1
        first = 0
    else:
        flat[xp.asarray(index)] += 1
        first = index[0]
    return flat[first:first + 1].astype(np.float64).reshape(())
