"""Linear layer in Triton: y = x W^T + b and its three gradients, all from one tiled
GEMM kernel launched with different strides (no transposed copy is ever made).

The reference (the oracle every kernel is tested against) is
``gpukernels.cpu.linear``: the same function names and arguments. x may have any
number of leading dimensions, (..., in); they are flattened into the GEMM's rows
(a view when their strides allow it, else a copy made by ``reshape``).

Three GEMMs C[m, n] = sum_k A[m, k] B[k, n], with M = batch rows, I = in, O = out:

    forward   y[m, o]  = sum_i x[m, i] W[o, i] + b[o]   A = x (M, I),    B = W^T: B[i, o] = W[o, i]
    grad-x    dx[m, i] = sum_o dy[m, o] W[o, i]         A = dy (M, O),   B = W (O, I)
    grad-W    dW[o, i] = sum_m dy[m, o] x[m, i]         A = dy^T: A[o, m] = dy[m, o],  B = x (M, I)
    grad-b    db[o]    = sum_m dy[m, o]                 the row sums of grad-W's A, fused

Each program owns a (BLOCK_M, BLOCK_N) tile of C in float32 registers and walks K in
BLOCK_K steps with ``tl.dot`` (tensor cores: TF32 for float32 unless
``backend.set_allow_tf32(False)``, else fp16/bf16 with float32 accumulation); tiles are
visited in grouped order (GROUP_M row tiles share a column tile while it is in L2).
Transposes are only strides: every operand is read in its own layout, and tl.dot takes
the K-contiguous (x, dy) and the M- or N-contiguous (W, dy^T, x) tiles alike. Any
strides are accepted (stride-0 broadcast views included); a read-only or negatively
strided NumPy array, which ``kernel_arg`` refuses, goes through ``kernel_view`` first, so
the strides passed are those of the copy it makes. The bias is made contiguous (it is
read as bias[n]).

Epilogues: the forward adds the bias to the float32 accumulator before its one store of
y. grad-W sums the rows of each A (= dy^T) tile it already loaded into db (programs of
column tile 0 store it): db costs no extra read of dy. When the M*N tiles of grad-W
cannot fill the GPU but its K (the batch) is long, K is split over SPLIT programs that
each write a float32 partial (SPLIT, O, I) and (SPLIT, O); the launcher adds them
(deterministic: no atomics). db alone (weights frozen) is the same kernel with
B = one 1.0 broadcast by zero strides (N = 1) in full float32.

Memory traffic (ideal, e = itemsize): each GEMM reads A once per column tile and B once
per row tile (grouped order keeps the re-reads in L2) and writes C once: the forward
M*I*e + O*I*e + M*O*e at best; no intermediate (transposed x or dy, bias-add pass,
separate db reduction) touches memory.

Traps avoided:
- rows and columns past the tile edge are wrapped (``% M``, ``% N``) to valid ones, so
  A and B loads need no M/N mask and never leave their tensors; the K tail is masked
  without a clamp (see the kernel: a per-element clamp costs 16-bit GEMMs their
  vectorised, pipelined loads), its masked lanes are never read;
- int32 offsets overflow at 2**31 elements: past that the kernel is compiled with INT64
  and its row/column/K indices are int64 (strides are widened with ``tl.cast``, not
  ``.to``: a stride equal to 1 reaches the kernel as a constexpr int);
- float32 partial sums of split-K are added in a fixed order: the same result every run.
"""

from __future__ import annotations

import numpy as np
import triton
import triton.language as tl

from ..backend import get_array_module
from ._common import (Tuned, arg, check_float, grouped_tile, kernel_view, needs_int64, split_k, strides,
                      sum_partials)
from ._common import precision as dot_precision

# ----------------------------------------------------------------------------- kernel


