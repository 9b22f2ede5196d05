"""Optimizer updates in Triton: SGD (momentum, dampening, Nesterov, weight decay),
Adagrad, RMSprop (momentum, centered), Adam / AdamW (AMSGrad, maximize), each ONE
kernel over a flat buffer, plus the global gradient norm for clipping. This file holds
their configs and launchers; the jit kernels are in ``optim_kernels.py``.

The reference (the oracle every kernel is tested against) is
``gpukernels.cpu.optim``: the same function names and arguments. The optimizers
(``gpukernels.optim``) call these with the flat parameter / gradient / state buffers
of a param group (``gpukernels.optim.flat``), so a step is one launch whatever the
number of parameter tensors.

Per element, with ``g' = ±g * c`` (``c`` the clipping coefficient, 1 without clipping):

    SGD      g' += wd p;  b = g' (first step) | momentum b + (1 - dampening) g';
             d = g' + momentum b (Nesterov) | b;  p -= lr d
    Adagrad  g' += wd p;  s += g'^2;  p -= clr g' / (sqrt(s) + eps),
             clr = lr / (1 + (step - 1) lr_decay)
    RMSprop  g' += wd p;  v = alpha v + (1 - alpha) g'^2;  centered: m = lerp(m, g', 1 - alpha),
             a = sqrt(v - m^2) + eps, else a = sqrt(v) + eps;  momentum: b = momentum b + g'/a,
             p -= lr b;  else p -= lr g' / a
    Adam     g' += wd p (L2) | p *= 1 - lr wd (AdamW);  m = lerp(m, g', 1 - beta1);
             v = beta2 v + (1 - beta2) g'^2;  AMSGrad: v_max = max(v_max, v) replaces v;
             p -= (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps),  bc_i = 1 - beta_i^step

in the order of torch's single-tensor implementations (``lerp`` in its two-branch
form). Step-dependent scalars (``lr / bc1``, ``sqrt(bc2)``, ``clr``) are computed on the
host as Python floats, once per launch, from an int ``step``; or, when ``step`` is a
device array of counts (the optimizers' ``capturable=True``, so that a CUDA graph can
record the step: a graph bakes every kernel argument), on the device:

- ``_step_kernel`` (ONE program, launched just before the update) advances the counts
  (``step += 1``) and writes the new count's scalars, in float64, to a 2-element
  device array that the update kernel loads (``DEVICE_STEP``) instead of taking them
  as arguments. Cost: one extra launch per update (launch latency: a few
  microseconds eager, about one replayed in a graph; estimates, not measured here),
  whose work is a handful of float64 operations plus one read-modify-write per step
  count, and two scalar float64 loads per update program (L2 hits). Fusing the
  advance into the update kernel would save that launch but needs a grid-wide ticket
  (every program must read the old count before one of them writes the new one): an
  atomic per program and a second reset-counter protocol, for a microsecond.
- ``beta^step`` is ``exp2(step * log2(beta))`` in float64 (``log2(beta)`` from the
  host: it does not depend on the step): within ~1e-16 of the host's ``beta**step``,
  so float32 updates round to the same values as with an int step.

Memory traffic per parameter (the minimum, which is what the kernels move: p and each
state array read once and written once, 4 bytes each in float32, g read once in its own
dtype, G bytes): SGD 8 + G, with momentum 16 + G (12 + G on the first step, which does
not read the buffer); Adagrad 16 + G; RMSprop 16 + G, +8 per centered / momentum
buffer; Adam 24 + G = 28 bytes for float32 gradients (AMSGrad +8). The clipping norm
reads g once more (G bytes); its coefficient is a device scalar each program loads once.

Numerics: every kernel loads p, g and the state in their storage dtype (bf16 travels as
uint16 bit patterns, see ``_common.py``) and computes in float32, or float64 for float64
parameters: float32 master weights with bf16 / fp16 gradients read the gradient in its
own dtype, no conversion pass. Float hyper-parameters arrive as float64 kernel
arguments (annotated) and are rounded once in the kernel to the compute dtype: float64
parameters get the host's exact doubles, float32 ones the single rounding torch applies
to a Python scalar.

Known traps avoided:
- Triton's ``/`` and ``tl.sqrt`` on float32 are approximate on NVIDIA GPUs
  (``div.full.f32``, ``sqrt.approx.ftz.f32``: checked in the PTX); the float32 kernels
  use ``tl.div_rn`` / ``tl.sqrt_rn`` (IEEE, as torch), so updates agree with torch to
  rounding, not to 2 ulp;
- the updates are in place, so they are never autotuned (the autotuner re-runs a
  kernel to time it: it would apply the update several times). ``DEFAULT_CONFIG`` is
  fixed; ``GPU_CONFIGS`` are compiled ahead of time (``aot_specs``), forced in turn by
  the gpu tests and timed by ``benchmarks/bench_optim.run_gpu``;
- parameters without a gradient are skipped inside the one launch: ``segments`` become a
  table of (start, stop) chunks of at most ``TABLE_BLOCK`` elements, one program per
  chunk (``FIXED_CONFIG``), cached on the device per distinct segment set (a
  host-to-device copy the first time a set is seen, none after). The flat buffers'
  bounds are multiples of 16 elements and the kernel is told so (``tl.multiple_of``),
  so the masked accesses stay vectorised;
- the global norm is deterministic: each program of the reduction writes its partial
  sum of squares, and the last program to finish (a ticket from an atomic counter, the
  only atomic) adds the partials in a fixed order and writes ``[norm, coef]``; no float
  atomics, no host synchronisation; the counter is reset by that program;
- offsets are int32 unless a buffer has 2**31 elements or more (``INT64``, launched
  with ``FIXED_CONFIG``: 64-bit addresses take registers, 2048-element blocks spilled);
- NaN propagates as in torch: ``max`` (AMSGrad) keeps NaN, a NaN norm gives a NaN
  coefficient (``torch.clamp(max=1)`` keeps NaN).

``LAUNCHES`` counts the kernel launches of this module (the tests count one per step,
two with a step array).
"""

