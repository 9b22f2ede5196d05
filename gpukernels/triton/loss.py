"""Mean squared error in Triton: the difference and the partial sums of its square in
one pass, a one-program reduction of the partials (no host synchronisation), and the
gradient in one more pass.

The reference (the oracle) is ``gpukernels.cpu.loss``: same functions, same
conventions. Formulas (float32 math; the forward rounds to the storage dtype where the reference
does, so its float16 diff and squares match the reference's bit for bit):

    diff[i] = input[i] - target[i]                       (stored: saved for the backward)
    'none':  loss[i] = diff[i]^2
    'sum':   loss = sum_i diff[i]^2                      (float32 accumulation)
    'mean':  loss = sum_i diff[i]^2 / n                  (NaN for n = 0, as NumPy)
    grad:    d loss / d input[i] = diff[i] * (g[i] * c)  c = 2 / n ('mean') or 2;
             g is a scalar for 'mean' / 'sum', elementwise for 'none'; the target's
             gradient is its negative (``functional.mse_loss``).
             All in float32, one rounding at the end. The reference rounds c and g * c
             to the dtype first (``dtype.type(2 / n)``): in float16, 2 / n is subnormal
             beyond n = 32768 and loses up to several % of the gradient; PyTorch keeps
             them in float32 as we do. For float32 the two are the same.

Kernels and memory traffic (itemsize b, n elements):

- ``_mse_fwd_kernel``: reads input and target (2 n b), writes diff (n b) and, for
  'none', the squares (n b); for 'mean' / 'sum' each program writes its float32 partial
  sum instead (n / PART floats, PART = 1024). Partials live on a fixed grid of PART
  elements whatever the tile: a program of BLOCK elements writes its sum in its first
  slot and 0 in its other BLOCK / PART - 1 slots, so every slot is written on every
  launch, and the autotuner's trial runs of other tile sizes can leave nothing stale.
- ``_mse_sum_kernel``: one program adds the n / PART partials in a fixed order
  (deterministic: no atomics) and writes the loss, a 0-d array, on the device: the
  launcher never waits for the GPU.
- ``_mse_bwd_kernel``: reads diff (and g for 'none'), writes the gradient (2 or 3 n b).

Flat over the buffers in BLOCK pieces, unmasked (vectorised) full pieces and a masked,
index-clamped tail, as ``activation`` (the flat-kernel helpers of ``_common``); dense
layouts (any axis order) run in place and the outputs keep them; other strides are
copied to C order first.
"""

from __future__ import annotations

import numbers

import numpy as np
import triton
import triton.language as tl

from ..backend import get_array_module, kernel_arg
from ._common import (
    FLAT_CONFIGS, FLAT_INTERPRET_CONFIG, arg, check_arrays, empty_in_order, flat_block, flat_inputs, flat_kernel,
    flat_operands, from_float32, launch_flat,
)

#: Elements per partial sum: the smallest BLOCK of every config (GPU and interpreter).
PART = 1024
#: Partials added per step of the one-program reduction.
SUM_BLOCK = 1024
SUM_WARPS = 4