@triton.jit
def _linear_gemm_kernel(
    a_ptr, b_ptr, bias_ptr, c_ptr, rowsum_ptr,
    M, N, K,
    sam, sak, sbk, sbn, scm, scn,
    split_c, split_r, k_per_split,
    HAS_BIAS: tl.constexpr, ROW_SUMS: tl.constexpr, INT64: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """For split s = program_id(1), over k in [s * k_per_split, (s + 1) * k_per_split):

    c[s, m, n]    = sum_k a[m, k] b[k, n]  (+ bias[n] if HAS_BIAS)
    rowsum[s, m]  = sum_k a[m, k]          (if ROW_SUMS; stored by column tile 0)

    c and rowsum of split s start at s * split_c and s * split_r elements.
    """
    pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    split = tl.program_id(1)
    if INT64:  # int64 indices (and strides): every offset below is int64
        pid_m, pid_n, split = tl.cast(pid_m, tl.int64), tl.cast(pid_n, tl.int64), tl.cast(split, tl.int64)
        sam, sak = tl.cast(sam, tl.int64), tl.cast(sak, tl.int64)
        sbk, sbn = tl.cast(sbk, tl.int64), tl.cast(sbn, tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # rows/columns past the edge wrap to valid ones (their results are never stored):
    # loads need no mask along M and N, and stay contiguous where M, N are multiples of 16
    a_rows = (offs_m % M) * sam
    b_cols = (offs_n % N) * sbn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    rows = tl.zeros((BLOCK_M,), dtype=tl.float32)
    k_start = split * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    for k0 in range(k_start, k_end, BLOCK_K):
        # k_per_split is a whole number of BLOCK_K steps: only K itself cuts a tile. The K
        # tail is masked, not clamped: a clamp (tl.where / minimum per element) hides the
        # contiguity of offs_k from Triton, whose 16-bit loads then lose their vector width
        # and their asynchronous multi-stage pipeline (seen in the ahead-of-time build:
        # one stage of shared memory, operands staged through registers). A masked lane is
        # predicated off (cp.async zero-fill): its address is never read.
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        a = tl.load(a_ptr + a_rows[:, None] + offs_k[None, :] * sak, mask=k_ok[None, :], other=0.0)
        b = tl.load(b_ptr + offs_k[:, None] * sbk + b_cols[None, :], mask=k_ok[:, None], other=0.0)
        if ROW_SUMS:  # every column tile sums (cheap, in registers); tile 0 stores
            rows += tl.sum(a.to(tl.float32), axis=1)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)

    # epilogue: bias on the float32 accumulator, one store of the tile. The store masks are
    # formed only here: made before the K loop, they stayed live through it, and with
    # INT64 (64-bit compares) ptxas 12.8 (Triton 3.6, sm_90) spilled 36 bytes of the
    # 32x64x64 bf16 grad-W tile
    m_ok = offs_m < M
    n_ok = offs_n < N
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n % N).to(tl.float32)[None, :]
    c_offs = split * split_c + offs_m[:, None] * scm + offs_n[None, :] * scn
    tl.store(c_ptr + c_offs, acc.to(c_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])
    if ROW_SUMS:
        if pid_n == 0:
            tl.store(rowsum_ptr + split * split_r + offs_m, rows.to(rowsum_ptr.dtype.element_ty), mask=m_ok)