from __future__ import annotations

import math

import numpy as np
import triton
import triton.language as tl

from .. import backend, cuda_graph
from ..backend import kernel_arg
from ..host_rules import check_norm_args, check_step, is_step_array, norm_dtype
from ._common import Tuned, arg, dtype_name, needs_int64
from .optim_kernels import _adagrad_kernel, _adam_kernel, _rmsprop_kernel, _sgd_kernel, _step_kernel, _sumsq_kernel

#: Kernel launches made by this module since import (tests read the difference).
LAUNCHES = 0

# ----------------------------------------------------------------------------- configs

#: Elements per chunk of a segment table (and per program when one is used).
TABLE_BLOCK = 1024
#: Elements per loop step of the norm reduction; programs it uses at most.
REDUCE_BLOCK = 1024
MAX_REDUCE_PROGRAMS = 1024
_INTERPRET_REDUCE_PROGRAMS = 3  # few programs under the interpreter, still more than one

#: (BLOCK, num_warps, num_stages) of the update kernels: the one used on a GPU (in-place
#: kernels are not autotuned), the candidates the gpu tests force and the benchmark
#: times, and the interpreter's (few, big programs).
DEFAULT_CONFIG = (2048, 8, 1)
GPU_CONFIGS = [(1024, 4, 1), (2048, 4, 1), (2048, 8, 1), (4096, 8, 1)]
INTERPRET_CONFIG = (4096, 4, 1)
#: The config of launches over a segment table (its chunks are TABLE_BLOCK long) and of
#: INT64 launches (64-bit addresses take registers: a smaller block per program).
FIXED_CONFIG = (TABLE_BLOCK, 4, 1)
#: Counts per loop step of ``_step_kernel`` (one program of 4 warps).
STEP_BLOCK = 256
_STEP_ADAM, _STEP_ADAGRAD = 0, 1

_FLOATS = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.uint16), np.dtype(np.float64))
_SCALE_NONE, _SCALE_VALUE, _SCALE_POINTER = 0, 1, 2

_KERNELS = {
    name: Tuned(kernel, ("BLOCK",), [DEFAULT_CONFIG], key=["n"], interpret=INTERPRET_CONFIG)
    for name, kernel in (("sgd", _sgd_kernel), ("adagrad", _adagrad_kernel),
                         ("rmsprop", _rmsprop_kernel), ("adam", _adam_kernel))
}


# ----------------------------------------------------------------------------- launchers