_REDUCTIONS = ("mean", "sum", "none")


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _mse_fwd_kernel(a_ptr, t_ptr, diff_ptr, sq_ptr, part_ptr, n, num_parts,
                    REDUCE: tl.constexpr, INT64: tl.constexpr, BLOCK: tl.constexpr, PART: tl.constexpr):
    """diff = input - target; squares ('none') or per-PART partial sums of them."""
    start, offs = flat_block(INT64, BLOCK)
    if start + BLOCK <= n:  # a full block: unmasked, vectorised
        a = tl.load(a_ptr + offs).to(tl.float32)
        t = tl.load(t_ptr + offs).to(tl.float32)
        d = (a - t).to(diff_ptr.dtype.element_ty)
        tl.store(diff_ptr + offs, d)
        d = d.to(tl.float32)  # the stored (rounded) difference, as the reference squares it
        sq = d * d
        if not REDUCE:
            tl.store(sq_ptr + offs, sq.to(sq_ptr.dtype.element_ty))
    else:  # the tail: masked lanes load 0, so they add 0
        ok = offs < n
        offs = tl.where(ok, offs, 0)
        a = tl.load(a_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        t = tl.load(t_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        d = (a - t).to(diff_ptr.dtype.element_ty)
        tl.store(diff_ptr + offs, d, mask=ok)
        d = d.to(tl.float32)
        sq = d * d
        if not REDUCE:
            tl.store(sq_ptr + offs, sq.to(sq_ptr.dtype.element_ty), mask=ok)
    if REDUCE:
        total = tl.sum(sq, axis=0)
        slot = tl.arange(0, BLOCK // PART)
        first = start // PART
        tl.store(part_ptr + first + slot, tl.where(slot == 0, total, 0.0), mask=first + slot < num_parts)


@triton.jit
def _mse_sum_kernel(part_ptr, out_ptr, num_parts, divisor, BLOCK: tl.constexpr):
    """out = sum(partials) / divisor, by one program in a fixed order."""
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(0, num_parts, BLOCK):
        offs = i + tl.arange(0, BLOCK)
        ok = offs < num_parts
        acc += tl.load(part_ptr + tl.where(ok, offs, 0), mask=ok, other=0.0)
    total = tl.sum(acc, axis=0) / divisor
    tl.store(out_ptr, total.to(out_ptr.dtype.element_ty))


@triton.jit
def _mse_bwd_kernel(g_ptr, diff_ptr, dx_ptr, n, scale,
                    G_SCALAR: tl.constexpr, INT64: tl.constexpr, BLOCK: tl.constexpr):
    """dx = diff * (g * scale) in float32, one rounding to the dtype."""
    start, offs = flat_block(INT64, BLOCK)
    if G_SCALAR:  # one value for every element: loaded once per program (cached)
        gs = tl.load(g_ptr).to(tl.float32) * scale
    if start + BLOCK <= n:
        d = tl.load(diff_ptr + offs).to(tl.float32)
        if not G_SCALAR:
            gs = tl.load(g_ptr + offs).to(tl.float32) * scale
        tl.store(dx_ptr + offs, (d * gs).to(dx_ptr.dtype.element_ty))
    else:
        ok = offs < n
        offs = tl.where(ok, offs, 0)
        d = tl.load(diff_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        if not G_SCALAR:
            gs = tl.load(g_ptr + offs, mask=ok, other=0.0).to(tl.float32) * scale
        tl.store(dx_ptr + offs, (d * gs).to(dx_ptr.dtype.element_ty), mask=ok)


# ----------------------------------------------------------------------------- configs

# The flat kernels' configs (``_common.FLAT_CONFIGS``: flat, 2 to 4 streams); every BLOCK
# is a multiple of PART.
GPU_CONFIGS = FLAT_CONFIGS
assert all(c[0] % PART == 0 for c in GPU_CONFIGS + [FLAT_INTERPRET_CONFIG])
#: ``knobs.override(configs={KERNELS[kind]: cfg})`` pins one config (the gpu tests run each).
KERNELS = {"fwd": flat_kernel(_mse_fwd_kernel), "bwd": flat_kernel(_mse_bwd_kernel)}


# ----------------------------------------------------------------------------- launchers


def _check_reduction(op, reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _scalar(xp, value, dtype):
    """A 0-d array holding ``value`` in ``dtype`` (bf16 bits for uint16)."""
    v32 = xp.full((), value, dtype=np.float32)
    return from_float32(xp, v32.reshape(1), dtype).reshape(()) if np.dtype(dtype) == np.uint16 else v32.astype(dtype)


def _partials(xp, num_parts):
    """The float32 partial sums' buffer, left uninitialised: every launch writes every
    slot (tests hand in a NaN-filled one to prove it)."""
    return xp.empty(num_parts, dtype=np.float32)


def mse_loss_forward(input, target, reduction):
    """loss = reduce((input - target)^2); returns ``(loss, diff)``.

    Args:
        input, target: float32 / float16 / bf16-as-uint16 arrays (CuPy, or NumPy under
            ``interpret``) of one shape and dtype; any strides (dense layouts kept).
        reduction: ``'mean'``, ``'sum'`` (a 0-d array, float32 accumulation) or
            ``'none'`` (the elementwise squares).

    Returns:
        ``(loss, diff)``: diff = input - target in the input dtype, saved for the backward.
    """
    op = "mse_loss_forward"
    _check_reduction(op, reduction)
    xp, (input, target), empty = flat_inputs(op, input=input, target=target)
    dtype, n = input.dtype, input.size
    diff = empty()
    reduce = reduction != "none"
    if reduce:
        if n == 0:  # NumPy: the mean of nothing is NaN, the sum 0
            return _scalar(xp, float("nan") if reduction == "mean" else 0.0, dtype), diff
        num_parts = triton.cdiv(n, PART)
        parts = _partials(xp, num_parts)
        loss = xp.empty((), dtype=dtype)
        sq = diff  # unused by the kernel when REDUCE
    else:
        num_parts, parts = 0, diff
        loss = sq = empty()
        if n == 0:
            return loss, diff
    launch_flat(KERNELS["fwd"], (input, target, diff, sq, parts), n, num_parts, REDUCE=reduce, PART=PART)
    if reduce:
        _mse_sum_kernel[(1,)](kernel_arg(parts), arg(loss), num_parts, float(n) if reduction == "mean" else 1.0,
                              BLOCK=SUM_BLOCK, num_warps=SUM_WARPS)
    return loss, diff


def mse_loss_backward(grad, diff, reduction):
    """d loss / d input = diff * (grad * c), c = 2 / n for 'mean', else 2 (float32 math).

    The target's gradient is the negative (``functional.mse_loss`` negates it).

    Args:
        grad: dL/dloss: a 0-d (or one-element) array or a number for 'mean' / 'sum',
            an array of diff's shape for 'none'; diff's dtype.
        diff: the saved input - target of ``mse_loss_forward``.
        reduction: the forward's reduction.
    """
    op = "mse_loss_backward"
    _check_reduction(op, reduction)
    check_arrays(op, diff=diff)
    xp = get_array_module(diff)
    if isinstance(grad, np.ndarray) and grad.size == 1 and reduction != "none" and diff.dtype != np.uint16:
        grad = grad.item()  # a host value (even for a CuPy diff): a number, no device mismatch
    if isinstance(grad, (numbers.Real, np.generic)) and reduction != "none":
        grad = _scalar(xp, float(grad), diff.dtype)
    check_arrays(op, grad=grad, diff=diff)
    n = diff.size
    scale = 2.0 / n if reduction == "mean" and n else 2.0  # float32 in the kernel, not the dtype
    if reduction == "none":
        if tuple(grad.shape) != tuple(diff.shape):
            raise ValueError(f"{op}: grad shape {tuple(grad.shape)} differs from diff shape {tuple(diff.shape)} "
                             "(reduction='none')")
        (grad, diff), order = flat_operands(xp, grad, diff)
    else:
        if grad.size != 1:
            raise ValueError(f"{op}: grad must hold one value for reduction={reduction!r}, "
                             f"got shape {tuple(grad.shape)}")
        grad = xp.ascontiguousarray(grad.reshape(()))
        (diff,), order = flat_operands(xp, diff)
    dx = empty_in_order(xp, diff.shape, diff.dtype, order)
    launch_flat(KERNELS["bwd"], (grad, diff, dx), n, scale, G_SCALAR=reduction != "none")
    return dx
