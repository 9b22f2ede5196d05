"""conv2d in Triton: implicit-GEMM forward with fused bias + ReLU / leaky ReLU, and the
input- and weight-gradient kernels.

The reference (the oracle every kernel is tested against) is
``gpukernels.cpu.conv``: the same function names and arguments.

Three GEMMs, none of them materialised (no im2col buffer in memory):

    forward      y[m, o]  = sum_k  x[m, k] w[k, o]     m = (n, oh, ow), k = (kh, kw, c)
    grad-input   dx[m, c] = sum_k dy'[m, k] w[k, c]     m = (n, ih, iw), k = (kh, kw, o)
    grad-weight  dw[o, k] = sum_p dy'[p, o] x[p, k]     p = (n, oh, ow), k = (kh, kw, c)

where dy' is the upstream gradient times the activation's derivative, read from the
saved output while dy is loaded (relu: y > 0; leaky: 1 or slope), so no masked copy
of dy is ever written. Each program owns a (BLOCK_M, BLOCK_N) output tile in
registers and walks K in BLOCK_K steps with ``tl.dot`` (tensor cores: TF32 for float32
unless ``backend.set_allow_tf32(False)``, else fp16/bf16 with float32 accumulation).

Memory traffic (ideal, per call): forward reads x once per output-channel tile and the
(small) weight once per pixel tile, writes y once; grad-input reads dy (and y) once per
input-channel tile; grad-weight reads dy, y and x once per tile of its output.

Known traps avoided (see the convolution issue):
- padding makes input indices negative: every masked index is also clamped with
  ``tl.where`` to a valid address, so no (pipelined, asynchronous) load ever leaves the
  tensor, masked or not;
- offsets are int32 unless a tensor has 2**31 elements or more; then the kernels are
  compiled with INT64 and every stride is widened before it multiplies an index;
- grad-input with stride > 1 is split into stride_h * stride_w sub-convolutions (one
  per phase of the input pixel modulo the stride), each a dense implicit GEMM over the
  taps that reach that phase, instead of zero-inserting dy;
- grad-weight reduces over N*OH*OW as its GEMM K dimension, split across several
  programs (each writes its own float32 partial; the launcher adds them: deterministic)
  when the output tile grid alone would not fill the GPU (``_common.split_k``, the
  policy linear's grad-W shares);
- a first layer with few input channels (C*KH*KW small) packs (kh, kw, c) into one K
  index (PACKED) instead of padding C up to BLOCK_K per tap; a 1x1 convolution is the
  KH = KW = 1 specialisation: a plain GEMM with no tap loop.

Layouts: any strides for x, dy, y and dx (NCHW and channels-last both work); the
weight is re-laid out once per call as a (KH*KW*C, O) or (KH*KW*O, C) matrix
(contiguous along the GEMM's N dimension, so its loads coalesce); weights are small.
groups > 1 runs one launch per group on strided channel slices.
"""

from __future__ import annotations

import math

import numpy as np
import triton
import triton.language as tl

from ..backend import get_array_module, kernel_arg
from ..host_rules import activate_
from ..shapes import conv2d_output_size  # noqa: F401 - the family's shared formula, re-exported
from ..shapes import pair as _pair
from ._common import (Tuned, arg, check_float, from_float32, grouped_tile, kernel_view, needs_int64,
                      precision, split_k, strides, sum_partials, to_float32, widen4)

_ACTIVATIONS = {None: 0, "relu": 1, "leaky_relu": 2}


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _activate(acc, ACTIVATION: tl.constexpr, slope):
    if ACTIVATION == 1:
        acc = tl.maximum(acc, 0.0)
    elif ACTIVATION == 2:
        acc = tl.where(acc > 0, acc, acc * slope)
    return acc


@triton.jit
def _masked_grad(g, y, ACTIVATION: tl.constexpr, slope):
    """dL/dz from dL/dy and the saved output: y > 0 exactly where z > 0 (slope >= 0)."""
    if ACTIVATION == 1:
        g = tl.where(y > 0, g, 0.0)
    elif ACTIVATION == 2:
        g = tl.where(y > 0, g, g * slope)
    return g