def _check_update(op, p, g, states):
    """Dtypes, shapes, layout and device of an update's arrays; raises naming the one."""
    for name, a in (("p", p), ("g", g)):
        if a.dtype not in _FLOATS:
            raise TypeError(f"{op} (Triton): {name} must be float32, float16, bfloat16 (as uint16) "
                            f"or float64, got {a.dtype}")
    if tuple(g.shape) != tuple(p.shape):
        raise ValueError(f"{op}: g has shape {tuple(g.shape)}, p has shape {tuple(p.shape)}")
    for name, s in states.items():
        if s is None:
            continue
        if tuple(s.shape) != tuple(p.shape) or s.dtype != p.dtype:
            raise ValueError(f"{op}: {name} must have p's shape {tuple(p.shape)} and dtype "
                             f"{dtype_name(p.dtype)}, got {tuple(s.shape)} {dtype_name(s.dtype)}")
    arrays = {"p": p, "g": g, **{k: v for k, v in states.items() if v is not None}}
    for name, a in arrays.items():
        if not a.flags.c_contiguous:
            raise ValueError(f"{op} (Triton): {name} must be C-contiguous (a flat buffer), got "
                             f"strides {a.strides} for shape {tuple(a.shape)}")
    devices = {backend.device_of(a) for a in arrays.values()}
    if len(devices) > 1:
        raise RuntimeError(f"{op}: expected arrays on one device, got {sorted(devices)}")


def _required(op, name, a, why):
    if a is None:
        raise ValueError(f"{op}: {name} is required with {why}, got None")
    return a


# segment tables on the device, per (device, int64, segments): built once per distinct set
_TABLES: dict = {}
_MAX_TABLES = 64


def _aligned(segments) -> bool:
    """Every bound a multiple of 16 elements (then so is every chunk bound)."""
    return all(int(a) % 16 == 0 and int(b) % 16 == 0 for a, b in segments)


def _table(segments, size, device, int64):
    """The (start, stop) chunk table of ``segments`` (chunks of <= TABLE_BLOCK elements)
    as a flat int32 (int64) array on ``device``."""
    pairs = tuple((int(a), int(b)) for a, b in segments)
    for a, b in pairs:
        if not 0 <= a <= b <= size:
            raise ValueError(f"segments: ({a}, {b}) is not a range inside the {size} elements")
    key = (device, int64, pairs)
    table = _TABLES.get(key)
    if table is None:  # chunk bounds are multiples of 16 when the segments' are (TABLE_BLOCK is)
        starts = [np.arange(a, b, TABLE_BLOCK, dtype=np.int64) for a, b in pairs]
        stops = [np.minimum(s + TABLE_BLOCK, b) for s, (_, b) in zip(starts, pairs)]
        host = np.stack([np.concatenate(starts or [np.zeros(0, np.int64)]),
                         np.concatenate(stops or [np.zeros(0, np.int64)])], axis=1)
        table = backend.xp_for_device(device).asarray(
            np.ascontiguousarray(host.reshape(-1), dtype=np.int64 if int64 else np.int32))
        if len(_TABLES) >= _MAX_TABLES:
            _TABLES.pop(next(iter(_TABLES)))
        _TABLES[key] = table
    return table


def _scale_args(op, p, grad_scale):
    """(SCALE mode, scale pointer, host value) for ``grad_scale``."""
    if grad_scale is None:
        return _SCALE_NONE, arg(p), 1.0
    if hasattr(grad_scale, "shape"):
        if grad_scale.size != 1 or grad_scale.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"{op}: grad_scale must be one float32/float64 element, got shape "
                             f"{tuple(grad_scale.shape)} {grad_scale.dtype}")
        if backend.device_of(grad_scale) != backend.device_of(p):
            raise RuntimeError(f"{op}: grad_scale is on {backend.device_of(grad_scale)}, p on "
                               f"{backend.device_of(p)}")
        return _SCALE_POINTER, kernel_arg(grad_scale.reshape(1)), 1.0
    return _SCALE_VALUE, arg(p), float(grad_scale)


# per device: the float64 scalars _step_kernel writes for the next update (stream order
# makes one buffer enough: each update reads it before the next advance writes it)
_HYPER: dict = {}
# step index tables per (device, indices); never freed: a captured graph keeps their address
_STEP_INDEX: dict = {}


def _hyper(op, device):
    hyper = _HYPER.get(device)
    if hyper is None:
        if cuda_graph.capturing():  # it would come from the graph's memory pool, and outlive it
            raise RuntimeError(f"{op}: the first update with device step counts on {device} cannot be "
                               "recorded in a CUDA graph; run an eager step before capture")
        hyper = _HYPER[device] = backend.xp_for_device(device).zeros(2, dtype=np.float64)
    return hyper


