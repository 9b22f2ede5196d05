"""2-d max and average pooling in Triton: forward and backward, one pass over memory
each, no atomics, deterministic.

The reference (the oracle every kernel is tested against) is
``gpukernels.cpu.pool``: the same function names, arguments and results, except
the max-pool ``argmax``, which is an opaque state between a module's own forward and
backward (the functional layer saves it without looking inside).

Formulas (window of output pixel (oh, ow): input rows ih = oh*sh - ph + kh*dh,
columns iw = ow*sw - pw + kw*dw, kh < KH, kw < KW; padding counts as -inf for max and 0
for average):

    max forward   y[n,c,oh,ow] = max_{kh,kw} x[n,c,ih,iw]
                  a[n,c,oh,ow] = kh*KW + kw of the FIRST maximum (row-major taps)
    max backward  dx[n,c,ih,iw] = sum over the windows (oh, ow) that contain (ih, iw) at
                  tap k, and whose argmax a[n,c,oh,ow] == k, of dy[n,c,oh,ow]
    avg forward   y = sum_{kh,kw} x / D(oh, ow)
    avg backward  dx[n,c,ih,iw] = sum over the windows containing (ih, iw) of dy / D(oh, ow)

with D = KH*KW, or, with ``count_include_pad=False``, the number of real (non-padding)
pixels in the window: (min(ih0 + KH, H) - max(ih0, 0)) * (same along W), ih0 = oh*sh - ph.
No ``ceil_mode`` (neither has the reference): every window starts inside the padded
input and ends inside it, so D = KH*KW with padding counted is exact (PyTorch clips its
count only for ceil_mode's extra windows).

NaN and -inf, as the reference: a window holding a NaN gives y = NaN and argmax 0 (the
reference finds no tap equal to NaN and keeps 0); a window of only -inf (padding
included) gives -inf and argmax 0. The backward sends dy to the argmax tap only (a NaN
or inf in dy reaches that one input, as in PyTorch; the reference's ``dy * (argmax == k)``
would also spread NaN over the window's other inputs).

argmax format: the flat window offset kh*KW + kw, stored as int8 when KH*KW < 128 (else
int32), shape (N, C, OH, OW) contiguous. One byte per output instead of PyTorch's 8-byte
flat input index: the smallest thing that lets the backward find the winning tap.

Memory traffic (e = itemsize; P = N*C*H*W input, Q = N*C*OH*OW output elements):
- max forward: reads x once (the KH*KW tap loads of a tile overlap in L1/L2; DRAM sees
  each line once), writes y and argmax: P*e + Q*(e + 1) bytes. PyTorch writes an int64
  index per output: P*e + Q*(e + 8). For 2x2/s2 fp32 that is 5.25 vs 7 bytes per input.
- max backward (gather): each program owns a tile of dx; every input pixel visits the
  ceil(extent/stride)**2 windows that can contain it (1 when windows do not overlap:
  stride >= dilation*(K-1)+1) and reads their argmax (1 byte) and, only where the argmax
  points at it, dy. Reads Q*(e + 1), writes P*e: no zero-fill pass, no atomics, no
  scatter, and each dx element is written exactly once with a fixed summation order.
- avg forward: P*e + Q*e; avg backward: Q*e + P*e, the same gather without argmax.

Tiles: a program owns a (BLOCK // BLOCK_W, BLOCK_W) tile of rows (n, c, h) x columns w,
BLOCK_W the power of two >= the output width, capped at MAX_BLOCK_W: the row decomposition
(two divisions) is computed once per row, not per element, and the contiguous stores
along w coalesce. Small maps (7x7, 4x4) pack many rows per program.

Layouts: x (forward) and dy (backward) may have any strides, stride-0 broadcast views
included (each element is addressed through its strides, never assumed contiguous; a
read-only or negatively strided NumPy array, which ``kernel_arg`` refuses, goes through
``kernel_view`` first, so the strides passed are those of the copy it makes); y, argmax
and dx are written contiguous NCHW; argmax must be the forward's own.

Traps avoided:
- out-of-range taps (padding) are masked AND their indices clamped with ``tl.where``,
  so no load address leaves the tensor;
- int32 offsets overflow at 2**31 elements: past that the kernels are compiled with
  INT64 and every stride and row index is widened before it multiplies;
- the window search of the backward divides only non-negative numbers (ih + ph >= 0),
  where Triton's truncating division equals floor division.
"""