# ----------------------------------------------------------------------------- configs

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) per GEMM and element width (float32
# tiles take twice the shared memory of 16-bit ones; each fits the 163 KiB of an A100).
#
# Two regimes, both compiled by aot_specs.py for sm_80 and sm_90 (python -m
# gpukernels.triton.aot --family linear), every config spill-free in the regime it runs in:
# - aligned operands (16-byte pointers; M, N, K and the non-unit strides multiples of 16:
#   what Triton specialises a launch on, e.g. any 4096 x 4096 layer): vectorised,
#   cp.async-pipelined loads. Every config below.
# - anything else (an odd in_features, a misaligned view): element-wise loads staged
#   through registers. The big tiles spill there (128x256 on sm_80; grad-W, whose fused
#   db also keeps the dy^T tile in registers, from 128x128x64 up), so ``_prune`` lets the
#   autotuner time only the configs listed in UNALIGNED for such launches.
# The small-N tiles serve classifier heads (out = 10).
_FP32 = [(128, 256, 32, 8, 3), (256, 128, 32, 8, 3), (128, 128, 32, 8, 3), (128, 64, 32, 4, 4),
         (64, 128, 32, 4, 4), (64, 64, 32, 4, 4), (64, 32, 64, 4, 3), (32, 32, 64, 4, 3)]
_16BIT = [(128, 256, 64, 8, 3), (256, 128, 64, 8, 3), (128, 128, 64, 8, 4), (64, 256, 32, 8, 3),
          (128, 128, 32, 8, 4), (128, 64, 64, 8, 3), (64, 128, 64, 8, 3), (64, 64, 64, 4, 3), (64, 32, 64, 4, 3)]
GPU_CONFIGS = {
    ("fwd", "fp32"): _FP32, ("dgrad", "fp32"): _FP32,
    ("wgrad", "fp32"): [(128, 256, 32, 8, 3), (128, 128, 32, 8, 3), (64, 128, 32, 4, 4), (64, 64, 32, 8, 3),
                        (64, 32, 32, 4, 3), (32, 64, 32, 4, 3)],
    ("fwd", "16bit"): _16BIT, ("dgrad", "16bit"): _16BIT,
    ("wgrad", "16bit"): [(128, 256, 64, 8, 3), (128, 128, 64, 8, 4), (128, 128, 32, 8, 4), (64, 256, 32, 8, 3),
                         (64, 128, 64, 8, 3), (128, 64, 64, 8, 3), (64, 64, 32, 4, 4), (64, 32, 64, 4, 3),
                         (32, 64, 64, 4, 3)],
}
_BIG = {(128, 256, 32, 8, 3), (256, 128, 32, 8, 3), (128, 256, 64, 8, 3), (256, 128, 64, 8, 3)}
#: The configs that stay spill-free without alignment (the autotuner's choice for such launches).
UNALIGNED = {
    ("fwd", "fp32"): [c for c in _FP32 if c not in _BIG],
    ("dgrad", "fp32"): [c for c in _FP32 if c not in _BIG],
    ("wgrad", "fp32"): [(128, 128, 32, 8, 3), (64, 128, 32, 4, 4), (64, 64, 32, 8, 3), (64, 32, 32, 4, 3),
                        (32, 64, 32, 4, 3)],
    ("fwd", "16bit"): [c for c in _16BIT if c not in _BIG],
    ("dgrad", "16bit"): [c for c in _16BIT if c not in _BIG],
    ("wgrad", "16bit"): [(128, 128, 32, 8, 4), (64, 256, 32, 8, 3), (64, 128, 64, 8, 3), (128, 64, 64, 8, 3),
                         (64, 64, 32, 4, 4), (64, 32, 64, 4, 3), (32, 64, 64, 4, 3)],
}
assert all(set(UNALIGNED[k]) <= set(GPU_CONFIGS[k]) and UNALIGNED[k] for k in GPU_CONFIGS)
# split-K rounds each split to the largest grad-W BLOCK_K: every other one must divide it
assert all(max(b[2] for b in cs) % c[2] == 0
           for (kind, _), cs in GPU_CONFIGS.items() if kind == "wgrad" for c in cs)
INTERPRET_CONFIG = (64, 64, 64, 4, 1)  # big tiles: the interpreter pays per op, not per element
GROUP_M = 8
# Split-K of grad-W (``_common.split_k``): output tiles counted as SPLIT_TILE squares;
# each split keeps at least this many rows.
SPLIT_TILE = 128
MIN_K_PER_SPLIT = 512

_POINTERS = ("a_ptr", "b_ptr", "bias_ptr", "c_ptr", "rowsum_ptr")
_SIZES = ("M", "N", "K", "sam", "sak", "sbk", "sbn", "scm", "scn", "k_per_split")


def _aligned(named_args) -> bool:
    """Would Triton specialise this launch as fully aligned: every pointer on 16 bytes, every
    size and stride a multiple of 16 (a stride of 0 or 1 becomes a constant anyway), and
    each operand contiguous along one of its dimensions (else no load can be vectorised)?"""
    a = named_args
    return (all(a[p].data_ptr() % 16 == 0 for p in _POINTERS)
            and all(a[s] % 16 == 0 or a[s] in (0, 1) for s in _SIZES)
            and 1 in (a["sam"], a["sak"]) and 1 in (a["sbk"], a["sbn"]) and 1 in (a["scm"], a["scn"]))


def _pruner(kind, width):
    safe = {tuple(c) for c in UNALIGNED[(kind, width)]}

    def prune(configs, named_args, **kwargs):
        """All configs for an aligned launch; the ones spill-free without alignment otherwise."""
        if _aligned(named_args):
            return configs
        kept = [c for c in configs
                if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages) in safe]
        return kept or configs

    return prune