def _device_step(op, p, step, step_index, mode, lr, a, b):
    """Launch ``_step_kernel``: advance the counts in ``step`` (those at ``step_index``)
    on the device and write the step-dependent scalars; returns the array holding them."""
    global LAUNCHES
    index = check_step(op, step, step_index, p)
    device = backend.device_of(p)
    xp = backend.xp_for_device(device)
    hyper = _hyper(op, device)
    counts = step.reshape(-1)
    if index is None:
        table, count = counts, counts.size
    else:
        key = (device, index)
        table = _STEP_INDEX.get(key)
        if table is None:
            if cuda_graph.capturing():  # a host-to-device copy: no place in a graph
                raise RuntimeError(
                    f"{op}: these step counts {index} are advanced together for the first time while a "
                    "CUDA graph is being recorded (their index table would be copied from the host); run "
                    "an eager step with the same parameters having gradients before capture")
            table = _STEP_INDEX[key] = xp.asarray(np.asarray(index, dtype=np.int32))
        count = len(index)
    _step_kernel[(1,)](kernel_arg(counts), kernel_arg(table), count, kernel_arg(hyper), float(lr), float(a),
                       float(b), MODE=mode, HAS_INDEX=index is not None, BLOCK=STEP_BLOCK,
                       num_warps=4, num_stages=1)
    LAUNCHES += 1
    return hyper


def _log2(beta):
    """log2(beta) for ``beta^s = exp2(s log2 beta)``; -inf for beta = 0 (beta^s = 0, s >= 1)."""
    return math.log2(beta) if beta > 0 else float("-inf")


def _update(op, name, p, g, states, scalars, flags, grad_scale, segments, device_step=None):
    """One launch of update kernel ``name`` over ``p`` (only ``segments`` when given),
    after one of ``_step_kernel`` when ``device_step`` (its arguments after ``op, p``)
    is given: the counts advance even when there is nothing to update, as the host's do."""
    global LAUNCHES
    _check_update(op, p, g, states)
    extra = {}
    if name in ("adam", "adagrad"):
        # without a step array the pointer is not read (p, as the unused scale_ptr)
        hyper = _device_step(op, p, *device_step) if device_step is not None else None
        extra = dict(hyper_ptr=kernel_arg(hyper) if hyper is not None else arg(p), DEVICE_STEP=hyper is not None)
    if p.size == 0:
        return
    int64 = needs_int64(p)
    mode, scale_ptr, gscale = _scale_args(op, p, grad_scale)
    pointers = [arg(p), arg(g)] + [arg(s) if s is not None else arg(p) for s in states.values()]
    consts = dict(flags, SCALE=mode, INT64=int64, CDT=tl.float64 if p.dtype == np.float64 else tl.float32,
                  **extra)
    tuned = _KERNELS[name]
    block, warps, stages = FIXED_CONFIG
    if segments is None and not int64:
        def grid(meta):
            return (triton.cdiv(p.size, meta["BLOCK"]),)

        tuned[grid](*pointers, arg(p), scale_ptr, n=p.size, **scalars, gscale=gscale, HAS_TABLE=0, **consts)
    elif segments is None:  # INT64: 64-bit addresses need registers, so a smaller block
        tuned.kernel[(triton.cdiv(p.size, block),)](
            *pointers, arg(p), scale_ptr, n=p.size, **scalars, gscale=gscale, HAS_TABLE=0,
            BLOCK=block, num_warps=warps, num_stages=stages, **consts)
    else:
        table = _table(segments, p.size, backend.device_of(p), int64)
        chunks = table.size // 2
        if chunks == 0:
            return
        # one program per table chunk, whose length is TABLE_BLOCK: the block size is fixed
        tuned.kernel[(chunks,)](
            *pointers, kernel_arg(table), scale_ptr, n=chunks, **scalars, gscale=gscale,
            HAS_TABLE=2 if _aligned(segments) else 1, BLOCK=block, num_warps=warps, num_stages=stages, **consts)
    LAUNCHES += 1


def sgd_update(p, g, momentum_buffer, *, lr, momentum=0.0, dampening=0.0,
               weight_decay=0.0, nesterov=False, maximize=False, first_step=False,
               grad_scale=None, segments=None):
    """SGD as ``gpukernels.cpu.optim.sgd_update``, one launch.

    ``g' = ±g c + wd p``;  with momentum: ``b = g'`` (first step) or
    ``momentum b + (1 - dampening) g'``;  ``p -= lr (g' + momentum b | b | g')``.

    Args: as the reference (arrays C-contiguous, on one device; ``p`` and the buffer
    float32, float16, bf16-as-uint16 or float64, ``g`` any of those).
    """
    buf = _required("sgd_update", "momentum_buffer", momentum_buffer, "momentum != 0") if momentum != 0 else None
    _update("sgd_update", "sgd", p, g, {"momentum_buffer": buf},
            dict(lr=lr, momentum=momentum, one_minus_dampening=1 - dampening, weight_decay=weight_decay),
            dict(MOMENTUM=momentum != 0, NESTEROV=bool(nesterov), FIRST=bool(first_step),
                 WEIGHT_DECAY=weight_decay != 0, MAXIMIZE=bool(maximize)),
            grad_scale, segments)