from __future__ import annotations

import numpy as np
import triton
import triton.language as tl

from ..backend import get_array_module, kernel_arg
from ..shapes import conv2d_output_size, pair
from ._common import Tuned, arg, check_float, kernel_view, needs_int64, strides, widen4

# ----------------------------------------------------------------------------- kernels


@triton.jit
def _tile_rows(BLOCK: tl.constexpr, BLOCK_W: tl.constexpr, R, COLS, INT64: tl.constexpr):
    """Rows (n, c, h) and columns of this program's tile, their masks, and the row
    indices clamped to valid ones (masked lanes then address row 0 / column 0)."""
    BLOCK_R: tl.constexpr = BLOCK // BLOCK_W
    pid_r = tl.program_id(0)
    pid_w = tl.program_id(1)
    if INT64:  # int64 indices: every offset computed from them is int64
        pid_r = tl.cast(pid_r, tl.int64)
        pid_w = tl.cast(pid_w, tl.int64)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_w = pid_w * BLOCK_W + tl.arange(0, BLOCK_W)
    r_ok = offs_r < R
    w_ok = offs_w < COLS
    return offs_r, offs_w, r_ok, w_ok, tl.where(r_ok, offs_r, 0), tl.where(w_ok, offs_w, 0)


@triton.jit
def _split_rows(r, ROWS, C, sn, sc):
    """Rows r of a (N, C, ROWS) view: the index h along ROWS, the plane n*C + c, and the
    plane's offset through the strides sn, sc."""
    h = r % ROWS
    nc = r // ROWS
    return h, nc, (nc // C) * sn + (nc % C) * sc


@triton.jit
def _inside(i, n, INT64: tl.constexpr):
    """0 <= i < n as ONE unsigned comparison (a negative i wraps past any n >= 0). The
    max-pool forward's bounds masks use it: with a signed pair per tap, Triton 3.6's
    sm_90 code of the dilated 3x3 window ran out of predicate registers and ptxas 12.8
    spilled one (8 bytes)."""
    if INT64:
        ok = i.to(tl.uint64, bitcast=True) < tl.cast(n, tl.uint64)
    else:
        ok = i.to(tl.uint32, bitcast=True) < tl.cast(n, tl.uint32)
    return ok


@triton.jit
def _max_pool_fwd_kernel(
    x_ptr, y_ptr, idx_ptr,
    C, H, W, OH, OW,
    sxn, sxc, sxh, sxw,
    pad_h, pad_w, R,
    KH: tl.constexpr, KW: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, DIL_H: tl.constexpr, DIL_W: tl.constexpr,
    INT64: tl.constexpr, BLOCK: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """y[r, ow] = max over the window, idx[r, ow] = its first maximum's tap; r = (n, c, oh)."""
    offs_r, offs_w, r_ok, w_ok, r, ow = _tile_rows(BLOCK, BLOCK_W, R, OW, INT64)
    if INT64:  # widen4 uses tl.cast: a stride equal to 1 arrives as a constexpr int on the GPU
        sxn, sxc, sxh, sxw = widen4(sxn, sxc, sxh, sxw)
    oh, nc, x_row = _split_rows(r, OH, C, sxn, sxc)
    ih0 = oh * STRIDE_H - pad_h
    iw0 = ow * STRIDE_W - pad_w

    m = tl.full((BLOCK // BLOCK_W, BLOCK_W), float("-inf"), tl.float32)
    idx = tl.zeros((BLOCK // BLOCK_W, BLOCK_W), tl.int32)
    for kh in range(KH):
        ih = ih0 + kh * DIL_H
        h_ok = r_ok & _inside(ih, H, INT64)
        x_h = x_row + tl.where(h_ok, ih, 0) * sxh
        for kw in range(KW):
            iw = iw0 + kw * DIL_W
            c_ok = w_ok & _inside(iw, W, INT64)
            v = tl.load(x_ptr + x_h[:, None] + (tl.where(c_ok, iw, 0) * sxw)[None, :],
                        mask=h_ok[:, None] & c_ok[None, :], other=float("-inf")).to(tl.float32)
            # strict '>': a later equal value never replaces the first maximum; a NaN
            # compares false here, but the NaN-propagating maximum remembers it
            idx = tl.where(v > m, kh * KW + kw, idx)
            m = tl.maximum(m, v, propagate_nan=tl.PropagateNan.ALL)
    idx = tl.where(m != m, 0, idx)  # NaN window: no tap equals NaN, the reference keeps 0

    out = offs_r[:, None] * OW + offs_w[None, :]  # y and idx: contiguous (N*C*OH, OW)
    ok = r_ok[:, None] & w_ok[None, :]
    tl.store(y_ptr + out, m.to(y_ptr.dtype.element_ty), mask=ok)
    tl.store(idx_ptr + out, idx.to(idx_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _window_search(i, pad, STRIDE: tl.constexpr, j: tl.constexpr):
    """The j-th window (from the last) along one axis that can contain input index i:
    its output index o and the offset rem = i + pad - o*STRIDE of i inside it."""
    q = (i + pad) // STRIDE  # i + pad >= 0: truncation is floor
    o = q - j
    return o, (i + pad) - o * STRIDE


@triton.jit
def _max_pool_bwd_kernel(
    g_ptr, idx_ptr, dx_ptr,
    C, H, W, OH, OW,
    sgn, sgc, sgh, sgw,
    pad_h, pad_w, R,
    KH: tl.constexpr, KW: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, DIL_H: tl.constexpr, DIL_W: tl.constexpr,
    NWIN_H: tl.constexpr, NWIN_W: tl.constexpr,
    INT64: tl.constexpr, BLOCK: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """dx[r, iw] = sum of dy over the windows containing (ih, iw) whose argmax is that
    tap; r = (n, c, ih). NWIN_* = ceil(extent / stride) windows per axis can contain a
    pixel (1: windows do not overlap, one argmax read per pixel)."""
    offs_r, offs_w, r_ok, w_ok, r, iw = _tile_rows(BLOCK, BLOCK_W, R, W, INT64)
    if INT64:  # widen4 uses tl.cast: a stride equal to 1 arrives as a constexpr int on the GPU
        sgn, sgc, sgh, sgw = widen4(sgn, sgc, sgh, sgw)
    ih, nc, g_row = _split_rows(r, H, C, sgn, sgc)
    i_row = nc * OH  # argmax: contiguous (N*C*OH, OW)

    acc = tl.zeros((BLOCK // BLOCK_W, BLOCK_W), tl.float32)
    for j in tl.static_range(NWIN_H):
        oh, rh = _window_search(ih, pad_h, STRIDE_H, j)
        h_ok = r_ok & (oh >= 0) & (oh < OH) & (rh % DIL_H == 0) & (rh <= (KH - 1) * DIL_H)
        oh = tl.where(h_ok, oh, 0)
        tap_h = (rh // DIL_H) * KW
        for i in tl.static_range(NWIN_W):
            ow, rw = _window_search(iw, pad_w, STRIDE_W, i)
            c_ok = w_ok & (ow >= 0) & (ow < OW) & (rw % DIL_W == 0) & (rw <= (KW - 1) * DIL_W)
            ow = tl.where(c_ok, ow, 0)
            ok = h_ok[:, None] & c_ok[None, :]
            a = tl.load(idx_ptr + ((i_row + oh) * OW)[:, None] + ow[None, :], mask=ok, other=-1)
            hit = ok & (a.to(tl.int32) == tap_h[:, None] + (rw // DIL_W)[None, :])
            # dy is read only where the argmax points here: other windows' dy never moves
            g = tl.load(g_ptr + (g_row + oh * sgh)[:, None] + (ow * sgw)[None, :], mask=hit, other=0.0)
            acc += g.to(tl.float32)

    out = offs_r[:, None] * W + offs_w[None, :]  # dx: contiguous (N*C*H, W)
    tl.store(dx_ptr + out, acc.to(dx_ptr.dtype.element_ty), mask=r_ok[:, None] & w_ok[None, :])


@triton.jit
def _real_count(o, pad, K: tl.constexpr, STRIDE: tl.constexpr, SIZE):
    """Real (non-padding) pixels along one axis of the window at output index o."""
    start = o * STRIDE - pad
    return tl.minimum(start + K, SIZE) - tl.maximum(start, 0)


@triton.jit
def _avg_pool_fwd_kernel(
    x_ptr, y_ptr,
    C, H, W, OH, OW,
    sxn, sxc, sxh, sxw,
    pad_h, pad_w, R,
    KH: tl.constexpr, KW: tl.constexpr, STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    COUNT_PAD: tl.constexpr, INT64: tl.constexpr, BLOCK: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """y[r, ow] = sum over the window / D; r = (n, c, oh)."""
    offs_r, offs_w, r_ok, w_ok, r, ow = _tile_rows(BLOCK, BLOCK_W, R, OW, INT64)
    if INT64:  # widen4 uses tl.cast: a stride equal to 1 arrives as a constexpr int on the GPU
        sxn, sxc, sxh, sxw = widen4(sxn, sxc, sxh, sxw)
    oh, nc, x_row = _split_rows(r, OH, C, sxn, sxc)
    ih0 = oh * STRIDE_H - pad_h
    iw0 = ow * STRIDE_W - pad_w

    acc = tl.zeros((BLOCK // BLOCK_W, BLOCK_W), tl.float32)
    for kh in range(KH):
        ih = ih0 + kh
        h_ok = r_ok & (ih >= 0) & (ih < H)
        x_h = x_row + tl.where(h_ok, ih, 0) * sxh
        for kw in range(KW):
            iw = iw0 + kw
            c_ok = w_ok & (iw >= 0) & (iw < W)
            v = tl.load(x_ptr + x_h[:, None] + (tl.where(c_ok, iw, 0) * sxw)[None, :],
                        mask=h_ok[:, None] & c_ok[None, :], other=0.0)
            acc += v.to(tl.float32)
    if COUNT_PAD:
        acc = acc / (KH * KW)
    else:
        count = (_real_count(oh, pad_h, KH, STRIDE_H, H)[:, None]
                 * _real_count(ow, pad_w, KW, STRIDE_W, W)[None, :])
        acc = acc / count.to(tl.float32)

    out = offs_r[:, None] * OW + offs_w[None, :]
    tl.store(y_ptr + out, acc.to(y_ptr.dtype.element_ty), mask=r_ok[:, None] & w_ok[None, :])


@triton.jit
def _avg_pool_bwd_kernel(
    g_ptr, dx_ptr,
    C, H, W, OH, OW,
    sgn, sgc, sgh, sgw,
    pad_h, pad_w, R,
    KH: tl.constexpr, KW: tl.constexpr, STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    NWIN_H: tl.constexpr, NWIN_W: tl.constexpr,
    COUNT_PAD: tl.constexpr, INT64: tl.constexpr, BLOCK: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """dx[r, iw] = sum over the windows containing (ih, iw) of dy / D; r = (n, c, ih)."""
    offs_r, offs_w, r_ok, w_ok, r, iw = _tile_rows(BLOCK, BLOCK_W, R, W, INT64)
    if INT64:  # widen4 uses tl.cast: a stride equal to 1 arrives as a constexpr int on the GPU
        sgn, sgc, sgh, sgw = widen4(sgn, sgc, sgh, sgw)
    ih, nc, g_row = _split_rows(r, H, C, sgn, sgc)

    acc = tl.zeros((BLOCK // BLOCK_W, BLOCK_W), tl.float32)
    for j in tl.static_range(NWIN_H):
        oh, rh = _window_search(ih, pad_h, STRIDE_H, j)
        h_ok = r_ok & (oh >= 0) & (oh < OH) & (rh < KH)
        oh = tl.where(h_ok, oh, 0)
        for i in tl.static_range(NWIN_W):
            ow, rw = _window_search(iw, pad_w, STRIDE_W, i)
            c_ok = w_ok & (ow >= 0) & (ow < OW) & (rw < KW)
            ow = tl.where(c_ok, ow, 0)
            ok = h_ok[:, None] & c_ok[None, :]
            g = tl.load(g_ptr + (g_row + oh * sgh)[:, None] + (ow * sgw)[None, :], mask=ok, other=0.0)
            g = g.to(tl.float32)
            if not COUNT_PAD:
                count = (_real_count(oh, pad_h, KH, STRIDE_H, H)[:, None]
                         * _real_count(ow, pad_w, KW, STRIDE_W, W)[None, :])
                g = g / tl.where(ok, count, 1).to(tl.float32)
            acc += g
    if COUNT_PAD:
        acc = acc / (KH * KW)

    out = offs_r[:, None] * W + offs_w[None, :]
    tl.store(dx_ptr + out, acc.to(dx_ptr.dtype.element_ty), mask=r_ok[:, None] & w_ok[None, :])


# ----------------------------------------------------------------------------- configs

# (BLOCK, num_warps, num_stages): BLOCK elements per program (a BLOCK // BLOCK_W by BLOCK_W
# tile). No K loop to pipeline: stages stay 1. Every config is spill-free on sm_80 and
# sm_90 (python -m gpukernels.triton.aot --family pool).
GPU_CONFIGS = {
    "max_fwd": [(1024, 4, 1), (2048, 8, 1), (512, 4, 1), (4096, 8, 1)],
    "max_bwd": [(1024, 4, 1), (2048, 8, 1), (512, 4, 1), (4096, 8, 1)],
    "avg_fwd": [(1024, 4, 1), (2048, 8, 1), (512, 4, 1), (4096, 8, 1)],
    "avg_bwd": [(1024, 4, 1), (2048, 8, 1), (512, 4, 1), (4096, 8, 1)],
}
INTERPRET_CONFIG = (4096, 4, 1)  # few, big programs: the interpreter pays per op, not per element
#: Tile width cap; every config's BLOCK is a multiple of it, so a tile has >= 1 row.
MAX_BLOCK_W = 128

_KEY = ["C", "H", "W", "OH", "OW", "R"]
#: The four kernels with their configs; ``knobs.override(configs={KERNELS[kind]: cfg})`` pins one (tests).
KERNELS = {
    "max_fwd": Tuned(_max_pool_fwd_kernel, ("BLOCK",), GPU_CONFIGS["max_fwd"], _KEY, INTERPRET_CONFIG),
    "max_bwd": Tuned(_max_pool_bwd_kernel, ("BLOCK",), GPU_CONFIGS["max_bwd"], _KEY, INTERPRET_CONFIG),
    "avg_fwd": Tuned(_avg_pool_fwd_kernel, ("BLOCK",), GPU_CONFIGS["avg_fwd"], _KEY, INTERPRET_CONFIG),
    "avg_bwd": Tuned(_avg_pool_bwd_kernel, ("BLOCK",), GPU_CONFIGS["avg_bwd"], _KEY, INTERPRET_CONFIG),
}


# ----------------------------------------------------------------------------- launchers


def _geometry(op, shape, kernel, stride, padding, dilation=(1, 1)):
    """(kh, kw), (sh, sw), (ph, pw), (dh, dw) and the output (oh, ow). The window
    arguments were checked at the public surface (``ops.pool``); here only what keeps the
    launch inside its arrays: a 4-d input and an output of at least one pixel."""
    if len(shape) != 4:
        raise ValueError(f"{op}: expected a 4-d (N, C, H, W) input, got shape {tuple(shape)}")
    k, s, p, d = pair(kernel), pair(stride), pair(padding), pair(dilation)
    oh, ow = conv2d_output_size(shape[2], shape[3], k, s, p, d)
    if oh < 1 or ow < 1:
        raise ValueError(f"{op}: window {k} (dilation {d}) does not fit the input {tuple(shape)} "
                         f"padded by {p}: output would be {oh}x{ow}")
    return k, s, p, d, (oh, ow)


def _block_w(cols):
    return min(triton.next_power_of_2(max(cols, 1)), MAX_BLOCK_W)


def _launch(kind, rows, cols, *args, **consts):
    """One launch over a (rows, cols) output: tiles of BLOCK // BLOCK_W rows x BLOCK_W cols."""
    bw = _block_w(cols)

    def grid(meta):
        return (triton.cdiv(rows, meta["BLOCK"] // bw), triton.cdiv(cols, bw))

    KERNELS[kind][grid](*args, rows, BLOCK_W=bw, **consts)


def _windows(k, s, d):
    """How many windows along an axis can contain one input index: ceil(extent / stride)."""
    return -(-(d * (k - 1) + 1) // s)


def _setup_forward(op, x, kernel, stride, padding, dilation=(1, 1)):
    """A forward's checked input (readable by the kernel through its strides), its window
    geometry (``_geometry``) and y: (N, C, OH, OW) contiguous, x's dtype."""
    check_float(op, x)
    x = kernel_view(x)
    geometry = _geometry(op, x.shape, kernel, stride, padding, dilation)
    y = get_array_module(x).empty((*x.shape[:2], *geometry[-1]), dtype=x.dtype)
    return x, geometry, y


def _setup_backward(op, grad_y, x_shape, kernel, stride, padding, dilation=(1, 1)):
    """A backward's checked grad_y (readable through its strides; shaped as the
    forward's output), the window geometry and dx: (N, C, H, W) contiguous, grad_y's dtype."""
    check_float(op, grad_y)
    grad_y = kernel_view(grad_y)
    geometry = _geometry(op, x_shape, kernel, stride, padding, dilation)
    out_hw = geometry[-1]
    if grad_y.ndim != 4 or tuple(grad_y.shape) != (*x_shape[:2], *out_hw):
        raise ValueError(f"{op}: grad_y must have shape {(*x_shape[:2], *out_hw)} for an input of "
                         f"shape {tuple(x_shape)}, got {tuple(grad_y.shape)}")
    dx = get_array_module(grad_y).empty(tuple(int(v) for v in x_shape), dtype=grad_y.dtype)
    return grad_y, geometry, dx


def max_pool2d_forward(x, kernel, stride, padding, dilation):
    """y[n,c,oh,ow] = max_{kh,kw} x[n,c,oh*sh - ph + kh*dh, ow*sw - pw + kw*dw] (padding is -inf).

    Args:
        x: (N, C, H, W) float32/float16/bf16-as-uint16 array (CuPy, or NumPy under
            ``interpret``); any strides.
        kernel, stride, padding, dilation: ints or ``(h, w)`` pairs.

    Returns:
        ``(y, argmax)``: y (N, C, OH, OW) contiguous in x's dtype; argmax the flat window
        offset kh*KW + kw of each window's first maximum (0 for a NaN window), int8 when
        KH*KW < 128 else int32, (N, C, OH, OW): pass it to ``max_pool2d_backward``.
    """
    op = "max_pool2d"
    x, geometry, y = _setup_forward(op, x, kernel, stride, padding, dilation)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = geometry
    n, c, h, w = x.shape
    argmax = get_array_module(x).empty((n, c, oh, ow), dtype=np.int8 if kh * kw < 128 else np.int32)
    if y.size == 0:
        return y, argmax
    _launch("max_fwd", n * c * oh, ow, arg(x), arg(y), kernel_arg(argmax),
            c, h, w, oh, ow, *strides(x), ph, pw,
            KH=kh, KW=kw, STRIDE_H=sh, STRIDE_W=sw, DIL_H=dh, DIL_W=dw, INT64=needs_int64(x, y))
    return y, argmax


def max_pool2d_backward(grad_y, argmax, x_shape, kernel, stride, padding, dilation):
    """dx[n,c,ih,iw] = sum of dy[n,c,oh,ow] over the windows (oh, ow) whose argmax is (ih, iw).

    A gather: each input pixel reads the argmax of the windows that can contain it, so
    overlapping windows (stride < extent) sum their gradients deterministically, without
    atomics, and dx is written once (no zero fill).

    Args:
        grad_y: (N, C, OH, OW), any strides (broadcast views included).
        argmax: what ``max_pool2d_forward`` returned with the same geometry.
        x_shape: the forward input's (N, C, H, W).

    Returns:
        dx (N, C, H, W) contiguous, grad_y's dtype.
    """
    op = "max_pool2d_backward"
    grad_y, geometry, dx = _setup_backward(op, grad_y, x_shape, kernel, stride, padding, dilation)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), out_hw = geometry
    want = np.int8 if kh * kw < 128 else np.int32
    if (getattr(argmax, "dtype", None) != want or tuple(argmax.shape) != tuple(grad_y.shape)
            or not argmax.flags.c_contiguous or type(argmax) is not type(grad_y)):
        raise ValueError(f"{op}: argmax must be the contiguous {np.dtype(want).name} array of shape "
                         f"{tuple(grad_y.shape)} that max_pool2d_forward returned (same device), got "
                         f"{type(argmax).__name__} {getattr(argmax, 'dtype', None)} "
                         f"{tuple(getattr(argmax, 'shape', ()))}")
    argmax = kernel_view(argmax)
    n, c, h, w = dx.shape
    if dx.size == 0:
        return dx
    _launch("max_bwd", n * c * h, w, arg(grad_y), kernel_arg(argmax), arg(dx),
            c, h, w, *out_hw, *strides(grad_y), ph, pw,
            KH=kh, KW=kw, STRIDE_H=sh, STRIDE_W=sw, DIL_H=dh, DIL_W=dw,
            NWIN_H=_windows(kh, sh, dh), NWIN_W=_windows(kw, sw, dw), INT64=needs_int64(grad_y, dx))
    return dx


def avg_pool2d_forward(x, kernel, stride, padding, count_include_pad=True):
    """y[n,c,oh,ow] = sum of the window / D, D = KH*KW, or the window's real (non-padding)
    pixels when ``count_include_pad`` is False.

    Args:
        x: (N, C, H, W) float32/float16/bf16-as-uint16, any strides.
        kernel, stride, padding: ints or ``(h, w)`` pairs.

    Returns:
        y (N, C, OH, OW) contiguous, x's dtype.
    """
    op = "avg_pool2d"
    x, geometry, y = _setup_forward(op, x, kernel, stride, padding)
    (kh, kw), (sh, sw), (ph, pw), _, (oh, ow) = geometry
    n, c, h, w = x.shape
    if y.size == 0:
        return y
    _launch("avg_fwd", n * c * oh, ow, arg(x), arg(y), c, h, w, oh, ow, *strides(x), ph, pw,
            KH=kh, KW=kw, STRIDE_H=sh, STRIDE_W=sw, COUNT_PAD=bool(count_include_pad) or (ph, pw) == (0, 0),
            INT64=needs_int64(x, y))
    return y


def avg_pool2d_backward(grad_y, x_shape, kernel, stride, padding, count_include_pad=True):
    """dx[n,c,ih,iw] = sum over the windows containing (ih, iw) of dy / D (a gather: no
    atomics, dx written once).

    Args:
        grad_y: (N, C, OH, OW), any strides (broadcast views included).
        x_shape: the forward input's (N, C, H, W).

    Returns:
        dx (N, C, H, W) contiguous, grad_y's dtype.
    """
    op = "avg_pool2d_backward"
    grad_y, geometry, dx = _setup_backward(op, grad_y, x_shape, kernel, stride, padding)
    (kh, kw), (sh, sw), (ph, pw), _, out_hw = geometry
    n, c, h, w = dx.shape
    if dx.size == 0:
        return dx
    _launch("avg_bwd", n * c * h, w, arg(grad_y), arg(dx), c, h, w, *out_hw, *strides(grad_y), ph, pw,
            KH=kh, KW=kw, STRIDE_H=sh, STRIDE_W=sw, NWIN_H=_windows(kh, sh, 1), NWIN_W=_windows(kw, sw, 1),
            COUNT_PAD=bool(count_include_pad) or (ph, pw) == (0, 0), INT64=needs_int64(grad_y, dx))
    return dx