_KEY = ["M", "N", "K"]
_BLOCKS = ("BLOCK_M", "BLOCK_N", "BLOCK_K")
#: One Tuned per GEMM and width (each keeps its own autotuning cache, since the three
#: GEMMs of one layer share M, N, K but not their operands' layouts);
#: ``knobs.override(configs={KERNELS[(kind, width)]: cfg})`` pins one (tests).
KERNELS = {key: Tuned(_linear_gemm_kernel, _BLOCKS, configs, _KEY, INTERPRET_CONFIG, prune=_pruner(*key))
           for key, configs in GPU_CONFIGS.items()}


def _width(dtype):
    return "fp32" if np.dtype(dtype) == np.float32 else "16bit"


def _gemm(kind, a, a_strides, b, b_strides, c, c_strides, m, n, k, *, bias=None, rowsum=None,
          precision, splits=1, k_per_split=None, split_c=0, split_r=0):
    """One launch of C (M, N) = A (M, K) B (K, N); operands given as arrays + element strides."""
    width = _width(a.dtype)

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]), splits)

    KERNELS[(kind, width)][grid](
        arg(a), arg(b), arg(bias if bias is not None else c), arg(c),
        arg(rowsum) if rowsum is not None else arg(c),
        m, n, k, *a_strides, *b_strides, *c_strides, split_c, split_r, k_per_split or k,
        HAS_BIAS=bias is not None, ROW_SUMS=rowsum is not None,
        INT64=needs_int64(a, b, c), PRECISION=precision, GROUP_M=GROUP_M,
    )


# ----------------------------------------------------------------------------- launchers


def _rows(a, op, name):
    """(..., F) -> a 2-d (rows, F) view where the strides allow, else a copy."""
    if a.ndim < 1:
        raise ValueError(f"{op}: {name} must have at least 1 dimension, got shape {tuple(a.shape)}")
    rows = int(np.prod(a.shape[:-1]))  # not reshape(-1, F): ambiguous when F == 0
    return kernel_view(a.reshape(rows, a.shape[-1]) if a.ndim != 2 else a)


def _check(op, x, weight, bias=None):
    check_float(op, x, weight, bias)
    if weight.ndim != 2:
        raise ValueError(f"{op}: weight must be 2-d (out_features, in_features), got shape {tuple(weight.shape)}")
    if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"{op}: input of shape {tuple(x.shape)} does not match weight of shape "
                         f"{tuple(weight.shape)} (last input dimension must be {weight.shape[1]})")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{op}: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    return get_array_module(x, weight)


def linear_forward(x, weight, bias):
    """y = x W^T + b: one GEMM with the bias added in its epilogue.

    Args:
        x: (..., in_features) float32/float16/bf16-as-uint16 (CuPy, or NumPy under
            ``interpret``); any strides.
        weight: (out_features, in_features), same dtype, any strides.
        bias: (out_features,) or None.

    Returns:
        y (..., out_features), contiguous, x's dtype.
    """
    xp = _check("linear", x, weight, bias)
    weight = kernel_view(weight)
    if bias is not None:  # read as bias[n]: made contiguous (it is small)
        bias = kernel_view(xp.ascontiguousarray(bias))
    out_f, in_f = weight.shape
    x2 = _rows(x, "linear", "input")
    m = x2.shape[0]
    y = xp.empty((m, out_f), dtype=x.dtype)
    if y.size:
        if in_f == 0:  # nothing to multiply: only the bias remains
            y[...] = 0 if bias is None else bias
        else:
            _gemm("fwd", x2, strides(x2), weight, strides(weight)[::-1], y, strides(y), m, out_f, in_f,
                  bias=bias, precision=dot_precision(x.dtype))
    return y.reshape(*x.shape[:-1], out_f)