def adagrad_update(p, g, state_sum, *, step, lr, lr_decay=0.0, weight_decay=0.0,
                   eps=1e-10, maximize=False, grad_scale=None, segments=None, step_index=None):
    """Adagrad as ``gpukernels.cpu.optim.adagrad_update``, one launch (two with a
    step array: ``_step_kernel`` first).

    ``g' = ±g c + wd p``;  ``s += g'^2``;  ``p -= clr g' / (sqrt(s) + eps)`` with
    ``clr = lr / (1 + (step - 1) lr_decay)`` computed here on the host from an int
    ``step``, or on the device from a step array (advanced there first).

    Args: as the reference (arrays C-contiguous, on one device; a step array float32
    or int32).
    """
    op = "adagrad_update"
    device = is_step_array(step)
    _update(op, "adagrad", p, g, {"state_sum": _required(op, "state_sum", state_sum, "Adagrad")},
            dict(clr=lr if device else lr / (1 + (step - 1) * lr_decay), weight_decay=weight_decay, eps=eps),
            dict(WEIGHT_DECAY=weight_decay != 0, MAXIMIZE=bool(maximize)),
            grad_scale, segments,
            (step, step_index, _STEP_ADAGRAD, lr, lr_decay, 0.0) if device else None)


def rmsprop_update(p, g, square_avg, grad_avg, momentum_buffer, *, lr, alpha=0.99,
                   eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                   maximize=False, grad_scale=None, segments=None):
    """RMSprop as ``gpukernels.cpu.optim.rmsprop_update``, one launch.

    ``g' = ±g c + wd p``;  ``v = alpha v + (1 - alpha) g'^2``;  centered:
    ``m = lerp(m, g', 1 - alpha)``, ``a = sqrt(v - m^2) + eps``, else ``sqrt(v) + eps``;
    momentum: ``b = momentum b + g'/a``, ``p -= lr b``; else ``p -= lr g'/a``.

    Args: as the reference (arrays C-contiguous, on one device).
    """
    op = "rmsprop_update"
    states = {"square_avg": _required(op, "square_avg", square_avg, "RMSprop"),
              "grad_avg": _required(op, "grad_avg", grad_avg, "centered=True") if centered else None,
              "momentum_buffer": _required(op, "momentum_buffer", momentum_buffer, "momentum > 0")
              if momentum > 0 else None}
    _update(op, "rmsprop", p, g, states,
            dict(lr=lr, alpha=alpha, one_minus_alpha=1 - alpha, eps=eps, weight_decay=weight_decay,
                 momentum=momentum),
            dict(CENTERED=bool(centered), MOMENTUM=momentum > 0, WEIGHT_DECAY=weight_decay != 0,
                 MAXIMIZE=bool(maximize)),
            grad_scale, segments)


def adam_update(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, *, step, lr, beta1=0.9,
                beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False, amsgrad=False,
                maximize=False, grad_scale=None, segments=None, step_index=None):
    """Adam / AdamW as ``gpukernels.cpu.optim.adam_update``, one launch (two with
    a step array: ``_step_kernel`` first).

    ``g' = ±g c`` (+ ``wd p``, or ``p *= 1 - lr wd`` when decoupled);
    ``m = lerp(m, g', 1 - beta1)``;  ``v = beta2 v + (1 - beta2) g'^2`` (AMSGrad:
    ``v_max = max(v_max, v)``);  ``p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)``,
    ``bc_i = 1 - beta_i^step`` computed here on the host from an int ``step``, or on
    the device from a step array (advanced there first: capturable).

    Args: as the reference (arrays C-contiguous, on one device; a step array float32
    or int32).
    """
    op = "adam_update"
    states = {"exp_avg": _required(op, "exp_avg", exp_avg, "Adam"),
              "exp_avg_sq": _required(op, "exp_avg_sq", exp_avg_sq, "Adam"),
              "max_exp_avg_sq": _required(op, "max_exp_avg_sq", max_exp_avg_sq, "amsgrad=True")
              if amsgrad else None}
    device = is_step_array(step)
    _update(op, "adam", p, g, states,
            dict(step_size=lr if device else lr / (1 - beta1**step), one_minus_beta1=1 - beta1, beta2=beta2,
                 one_minus_beta2=1 - beta2, eps=eps, weight_decay=weight_decay,
                 decay=1 - lr * weight_decay,
                 bias_correction2_sqrt=1.0 if device else (1 - beta2**step) ** 0.5),
            dict(AMSGRAD=bool(amsgrad), DECOUPLED=bool(decoupled), WEIGHT_DECAY=weight_decay != 0,
                 MAXIMIZE=bool(maximize)),
            grad_scale, segments,
            (step, step_index, _STEP_ADAM, lr, _log2(beta1), _log2(beta2)) if device else None)


