"""Inverted dropout in Triton, with the masks of the host generator.

The reference (the oracle) is ``gpukernels.cpu.dropout``: same functions, same
results. Formulas, with s = 1 / (1 - p) rounded to the storage dtype (as the
reference's ``dtype.type(1 / (1 - p))``):

    keep[i] = u[i] >= p,   u = generator().random(shape)   (host, float64, C order)
    mask[i] = keep[i] ? s : 0          (in x's dtype: the reference's saved mask)
    y[i]    = x[i] * mask[i]           (a product: inf or NaN dropped gives NaN, as NumPy)
    dx[i]   = g[i] * mask[i]

Where the random numbers come from: the library draws every random number from ONE
host ``numpy.random.Generator`` (``gpukernels.random``), so ``gk.manual_seed`` gives
the same masks, hence the same training run, on the numpy, interpret and cuda
backends. We keep that contract: the uniforms are drawn on the host exactly as the
reference draws them (same call, same count, same order), compared with p there, and
only the keep bits travel to the device, packed 8 per byte (``np.packbits``,
little-endian bit order): n / 8 bytes over PCIe instead of the reference's n x itemsize
mask (32x less for float32). A ``tl.rand`` (Philox) mask generated on the device would
skip the host draw, which dominates (float64 uniforms, one CPU thread: 19 ns per element
measured on the shared 2-core development machine, a few ns on a fast core, against a
device pass that moves ~12 bytes per element), but it would break seeded parity with
the numpy backend and the checkpointed generator state (``gk.get_rng_state``); that
would be an explicit, opt-in mode, not this one.

Kernels and memory traffic (itemsize b, n elements):

- ``_dropout_fwd_kernel``: reads x (n b) and the keep bits (n / 8), writes y and the
  mask (2 n b): the mask is saved for the backward, whose signature
  ``dropout_backward(grad_y, mask)`` carries no p, so it must hold the scale itself.
  With ``HAS_X=False`` it writes the mask alone (``dropout_mask``).
- ``_dropout_bwd_kernel``: reads g and the mask, writes dx (3 n b).

Flat over the buffers in BLOCK pieces, unmasked (vectorised) full pieces and a masked,
index-clamped tail, as ``activation`` (the flat-kernel helpers of ``_common``); dense
layouts (any axis order) run in place, the bits are drawn in C order and permuted to
the memory order before packing, so a channels-last x drops the same logical elements
as the reference.
"""

from __future__ import annotations

import numbers

import numpy as np
import triton
import triton.language as tl

from .. import cuda_graph
from ..backend import get_array_module
from ..random import generator
from ._common import (
    FLAT_CONFIGS, check_arrays, check_float, empty_in_order, flat_block, flat_inputs, flat_kernel, flat_operands,
    launch_flat, storage_round,
)

# ----------------------------------------------------------------------------- kernels