def _wgrad(g2, x2, weight, need_w, need_b):
    """dW = g^T x and db = column sums of g, one launch (split-K partials added here)."""
    xp = get_array_module(g2)
    m, out_f = g2.shape
    in_f = x2.shape[1]
    width = _width(g2.dtype)
    gw = xp.empty((out_f, in_f), dtype=g2.dtype) if need_w else None
    gb = xp.empty((out_f,), dtype=g2.dtype) if need_b else None
    if m == 0:  # an empty batch: no gradient
        for a in (gw, gb):
            if a is not None:
                a[...] = 0
        return gw, gb
    g_t = (strides(g2)[1], strides(g2)[0])  # A = g^T, read through strides
    if not need_w:  # db alone: A (out, M) times a broadcast 1.0 (N = 1), full float32
        one = xp.ones((1,), dtype=g2.dtype) if g2.dtype != np.uint16 else xp.full((1,), 0x3F80, np.uint16)
        _gemm("wgrad", g2, g_t, one, (0, 0), gb, (1, 1), out_f, 1, m, precision="ieee")
        return gw, gb
    n = in_f
    splits, per_split = split_k(KERNELS[("wgrad", width)], out_f, n, m, SPLIT_TILE, MIN_K_PER_SPLIT)
    if splits == 1:  # write dW and db in their own dtype directly
        _gemm("wgrad", g2, g_t, x2, strides(x2), gw, strides(gw), out_f, n, m, rowsum=gb,
              precision=dot_precision(g2.dtype))
        return gw, gb
    w_part = xp.empty((splits, out_f, n), dtype=np.float32)
    b_part = xp.empty((splits, out_f), dtype=np.float32) if need_b else None
    _gemm("wgrad", g2, g_t, x2, strides(x2), w_part, (n, 1), out_f, n, m, rowsum=b_part,
          precision=dot_precision(g2.dtype), splits=splits, k_per_split=per_split,
          split_c=out_f * n, split_r=out_f)
    sum_partials(w_part, gw)
    if need_b:
        sum_partials(b_part.reshape(splits, out_f, 1), gb)
    return gw, gb


def linear_backward(grad_y, x, weight, needs=(True, True, True)):
    """Gradients of ``linear_forward``:

        dx = dy W        (..., in)      one GEMM, W read as stored
        dW = dy^T x      (out, in)      one GEMM over the flattened batch, dy read transposed
        db = sum_m dy    (out,)         fused into the dW GEMM (row sums of its dy^T tiles)

    Args:
        grad_y: (..., out_features), any strides (broadcast views included).
        x, weight: the forward's input and weight.
        needs: which of (dx, dW, db) to compute.

    Returns:
        ``(dx, dW, db)`` in x's dtype (float32 accumulation); an entry is None where
        ``needs`` says it is not wanted.
    """
    xp = _check("linear_backward", x, weight)
    check_float("linear_backward", grad_y, x)
    out_f, in_f = weight.shape
    if tuple(grad_y.shape) != (*x.shape[:-1], out_f):
        raise ValueError(f"linear_backward: grad_y must have shape {(*x.shape[:-1], out_f)} for input "
                         f"{tuple(x.shape)} and weight {tuple(weight.shape)}, got {tuple(grad_y.shape)}")
    need_x, need_w, need_b = (bool(v) for v in needs)
    weight = kernel_view(weight)
    g2 = _rows(grad_y, "linear_backward", "grad_y")
    x2 = _rows(x, "linear_backward", "input")
    m = g2.shape[0]
    gx = None
    if need_x:
        gx = xp.empty((m, in_f), dtype=x.dtype)
        if gx.size:
            if out_f == 0:
                gx[...] = 0
            else:
                _gemm("dgrad", g2, strides(g2), weight, strides(weight), gx, strides(gx), m, in_f, out_f,
                      precision=dot_precision(x.dtype))
        gx = gx.reshape(x.shape)
    gw = gb = None
    if need_w or need_b:
        if out_f == 0 or (in_f == 0 and not need_b):
            gw = xp.zeros((out_f, in_f), dtype=x.dtype) if need_w else None
            gb = xp.zeros((out_f,), dtype=x.dtype) if need_b else None
        elif in_f == 0:
            gw = xp.zeros((out_f, in_f), dtype=x.dtype) if need_w else None
            _, gb = _wgrad(g2, x2, weight, False, True)
        else:
            gw, gb = _wgrad(g2, x2, weight, need_w, need_b)
    return gx, gw, gb