# reduction workspace per (device, dtype): partial sums and the ticket counter
_WORKSPACES: dict = {}


def _workspace(device, dtype, programs):
    key = (device, np.dtype(dtype))
    space = _WORKSPACES.get(key)
    if space is None or space[0].size < programs:
        xp = backend.xp_for_device(device)
        space = (xp.zeros(max(programs, MAX_REDUCE_PROGRAMS), dtype=dtype), xp.zeros(1, dtype=np.int32))
        _WORKSPACES[key] = space
    return space


def clip_coefficient(grads, max_norm, *, segments=None):
    """The global gradient norm and clipping coefficient, as
    ``gpukernels.cpu.optim.clip_coefficient``: one reduction launch per gradient
    array (one for an optimizer's single flat buffer), no host synchronisation.

    ``norm = sqrt(sum g^2)`` over every array (its segments only, when given);
    ``coef = min(1, max_norm / (norm + 1e-6))``. Sums in float32 (float64 when a
    gradient is float64); deterministic: partial sums added in a fixed order.

    Args:
        grads: non-empty list of C-contiguous gradient arrays on one device.
        max_norm: a float > 0.
        segments: ``None`` or, per array, ``None`` or ``(start, stop)`` ranges.

    Returns:
        ``[norm, coef]``, a two-element array on the gradients' device.
    """
    global LAUNCHES
    grads, segments = check_norm_args(grads, max_norm, segments)
    for i, g in enumerate(grads):
        if g.dtype not in _FLOATS:
            raise TypeError(f"clip_coefficient (Triton): grads[{i}] must be float32, float16, bfloat16 "
                            f"(as uint16) or float64, got {g.dtype}")
        if not g.flags.c_contiguous:
            raise ValueError(f"clip_coefficient (Triton): grads[{i}] must be C-contiguous, got strides "
                             f"{g.strides} for shape {tuple(g.shape)}")
    devices = {backend.device_of(g) for g in grads}
    if len(devices) > 1:
        raise RuntimeError(f"clip_coefficient: expected gradients on one device, got {sorted(devices)}")
    device = devices.pop()
    dtype = norm_dtype(grads)
    cap = _INTERPRET_REDUCE_PROGRAMS if backend.interpreting() else MAX_REDUCE_PROGRAMS
    plan = []
    for g, seg in zip(grads, segments):
        int64 = needs_int64(g)
        if seg is None:
            table, items, chunks = None, g.size, triton.cdiv(g.size, REDUCE_BLOCK)
        else:
            table = _table(seg, g.size, device, int64)
            items = chunks = table.size // 2
        if chunks:
            plan.append((g, table, seg, items, min(chunks, cap), int64))
    out = backend.xp_for_device(device).empty(2, dtype=dtype)
    total = sum(programs for *_, programs, _ in plan)
    if total == 0:  # nothing to sum: norm 0, coefficient 1 (device fills, no copy)
        out.fill(1.0)
        out[:1].fill(0.0)
        return out
    partials, counter = _workspace(device, dtype, total)
    first = 0
    for g, table, seg, items, programs, int64 in plan:
        _sumsq_kernel[(programs,)](
            arg(g), kernel_arg(table) if table is not None else arg(g), items, kernel_arg(partials),
            kernel_arg(counter), kernel_arg(out), first, total, float(max_norm),
            HAS_TABLE=0 if table is None else 2 if _aligned(seg) else 1, INT64=int64,
            CDT=tl.float64 if dtype == np.float64 else tl.float32,
            BLOCK=REDUCE_BLOCK, FINAL_BLOCK=1024, num_warps=4, num_stages=1,
        )
        LAUNCHES += 1
        first += programs
    return out