@triton.jit
def _dropout_fwd_kernel(x_ptr, bits_ptr, y_ptr, mask_ptr, n, scale,
                        HAS_X: tl.constexpr, INT64: tl.constexpr, BLOCK: tl.constexpr):
    """mask[i] = bit i of the packed keep bits ? scale : 0;  y[i] = x[i] * mask[i]."""
    start, offs = flat_block(INT64, BLOCK)
    if start + BLOCK <= n:  # a full block: unmasked, vectorised
        keep = (tl.load(bits_ptr + (offs >> 3)) >> (offs & 7).to(tl.uint8)) & 1
        m = keep.to(tl.float32) * scale
        tl.store(mask_ptr + offs, m.to(mask_ptr.dtype.element_ty))
        if HAS_X:
            x = tl.load(x_ptr + offs).to(tl.float32)
            tl.store(y_ptr + offs, (x * m).to(y_ptr.dtype.element_ty))
    else:  # the tail: masked, indices clamped into the buffers
        ok = offs < n
        offs = tl.where(ok, offs, 0)
        keep = (tl.load(bits_ptr + (offs >> 3), mask=ok, other=0) >> (offs & 7).to(tl.uint8)) & 1
        m = keep.to(tl.float32) * scale
        tl.store(mask_ptr + offs, m.to(mask_ptr.dtype.element_ty), mask=ok)
        if HAS_X:
            x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
            tl.store(y_ptr + offs, (x * m).to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _dropout_bwd_kernel(g_ptr, m_ptr, dx_ptr, n, INT64: tl.constexpr, BLOCK: tl.constexpr):
    """dx[i] = g[i] * mask[i]."""
    start, offs = flat_block(INT64, BLOCK)
    if start + BLOCK <= n:
        g = tl.load(g_ptr + offs).to(tl.float32)
        m = tl.load(m_ptr + offs).to(tl.float32)
        tl.store(dx_ptr + offs, (g * m).to(dx_ptr.dtype.element_ty))
    else:
        ok = offs < n
        offs = tl.where(ok, offs, 0)
        g = tl.load(g_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        m = tl.load(m_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        tl.store(dx_ptr + offs, (g * m).to(dx_ptr.dtype.element_ty), mask=ok)


# ----------------------------------------------------------------------------- configs

# The flat kernels' configs (``_common.FLAT_CONFIGS``: flat work, 2 to 3 streams).
GPU_CONFIGS = FLAT_CONFIGS
#: ``knobs.override(configs={KERNELS[kind]: cfg})`` pins one config (the gpu tests run each).
KERNELS = {"fwd": flat_kernel(_dropout_fwd_kernel), "bwd": flat_kernel(_dropout_bwd_kernel)}


# ----------------------------------------------------------------------------- launchers


def _check_p(op, p):
    if not isinstance(p, numbers.Real) or isinstance(p, bool) or not 0.0 <= p < 1.0:
        raise ValueError(f"{op}: p must be a probability in [0, 1) (p = 1 divides by 0), got {p!r}")
    return float(p)


def _keep_bits(xp, shape, p, order):
    """Draw the keep mask as the reference does (host generator, C order), permute it
    to the memory order ``order`` and pack it 8 per byte for the device."""
    keep = np.asarray(generator().random(shape) >= p)
    if len(order) > 1 and tuple(order) != tuple(range(len(order))):
        keep = keep.transpose(order)
    bits = np.packbits(keep.reshape(-1), bitorder="little")
    return xp.asarray(bits)


def _launch_forward(op, xp, x, shape, dtype, p, order):
    mask = empty_in_order(xp, shape, dtype, order)
    y = empty_in_order(xp, shape, dtype, order) if x is not None else None
    bits = _keep_bits(xp, shape, p, order)
    launch_flat(KERNELS["fwd"], (x if x is not None else mask, bits, y if y is not None else mask, mask),
                mask.size, storage_round(dtype, 1.0 / (1.0 - p)), HAS_X=x is not None)
    return y, mask


def dropout_mask(shape, p, dtype, xp):
    """Keep-mask already scaled by 1/(1-p): entries are 0 or 1/(1-p) in ``dtype``.

    Draws ``generator().random(shape) >= p`` on the host, as the reference, so the same
    seed keeps the same elements on every backend.

    Args:
        shape: the mask's shape.
        p: drop probability in [0, 1).
        dtype: float32, float16 or uint16 (bf16 bit patterns).
        xp: the array module of the result (numpy under ``interpret``, cupy on a GPU).
    """
    p = _check_p("dropout_mask", p)
    dtype = np.dtype(dtype)
    probe = np.empty(0, dtype)
    check_float("dropout_mask", probe)
    shape = tuple(int(s) for s in ((shape,) if isinstance(shape, numbers.Integral) else shape))
    _, mask = _launch_forward("dropout_mask", xp, None, shape, dtype, p, tuple(range(len(shape))))
    return mask


def dropout_forward(x, p):
    """y = x * mask with mask = keep / (1 - p), keep ~ Bernoulli(1 - p) from the host generator.

    Args:
        x: float32 / float16 / bf16-as-uint16 array (CuPy, or NumPy under ``interpret``),
            any strides (dense layouts kept, others copied to C order).
        p: drop probability in [0, 1).

    Returns:
        ``(y, mask)``, both shaped and laid out as x, in x's dtype; mask is 0 or
        1/(1-p) (the reference's convention) and is what ``dropout_backward`` takes.
    """
    p = _check_p("dropout_forward", p)
    check_arrays("dropout_forward", x=x)
    if cuda_graph.capturing():
        raise RuntimeError("dropout_forward: the mask is drawn on the host and copied over, which a "
                           "CUDA graph would replay unchanged every step; dropout cannot be captured")
    xp = get_array_module(x)
    (x,), order = flat_operands(xp, x)
    return _launch_forward("dropout_forward", xp, x, x.shape, x.dtype, p, order)


def dropout_backward(grad_y, mask):
    """dx = grad_y * mask (mask from ``dropout_forward``: 0 or 1/(1-p)).

    Args:
        grad_y: dL/dy, same shape and dtype as mask.
        mask: the saved mask.
    """
    _, (grad_y, mask), empty = flat_inputs("dropout_backward", grad_y=grad_y, mask=mask)
    dx = empty()
    launch_flat(KERNELS["bwd"], (grad_y, mask, dx), dx.size)
    return dx