@triton.jit
def _tile_mn(pid_m, pid_n, M, NCOLS, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Masks of the rows and columns of output tile (pid_m, pid_n) of an (M, NCOLS)
    result, and their indices clamped to valid ones (masked lanes address row / column 0)."""
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < NCOLS
    return m_ok, n_ok, tl.where(m_ok, offs_m, 0), tl.where(n_ok, offs_n, 0)


@triton.jit
def _pixels(m, W, H):
    """(column, row, image) of the flat pixel indices m of (N, H, W) images."""
    return m % W, (m // W) % H, m // (W * H)


@triton.jit
def _conv2d_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    N, C, H, W, O, OH, OW,
    sxn, sxc, sxh, sxw,
    syn, syc, syh, syw,
    pad_h, pad_w, slope,
    KH: tl.constexpr, KW: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, DIL_H: tl.constexpr, DIL_W: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, PACKED: tl.constexpr,
    INT64: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """y[n, o, oh, ow] = act(b[o] + sum_{c,kh,kw} x[n, c, ih, iw] w[(kh, kw, c), o])."""
    M = N * OH * OW
    pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(O, BLOCK_N), GROUP_M)
    if INT64:  # widen4 uses tl.cast, not .to(): a stride of 1 arrives as a constexpr int
        sxn, sxc, sxh, sxw = widen4(sxn, sxc, sxh, sxw)
        syn, syc, syh, syw = widen4(syn, syc, syh, syw)
    m_ok, n_ok, m, o = _tile_mn(pid_m, pid_n, M, O, BLOCK_M, BLOCK_N)
    ow, oh, img = _pixels(m, OW, OH)
    ih0 = oh * STRIDE_H - pad_h
    iw0 = ow * STRIDE_W - pad_w
    x_img = img * sxn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if PACKED:
        # K = (kh, kw, c) as one index: C*KH*KW values, no per-tap padding of C
        K = C * KH * KW
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < K
            k = tl.where(k_ok, offs_k, 0)
            c = k % C
            tap = k // C
            ih = ih0[:, None] + ((tap // KW) * DIL_H)[None, :]
            iw = iw0[:, None] + ((tap % KW) * DIL_W)[None, :]
            ok = m_ok[:, None] & k_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            ih = tl.where(ok, ih, 0)
            iw = tl.where(ok, iw, 0)
            a = tl.load(x_ptr + x_img[:, None] + c[None, :] * sxc + ih * sxh + iw * sxw, mask=ok, other=0.0)
            b = tl.load(w_ptr + k[:, None] * O + o[None, :], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
    else:
        # one flat loop over (tap, channel block) so the compiler pipelines all of K
        c_steps = tl.cdiv(C, BLOCK_K)
        for step in range(KH * KW * c_steps):
            tap = step // c_steps
            c0 = (step - tap * c_steps) * BLOCK_K
            ih = ih0 + (tap // KW) * DIL_H
            iw = iw0 + (tap % KW) * DIL_W
            pix_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            ih = tl.where(pix_ok, ih, 0)
            iw = tl.where(pix_ok, iw, 0)
            offs_c = c0 + tl.arange(0, BLOCK_K)
            c_ok = offs_c < C
            c = tl.where(c_ok, offs_c, 0)
            a = tl.load(x_ptr + (x_img + ih * sxh + iw * sxw)[:, None] + c[None, :] * sxc,
                        mask=pix_ok[:, None] & c_ok[None, :], other=0.0)
            b = tl.load(w_ptr + (tap * C + c)[:, None] * O + o[None, :],
                        mask=c_ok[:, None] & n_ok[None, :], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)

    # epilogue: bias and activation on the float32 accumulator, one store of y
    if HAS_BIAS:
        acc += tl.load(b_ptr + o, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    acc = _activate(acc, ACTIVATION, slope)
    y_pix = img * syn + oh * syh + ow * syw
    tl.store(y_ptr + y_pix[:, None] + o[None, :] * syc, acc.to(y_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _conv2d_dgrad_kernel(
    g_ptr, y_ptr, w_ptr, dx_ptr,
    N, C, H, W, O, OH, OW,
    sgn, sgc, sgh, sgw,
    sdn, sdc, sdh, sdw,
    pad_h, pad_w, slope,
    ih_first, iw_first, H_PH, W_PH, kh0, n_kh, kw0, n_kw,
    KH: tl.constexpr, KW: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, DIL_H: tl.constexpr, DIL_W: tl.constexpr,
    TAP_STEP_H: tl.constexpr, TAP_STEP_W: tl.constexpr,
    ACTIVATION: tl.constexpr, INT64: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """dx for one phase: the input pixels ih = ih_first + STRIDE_H * i (and likewise iw),
    which only the taps kh = kh0 + TAP_STEP_H * u (u < n_kh) reach, each at output row
    oh = i + (ih_first + pad_h - kh * DIL_H) / STRIDE_H (an exact division).

    dx[n, c, ih, iw] = sum_{u, v, o} dy'[n, o, oh, ow] w[(kh, kw, o), c]
    """
    M = N * H_PH * W_PH
    pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(C, BLOCK_N), GROUP_M)
    if INT64:
        sgn, sgc, sgh, sgw = widen4(sgn, sgc, sgh, sgw)
        sdn, sdc, sdh, sdw = widen4(sdn, sdc, sdh, sdw)
    m_ok, n_ok, m, c = _tile_mn(pid_m, pid_n, M, C, BLOCK_M, BLOCK_N)
    j, i, img = _pixels(m, W_PH, H_PH)
    g_img = img * sgn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    o_steps = tl.cdiv(O, BLOCK_K)
    for step in range(n_kh * n_kw * o_steps):
        tap = step // o_steps
        o0 = (step - tap * o_steps) * BLOCK_K
        kh = kh0 + (tap // n_kw) * TAP_STEP_H
        kw = kw0 + (tap % n_kw) * TAP_STEP_W
        oh = i + (ih_first + pad_h - kh * DIL_H) // STRIDE_H
        ow = j + (iw_first + pad_w - kw * DIL_W) // STRIDE_W
        pix_ok = m_ok & (oh >= 0) & (oh < OH) & (ow >= 0) & (ow < OW)
        oh = tl.where(pix_ok, oh, 0)
        ow = tl.where(pix_ok, ow, 0)
        offs_o = o0 + tl.arange(0, BLOCK_K)
        o_ok = offs_o < O
        o = tl.where(o_ok, offs_o, 0)
        ok = pix_ok[:, None] & o_ok[None, :]
        offs = (g_img + oh * sgh + ow * sgw)[:, None] + o[None, :] * sgc
        a = tl.load(g_ptr + offs, mask=ok, other=0.0)
        if ACTIVATION != 0:  # dy and y share a layout: the same offsets
            y = tl.load(y_ptr + offs, mask=ok, other=0.0)
            a = _masked_grad(a.to(tl.float32), y, ACTIVATION, slope).to(g_ptr.dtype.element_ty)
        b = tl.load(w_ptr + ((kh * KW + kw) * O + o)[:, None] * C + c[None, :],
                    mask=o_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)

    ih = ih_first + i * STRIDE_H
    iw = iw_first + j * STRIDE_W
    dx_pix = img * sdn + ih * sdh + iw * sdw
    tl.store(dx_ptr + dx_pix[:, None] + c[None, :] * sdc, acc.to(dx_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _conv2d_wgrad_kernel(
    g_ptr, y_ptr, x_ptr, dw_ptr, db_ptr,
    N, C, H, W, O, OH, OW,
    sgn, sgc, sgh, sgw,
    sxn, sxc, sxh, sxw,
    pad_h, pad_w, slope, p_per_split,
    KH: tl.constexpr, KW: tl.constexpr,
    STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, DIL_H: tl.constexpr, DIL_W: tl.constexpr,
    ACTIVATION: tl.constexpr, NEED_BIAS: tl.constexpr, PACKED: tl.constexpr,
    INT64: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """Partial sums over output pixels p in [split * p_per_split, (split + 1) * p_per_split):

    dw[split, o, (kh, kw, c)] = sum_p dy'[p, o] x[n, c, oh*s - pad + kh*d, ...]
    db[split, o]              = sum_p dy'[p, o]   (programs of column tile 0, if NEED_BIAS)
    """
    KC = C * KH * KW
    P = N * OH * OW
    if PACKED:
        num_n = tl.cdiv(KC, BLOCK_N)
    else:  # tiles never straddle two taps
        num_n = KH * KW * tl.cdiv(C, BLOCK_N)
    pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(O, BLOCK_M), num_n, GROUP_M)
    split = tl.program_id(1)
    if INT64:
        sgn, sgc, sgh, sgw = widen4(sgn, sgc, sgh, sgw)
        sxn, sxc, sxh, sxw = widen4(sxn, sxc, sxh, sxw)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < O
    o = tl.where(m_ok, offs_m, 0)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < KC
    kc = tl.where(n_ok, offs_n, 0)
    if PACKED:  # column index = (kh, kw, c) per element
        c = kc % C
        tap = kc // C
        dh = (tap // KW) * DIL_H
        dw = (tap % KW) * DIL_W
    else:  # the tile lies within one tap
        c_tiles = tl.cdiv(C, BLOCK_N)
        tap = pid_n // c_tiles
        c = (pid_n - tap * c_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = c < C
        c = tl.where(n_ok, c, 0)
        kc = tap * C + c
        dh = (tap // KW) * DIL_H
        dw = (tap % KW) * DIL_W

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    bias_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    p_start = split * p_per_split
    p_end = tl.minimum(p_start + p_per_split, P)
    for p0 in range(p_start, p_end, BLOCK_K):
        offs_p = p0 + tl.arange(0, BLOCK_K)
        p_ok = offs_p < p_end
        p = tl.where(p_ok, offs_p, 0)
        ow, oh, img = _pixels(p, OW, OH)
        # A = dy'[o, p]: (BLOCK_M, BLOCK_K)
        ok_a = m_ok[:, None] & p_ok[None, :]
        offs_a = o[:, None] * sgc + (img * sgn + oh * sgh + ow * sgw)[None, :]
        a = tl.load(g_ptr + offs_a, mask=ok_a, other=0.0)
        if ACTIVATION != 0:
            y = tl.load(y_ptr + offs_a, mask=ok_a, other=0.0)
            a = _masked_grad(a.to(tl.float32), y, ACTIVATION, slope).to(g_ptr.dtype.element_ty)
        if NEED_BIAS:  # every column tile sums it (cheap); tile 0 stores it
            bias_acc += tl.sum(a.to(tl.float32), axis=1)
        # B = x[p, (tap, c)]: (BLOCK_K, BLOCK_N)
        if PACKED:
            ih = (oh * STRIDE_H - pad_h)[:, None] + dh[None, :]
            iw = (ow * STRIDE_W - pad_w)[:, None] + dw[None, :]
        else:
            ih = (oh * STRIDE_H - pad_h + dh)[:, None]
            iw = (ow * STRIDE_W - pad_w + dw)[:, None]
        ok_b = p_ok[:, None] & n_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        ih = tl.where(ok_b, ih, 0)
        iw = tl.where(ok_b, iw, 0)
        b = tl.load(x_ptr + (img * sxn)[:, None] + c[None, :] * sxc + ih * sxh + iw * sxw,
                    mask=ok_b, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)

    base = split * O
    tl.store(dw_ptr + (base + o)[:, None] * KC + kc[None, :], acc, mask=m_ok[:, None] & n_ok[None, :])
    if NEED_BIAS:
        if pid_n == 0:
            tl.store(db_ptr + base + o, bias_acc, mask=m_ok)


# ----------------------------------------------------------------------------- configs

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). tl.dot needs every block >= 16.
# Under the interpreter one small config (its programs run one after another in Python).
# Each spill-free on sm_80 and sm_90 (python -m gpukernels.triton.aot) in TF32 and 16-bit,
# in full float32 those of IEEE; the first of each kind is also compiled in every dtype and
# code variant (aot_specs).
GPU_CONFIGS = {
    "fwd": [(128, 64, 32, 8, 3), (64, 128, 32, 8, 3), (64, 64, 32, 8, 3), (64, 64, 64, 8, 3),
            (128, 32, 32, 8, 3), (64, 32, 32, 8, 4), (64, 64, 32, 4, 4)],
    "dgrad": [(64, 64, 32, 8, 3), (64, 128, 32, 8, 3), (64, 64, 64, 8, 2), (128, 32, 32, 8, 3),
              (64, 32, 32, 4, 3)],  # 128x64 spills on sm_80 once dy' is masked in full fp32
    "wgrad": [(64, 64, 32, 8, 3), (128, 64, 16, 8, 2), (64, 128, 16, 8, 3), (128, 32, 32, 8, 3),
              (64, 32, 64, 8, 3), (32, 64, 64, 8, 2)],  # BLOCK_K | 64: split-K rounds to 64
}
#: The configs that stay spill-free in full float32 (PRECISION "ieee", i.e.
#: ``set_allow_tf32(False)``: FMA instead of tensor cores), the only ones the autotuner
#: times for such launches (``_pruner``); aot_specs compiles each of them in ieee. The
#: others spill there, with one Triton or the other: fwd 128x64x32 16 bytes (Triton 3.6,
#: sm_90), 64x128x32 40 (3.9, sm_90), 64x64x64 9.6 KB (3.9, sm_80), 64x64x32 w4 28
#: (3.9, sm_80); dgrad 64x128x32 36 (3.9, sm_90), 64x64x64 1.3 KB (3.9, sm_80).
IEEE = {
    "fwd": [(64, 64, 32, 8, 3), (128, 32, 32, 8, 3), (64, 32, 32, 8, 4)],
    "dgrad": [(64, 64, 32, 8, 3), (128, 32, 32, 8, 3), (64, 32, 32, 4, 3)],
    "wgrad": list(GPU_CONFIGS["wgrad"]),
}
assert all(set(IEEE[k]) <= set(GPU_CONFIGS[k]) and IEEE[k] for k in GPU_CONFIGS)
INTERPRET_CONFIG = (64, 64, 32, 4, 1)  # big tiles: the interpreter pays per op, not per element
GROUP_M = 8
# PACKED when C*KH*KW fits in a few K steps but C alone would waste most of a BLOCK_K.
PACKED_MAX_K = 64
# Split-K of grad-weight (``_common.split_k``): output tiles counted as SPLIT_TILE squares;
# each split keeps at least this many pixels.
SPLIT_TILE = 64
MIN_PIXELS_PER_SPLIT = 256


_SHAPE_KEY = ["N", "C", "H", "W", "O", "OH", "OW"]
_BLOCKS = ("BLOCK_M", "BLOCK_N", "BLOCK_K")


def _pruner(kind):
    safe = set(IEEE[kind])

    def prune(configs, named_args, **kwargs):
        """Every config for TF32 and 16-bit launches; in full float32 the IEEE ones."""
        if kwargs.get("PRECISION") != "ieee":
            return configs
        return [c for c in configs
                if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages) in safe]

    return prune


#: The three kernels with their configs; ``knobs.override(configs={KERNELS[kind]: cfg})`` pins one (tests).
KERNELS = {
    "fwd": Tuned(_conv2d_fwd_kernel, _BLOCKS, GPU_CONFIGS["fwd"], _SHAPE_KEY, INTERPRET_CONFIG,
                 prune=_pruner("fwd")),
    "dgrad": Tuned(_conv2d_dgrad_kernel, _BLOCKS, GPU_CONFIGS["dgrad"], _SHAPE_KEY + ["H_PH", "W_PH"],
                   INTERPRET_CONFIG, prune=_pruner("dgrad")),
    "wgrad": Tuned(_conv2d_wgrad_kernel, _BLOCKS, GPU_CONFIGS["wgrad"], _SHAPE_KEY + ["p_per_split"],
                   INTERPRET_CONFIG, prune=_pruner("wgrad")),
}


# ----------------------------------------------------------------------------- launchers


def _check(x, weight, bias, groups):
    xp = get_array_module(x, weight)
    if x.ndim != 4 or weight.ndim != 4:
        raise ValueError(f"conv2d: expected 4-d input and weight, got {x.shape} and {weight.shape}")
    check_float("conv2d", x, weight, bias)
    if x.shape[1] != weight.shape[1] * groups:
        raise ValueError(f"conv2d: weight {weight.shape} with groups={groups} does not fit input {x.shape}")
    return xp




def _geometry(x, weight, stride, padding, dilation):
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    oh, ow = conv2d_output_size(h, w, (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    return n, c, h, w, o, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow


def _forward_one(x, weight, bias, y, stride, padding, dilation, activation, slope):
    """One groups=1 convolution into the preallocated (possibly strided) ``y``."""
    xp = get_array_module(x)
    n, c, h, w, o, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = _geometry(x, weight, stride, padding, dilation)
    # (KH, KW, C, O): the GEMM's B matrix, contiguous along O
    wk = xp.ascontiguousarray(weight.transpose(2, 3, 1, 0))
    packed = c * kh * kw <= PACKED_MAX_K and c < 16
    m = n * oh * ow

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(o, meta["BLOCK_N"]),)

    KERNELS["fwd"][grid](
        arg(x), arg(wk), arg(bias if bias is not None else wk), arg(y),
        n, c, h, w, o, oh, ow, *strides(x), *strides(y), ph, pw, float(slope),
        KH=kh, KW=kw, STRIDE_H=sh, STRIDE_W=sw, DIL_H=dh, DIL_W=dw,
        HAS_BIAS=bias is not None, ACTIVATION=_ACTIVATIONS[activation], PACKED=packed,
        INT64=needs_int64(x, wk, bias, y), PRECISION=precision(x.dtype), GROUP_M=GROUP_M,
    )


def conv2d_forward(x, weight, bias, stride, padding, dilation, groups, activation=None, negative_slope=0.01):
    """y = act(conv(x, w) + b) on the GPU (or Triton's interpreter).

    Args:
        x: (N, C, H, W) float32/float16 array (CuPy, or NumPy under ``interpret``); any strides.
        weight: (O, C // groups, KH, KW), same dtype.
        bias: (O,) or None.
        stride, padding, dilation: ``(h, w)`` int pairs.
        groups: int dividing C and O (one launch per group).
        activation: None, ``'relu'`` or ``'leaky_relu'``, fused into the store.
        negative_slope: leaky ReLU slope (>= 0).

    Returns:
        y (N, O, OH, OW), contiguous, same dtype as ``x``.
    """
    xp = _check(x, weight, bias, groups)
    x, weight, bias = kernel_view(x), kernel_view(weight), kernel_view(bias)
    n, c, h, w, o, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = _geometry(x, weight, stride, padding, dilation)
    y = xp.empty((n, o, oh, ow), dtype=x.dtype)
    if y.size == 0:
        return y
    if x.size == 0:  # no input channels: only the bias remains
        y32 = xp.zeros(y.shape, np.float32) + (0 if bias is None else to_float32(xp, bias).reshape(1, o, 1, 1))
        y[...] = from_float32(xp, activate_(xp, y32, activation, negative_slope), x.dtype)
        return y
    cg, og = c // groups, o // groups
    for g in range(groups):
        _forward_one(x[:, g * cg:(g + 1) * cg], weight[g * og:(g + 1) * og],
                     None if bias is None else bias[g * og:(g + 1) * og], y[:, g * og:(g + 1) * og],
                     stride, padding, dilation, activation, negative_slope)
    return y


def _phases(size, k, s, p, d):
    """Per phase r of (i + p) mod s: (first input index, count, first tap, taps, tap step)."""
    step = s // math.gcd(s, d)
    out = []
    for r in range(s):
        first = (r - p) % s
        count = max(0, -(-(size - first) // s))
        taps = [t for t in range(k) if (r - t * d) % s == 0]
        out.append((first, count, taps[0] if taps else 0, len(taps), step))
    return out


def _dgrad_one(grad_y, y, weight, grad_x, stride, padding, dilation, activation, slope):
    xp = get_array_module(grad_y)
    n, c, h, w, o, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = _geometry(grad_x, weight, stride, padding, dilation)
    # (KH, KW, O, C): B matrix of the transposed problem, contiguous along C
    wt = xp.ascontiguousarray(weight.transpose(2, 3, 0, 1))
    int64 = needs_int64(grad_y, y, wt, grad_x)
    for ih_first, h_ph, kh0, n_kh, step_h in _phases(h, kh, sh, ph, dh):
        for iw_first, w_ph, kw0, n_kw, step_w in _phases(w, kw, sw, pw, dw):
            m = n * h_ph * w_ph
            if m == 0:
                continue

            def grid(meta, m=m):
                return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(c, meta["BLOCK_N"]),)

            KERNELS["dgrad"][grid](
                arg(grad_y), arg(y if y is not None else grad_y), arg(wt), arg(grad_x),
                n, c, h, w, o, oh, ow, *strides(grad_y), *strides(grad_x), ph, pw, float(slope),
                ih_first, iw_first, h_ph, w_ph, kh0, n_kh, kw0, n_kw,
                KH=kh, KW=kw, STRIDE_H=sh, STRIDE_W=sw, DIL_H=dh, DIL_W=dw,
                TAP_STEP_H=step_h, TAP_STEP_W=step_w, ACTIVATION=_ACTIVATIONS[activation],
                INT64=int64, PRECISION=precision(grad_y.dtype), GROUP_M=GROUP_M,
            )


def _wgrad_one(grad_y, y, x, weight, need_bias, stride, padding, dilation, activation, slope,
               gw_out, gb_out):
    """grad_weight into ``gw_out`` (O, C, KH, KW) and grad_bias into ``gb_out`` (O,) (each
    None when not wanted), in their dtype: split-K float32 partials, then one reduction
    kernel each."""
    xp = get_array_module(grad_y)
    n, c, h, w, o, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = _geometry(x, weight, stride, padding, dilation)
    kc, p = c * kh * kw, n * oh * ow
    packed = kc <= PACKED_MAX_K and c < 16
    splits, per_split = split_k(KERNELS["wgrad"], o, kc, p, SPLIT_TILE, MIN_PIXELS_PER_SPLIT)
    dw_part = xp.empty((splits, o, kc), dtype=np.float32)
    db_part = xp.empty((splits, o), dtype=np.float32) if need_bias else dw_part

    def grid(meta):
        cols = triton.cdiv(kc, meta["BLOCK_N"]) if packed else kh * kw * triton.cdiv(c, meta["BLOCK_N"])
        return (triton.cdiv(o, meta["BLOCK_M"]) * cols, splits)

    KERNELS["wgrad"][grid](
        arg(grad_y), arg(y if y is not None else grad_y), arg(x),
        kernel_arg(dw_part), kernel_arg(db_part),
        n, c, h, w, o, oh, ow, *strides(grad_y), *strides(x), ph, pw, float(slope), per_split,
        KH=kh, KW=kw, STRIDE_H=sh, STRIDE_W=sw, DIL_H=dh, DIL_W=dw,
        ACTIVATION=_ACTIVATIONS[activation], NEED_BIAS=need_bias, PACKED=packed,
        INT64=needs_int64(grad_y, y, x, dw_part, db_part), PRECISION=precision(x.dtype), GROUP_M=GROUP_M,
    )
    if gw_out is not None:
        sum_partials(dw_part, gw_out, c, kw)
    if gb_out is not None:
        sum_partials(db_part.reshape(splits, o, 1), gb_out)


def conv2d_backward(grad_y, x, weight, y, stride, padding, dilation, groups, activation=None,
                    negative_slope=0.01, needs=(True, True, True)):
    """Gradients of ``conv2d_forward`` with respect to x, weight and bias.

    The activation's derivative is applied to ``grad_y`` as it is loaded, from the saved
    output ``y`` (only read when ``activation`` is set). grad-weight and grad-bias come
    from one kernel (float32 partial sums, cast to the input dtype at the end).

    Returns:
        ``(grad_x, grad_weight, grad_bias)``; an entry is None when ``needs[i]`` is False.
    """
    xp = _check(x, weight, None, groups)
    grad_y, x, weight, y = kernel_view(grad_y), kernel_view(x), kernel_view(weight), kernel_view(y)
    needs = tuple(bool(v) for v in needs)
    if activation is None:
        y = None
    o, c = weight.shape[0], x.shape[1]
    cg, og = c // groups, o // groups
    grad_x = xp.empty(x.shape, dtype=x.dtype) if needs[0] else None
    if grad_y.size == 0 or x.size == 0:
        if grad_x is not None:
            grad_x[...] = 0
        return (grad_x, xp.zeros(weight.shape, dtype=x.dtype) if needs[1] else None,
                xp.zeros((o,), dtype=x.dtype) if needs[2] else None)
    gw = xp.empty(weight.shape, dtype=x.dtype) if needs[1] else None  # every group fills its rows
    gb = xp.empty((o,), dtype=x.dtype) if needs[2] else None
    if y is not None and strides(y) != strides(grad_y):
        # the kernels read dy and y with one set of strides: lay both out the same, once
        y, grad_y = xp.ascontiguousarray(y), xp.ascontiguousarray(grad_y)
    for g in range(groups):
        xs, cs = slice(g * og, (g + 1) * og), slice(g * cg, (g + 1) * cg)
        gy_g = grad_y[:, xs]
        y_g = None if y is None else y[:, xs]
        if needs[0]:
            _dgrad_one(gy_g, y_g, weight[xs], grad_x[:, cs], stride, padding, dilation,
                       activation, negative_slope)
        if needs[1] or needs[2]:
            _wgrad_one(gy_g, y_g, x[:, cs], weight[xs], needs[2], stride, padding, dilation,
                       activation, negative_slope, gw[xs] if needs[1] else None, gb[xs] if needs[2] else None)
    return grad_x, gw, gb
