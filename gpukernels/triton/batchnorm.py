"""Batch normalisation in Triton: training and eval forward, and the backward, for
(N, C) and (N, C, ...) inputs in any memory layout (NCHW, channels-last, strided views).
This file holds the configs and launchers; the jit kernels are in ``batchnorm_kernels.py``.

The reference (the oracle every kernel is tested against) is
``gpukernels.cpu.batchnorm``: the same function names, arguments and semantics
(PyTorch's: biased batch variance normalises x, the unbiased one moves the running
variance; ``running = (1 - momentum) running + momentum batch``, in place).

Formulas (per channel c; its M = N*H*W values x; g = dL/dy)
-------------------------------------------------------------
    mean = sum(x) / M,  var = sum((x - mean)^2) / M,  inv_std = 1 / sqrt(var + eps)
    forward   y = a (x - mean) + beta,          a = gamma inv_std
    backward  dbeta = sum(g),  dgamma = inv_std sum(g (x - mean))
              training: dx = a g + k (x - mean) + k0,
                        k = -a inv_std^2 sum(g (x - mean)) / M,  k0 = -a dbeta / M
              eval:     dx = a g
x - mean is formed in float32 for each element (never a x + (beta - a mean)): with
|mean| >> std the two big products would cancel and lose the digits of y.

Statistics: Welford per lane, Chan across lanes and programs
--------------------------------------------------------------
Each program of ``_bn_stats_kernel`` owns a block of channels and a chunk of their
values. Every lane of its tile keeps a Welford pair (mean, M2) of ``x - shift`` (with
one count per lane), where ``shift`` is the chunk's first value of the channel: the
running means stay O(std) even for x = 1000 + noise, so the float32 rounding of
``mean += d / n`` stays at the noise's scale. The lanes are merged with Chan's k-way
formula, n = sum n_l, mean = sum n_l mean_l / n, M2 = sum M2_l + sum n_l (mean_l -
mean)^2 (plain ``tl.sum``s of small numbers; a ``tl.reduce`` with a Welford combine
function would do the same, but Triton's interpreter runs such a reduction one
element at a time), and the program writes its partial (count, mean, M2) per channel.
The partials are merged the same way, blocks of them at a time with means relative to
split 0's and the blocks pairwise (``_welford_combine``). Nothing forms sum(x^2)/M -
mean^2, so nothing cancels. The backward's sums are float32 sums of g and
g (x - mean) (the mean known), per lane, then per program, then over the programs.

Kernels and memory traffic (S = bytes of x; partials are (3 or 2) x splits x C floats)
------------------------------------------------------------------------------------
  _bn_stats_kernel       read x                        -> partials, snapshot of the
                                                          running stats
  _bn_fwd_finalize_kernel  merge partials (C x splits)  -> mean, inv_std, running stats
  _bn_fwd_apply_kernel   read x, write y; merges the partials itself when there are
                         few (FUSE_MAX_SPLITS), else reads the finalize kernel's
                         mean/inv_std; eval reads the running statistics instead
  _bn_bwd_reduce_kernel  read g, x                     -> partial sum(g), sum(g (x-mean))
  _bn_bwd_finalize_kernel  merge partials              -> dgamma, dbeta, float32 sums
  _bn_bwd_apply_kernel   read g (and x when training), write dx; merges the partials
                         itself when there are few

  training forward  3 S (x twice, y once)     eval forward   2 S
  training backward 5 S (g, x twice, dx once) eval backward  2 S (dx) + 2 S (dgamma, dbeta)
Launches: training forward 2 (3 with many splits), eval forward 1, training backward 2
(3 with many splits). Keeping a whole channel in registers (x read once) would need
C programs of N*H*W values each, too few programs for a GPU at ResNet shapes.
``_bn_stats_kernel`` loads x with ``evict_last`` and the apply kernels with
``evict_first``, so that the second read of a tensor that fits in L2 (50 MB on an
H100) can hit there (a cache hint: not measured on a GPU yet).

Layouts: the non-channel dimensions of all the arrays of a call are collapsed jointly
into at most two, (R_OUT, R_IN), by merging neighbours whose strides allow it (NCHW:
(N, H*W); channels-last: (N*H*W, 1); (N, C): (N, 1)); each array keeps its own
strides (sc, so, si), so x, g, y, dx may differ. Three groups that will not merge (a
cropped view) make the inputs contiguous first. Channels-last (channel stride 1) tiles
take BLOCK_C = 64 channels x rows; the others one channel x a run of R_IN. The tile
walk has one integer division per tile, never per element. Outputs (y, dx) are dense
with x's dimension order (channels-last in, channels-last out, as PyTorch).

Known traps avoided:
- a stride-0 broadcast view or a read-only / negatively strided NumPy array would be
  copied by ``kernel_arg`` behind the launcher's back (its strides then wrong): such
  inputs are made contiguous explicitly first;
- the running statistics are updated from a snapshot the stats kernel takes, so the
  autotuner's repeated launches of the apply kernel cannot apply the momentum twice;
- offsets are int32 unless an array reaches 2**31 elements; then INT64 widens the
  channel, row and column indices (not the strides: a stride of 1 is specialised to a
  constexpr, which has no ``.to``);
- out-of-range lanes are masked, not clamped: ``tl.where`` on an index destroys
  Triton's contiguity analysis and with it the 16-byte vector loads, and masked lanes
  issue no memory access (plain predicated loads, no cp.async here).

Dtypes: x (and g) float32, float16, or bf16 as uint16; all arithmetic in float32.
weight, bias and the running statistics are float32 or x's dtype (nn.BatchNorm2d keeps
them float32 while x may be half). ``mean`` and ``inv_std`` are returned as float32
(C,) arrays whatever x's dtype (the reference rounds them to x's dtype; PyTorch's
cuDNN path keeps them float32 too); the backward takes either. dgamma and dbeta have
weight's dtype (x's when weight is None).
"""

from __future__ import annotations

import numpy as np
import triton

from .. import backend
from ..backend import get_array_module, kernel_arg
from .activation import relu_backward, relu_forward
from ._common import FLOAT_DTYPES, Tuned, arg, check_float, dtype_name, kernel_view, needs_int64, strides, to_float32
from .batchnorm_kernels import (
    _bn_bwd_apply_kernel, _bn_bwd_finalize_kernel, _bn_bwd_reduce_kernel, _bn_fwd_apply_kernel, _bn_fwd_finalize_kernel,
    _bn_stats_kernel,
)

# ----------------------------------------------------------------------------- configs

# (TILE, num_warps, num_stages): TILE values per loop step of one program (BLOCK_C
# channels x TILE / BLOCK_C rows). Each spill-free on sm_80 and sm_90 (python -m
# gpukernels.triton.aot --family batchnorm).
GPU_CONFIGS = {
    "stats": [(1024, 4, 1), (2048, 4, 1), (2048, 8, 1), (4096, 8, 1), (4096, 8, 2), (8192, 16, 1)],
    "fwd_apply": [(1024, 4, 1), (2048, 4, 1), (2048, 8, 1), (4096, 8, 1), (4096, 8, 2), (8192, 16, 1)],
    "bwd_reduce": [(1024, 4, 1), (2048, 4, 1), (2048, 8, 1), (4096, 8, 1), (4096, 8, 2), (8192, 16, 1)],
    "bwd_apply": [(1024, 4, 1), (2048, 4, 1), (2048, 8, 1), (4096, 8, 1), (4096, 8, 2), (8192, 16, 1)],
}
#: Under the interpreter: one big tile per step and up to INTERPRET_BLOCK_C channels per
#: program whatever the layout, since the interpreter pays per program, per op and
#: (dearly: it re-patches triton.language) per call of a jit helper, hardly per element.
INTERPRET_CONFIG = (16384, 4, 1)
INTERPRET_BLOCK_C = 16
#: Channels per program when the channel stride is 1 (channels-last, (N, C)): 64 float32
#: = two 128-byte lines per row of the tile.
CL_BLOCK_C = 64
#: Largest INNER (power of two >= R_IN) compiled: more than any TILE, so it only caps
#: the number of kernel variants.
MAX_INNER = 8192
#: Splits of the reduction (programs per channel block): enough programs for a GPU
#: (4 per SM of an H100), each with at least MIN_CHUNK values, at most MAX_SPLITS.
TARGET_PROGRAMS = 528
MIN_CHUNK = 4096
MAX_SPLITS = 1024
#: Up to this many splits the apply kernels merge the partials themselves (one launch
#: less); past it a finalize kernel does it once per channel.
FUSE_MAX_SPLITS = 16
#: Values of the (splits x channels) partial tile a finalize program merges per step.
FINALIZE_TILE = 2048
FINALIZE_WARPS = 4
#: Tests set this to exercise several splits under the interpreter (None: one split).
SPLITS_INTERPRET = None

_KEY = ["C", "R_OUT", "R_IN", "S", "BLOCK_C", "INNER"]
#: The autotuned kernels; ``knobs.override(configs={KERNELS[kind]: cfg})`` pins one config (tests).
KERNELS = {
    "stats": Tuned(_bn_stats_kernel, ("TILE",), GPU_CONFIGS["stats"], _KEY + ["HAS_RUNNING"], INTERPRET_CONFIG),
    "fwd_apply": Tuned(_bn_fwd_apply_kernel, ("TILE",), GPU_CONFIGS["fwd_apply"],
                       _KEY + ["STATS", "HAS_WEIGHT", "HAS_BIAS", "HAS_RUNNING"], INTERPRET_CONFIG),
    "bwd_reduce": Tuned(_bn_bwd_reduce_kernel, ("TILE",), GPU_CONFIGS["bwd_reduce"], _KEY, INTERPRET_CONFIG),
    "bwd_apply": Tuned(_bn_bwd_apply_kernel, ("TILE",), GPU_CONFIGS["bwd_apply"],
                       _KEY + ["TRAINING", "COMBINE", "WRITE_DGAMMA", "WRITE_DBETA", "HAS_WEIGHT"], INTERPRET_CONFIG),
}


# ----------------------------------------------------------------------------- launch helpers


def _empty_like_layout(xp, a, dtype):
    """A dense array of ``a``'s shape with its dimension order (by decreasing stride)."""
    order = sorted(range(a.ndim), key=lambda d: -abs(a.strides[d]))
    out = xp.empty(tuple(a.shape[d] for d in order), dtype=dtype)
    return out.transpose(tuple(int(d) for d in np.argsort(order)))


def _collapse(arrays):
    """Collapse the non-channel dimensions of same-shaped ``arrays`` jointly into at most
    two, (R_OUT, R_IN): neighbours merge when, in every array, the outer one's stride is
    the inner one's times its size. Returns (R_OUT, R_IN, [(sc, so, si) per array]) in
    elements, or None when three or more groups remain."""
    shape = arrays[0].shape
    st = [strides(a) for a in arrays]
    groups = []  # [size, strides of the group's innermost dimension]
    for d in range(len(shape)):
        if d == 1 or shape[d] == 1:
            continue
        cur = [s[d] for s in st]
        if groups and all(g == shape[d] * s for g, s in zip(groups[-1][1], cur)):
            groups[-1] = [groups[-1][0] * shape[d], cur]
        else:
            groups.append([shape[d], cur])
    if len(groups) > 2:
        return None
    while len(groups) < 2:  # one group: all rows, one column
        groups.append([1, [0] * len(arrays)])
    (r_out, so), (r_in, si) = groups
    return r_out, r_in, [(s[1], o, i) for s, o, i in zip(st, so, si)]


def _layout(xp, inputs, make_outputs):
    """Inputs made kernel-ready, outputs allocated (by ``make_outputs(first_input)``), and
    their joint (R_OUT, R_IN, strides); everything contiguous if the views will not
    collapse to two dimensions."""
    inputs = [kernel_view(a) for a in inputs]
    if _collapse(inputs) is None:
        inputs = [xp.ascontiguousarray(a) for a in inputs]
    outputs = make_outputs(inputs[-1])
    geo = _collapse(inputs + [o for o in outputs if o is not None])
    if geo is None:  # an input's order differs from x's: all C-contiguous collapse
        inputs = [xp.ascontiguousarray(a) for a in inputs]
        outputs = [None if o is None else xp.ascontiguousarray(o) for o in outputs]
        geo = _collapse(inputs + [o for o in outputs if o is not None])
    return inputs, outputs, geo


def _tiling(c, r_out, r_in, sc_x):
    """(BLOCK_C, INNER): 64 channels per program when x's channel stride is 1, else one
    (INTERPRET_BLOCK_C under the interpreter); INNER the power of two >= R_IN (capped)
    that sizes a tile's columns."""
    if sc_x == 1 and c > 1:
        block_c = CL_BLOCK_C
    else:
        block_c = INTERPRET_BLOCK_C if backend.interpreting() else 1
    return min(block_c, triton.next_power_of_2(c)), min(triton.next_power_of_2(max(r_in, 1)), MAX_INNER)


def _splits(c, block_c, m):
    """Programs sharing each channel block's M values."""
    if backend.interpreting():
        return max(1, min(SPLITS_INTERPRET or 1, m))
    blocks = triton.cdiv(c, block_c)
    most = max(1, m * min(block_c, c) // MIN_CHUNK)
    return max(1, min(triton.cdiv(TARGET_PROGRAMS, blocks), most, MAX_SPLITS))


def _finalize_blocks(s):
    block_s = min(triton.next_power_of_2(s), 256)
    return block_s, max(1, FINALIZE_TILE // block_s)


def _check_input(op, x, name="x"):
    if getattr(x, "ndim", 0) < 2:
        raise ValueError(f"{op}: {name} must have shape (N, C) or (N, C, ...), got shape {getattr(x, 'shape', None)}")
    check_float(op, x)


def _param(op, xp, name, a, c, x, writable=False):
    """A per-channel (C,) array of float32 or x's dtype, on x's device, contiguous."""
    if a is None:
        return None
    if getattr(a, "shape", None) != (c,):
        raise ValueError(f"{op}: {name} must have shape ({c},) for {c} channels, got {getattr(a, 'shape', None)}")
    if a.dtype not in (np.dtype(np.float32), x.dtype):
        raise TypeError(f"{op}: {name} must be float32 or x's dtype ({dtype_name(x.dtype)}), got {a.dtype}")
    if backend.device_of(a) != backend.device_of(x):
        raise RuntimeError(f"{op}: {name} is on {backend.device_of(a)}, x on {backend.device_of(x)}")
    if writable and isinstance(a, np.ndarray) and not a.flags.writeable:
        raise ValueError(f"{op}: {name} is updated in place but is a read-only array")
    return a


def _contiguous_copy(xp, a):
    """(kernel array, array to copy back into afterwards or None)."""
    if a is None or a.flags.c_contiguous:
        return a, None
    return xp.ascontiguousarray(a), a


def _stats_dtype_float32(xp, a):
    if a.dtype == np.float32:
        return xp.ascontiguousarray(a)
    if a.dtype not in FLOAT_DTYPES and a.dtype != np.float64:
        raise TypeError(f"batch_norm_backward: mean / inv_std must be floating, got {a.dtype}")
    return xp.ascontiguousarray(to_float32(xp, a))


# ----------------------------------------------------------------------------- launchers


def batch_norm_forward(x, running_mean, running_var, weight, bias, training, momentum, eps, activation=None):
    """Batch norm forward: y = gamma (x - mean) inv_std + beta per channel (axis 1).

    Training normalises with the batch mean and biased variance (float32 Welford/Chan
    statistics) and, when running statistics are given, moves them in place:
    ``running_mean = (1 - momentum) running_mean + momentum mean`` and likewise the
    running variance towards the unbiased variance ``var * M / (M - 1)``. Eval uses the
    running statistics.

    Args:
        x: (N, C) or (N, C, ...) float32 / float16 / bf16-as-uint16 array (CuPy, or NumPy
            under ``interpret``); any strides.
        running_mean, running_var: (C,) float32 or x-dtype arrays, both or neither
            (required when ``training`` is False); updated in place when training.
        weight, bias: (C,) float32 or x-dtype arrays, or None (gamma = 1, beta = 0).
        training: batch statistics (True) or running ones (False).
        momentum, eps: as ``torch.nn.functional.batch_norm``.
        activation: None, or "relu": y = max(y, 0) (applied by ``relu_forward`` after
            the apply kernel, not fused into it yet).

    Returns:
        ``(y, mean, inv_std)``: y of x's shape and dtype, dense in x's dimension order;
        mean and inv_std float32 (C,), what normalised x (saved for the backward).
    """
    op = "batch_norm_forward"
    if activation not in (None, "relu"):
        raise ValueError(f"{op}: activation must be None or 'relu', got {activation!r}")
    xp = get_array_module(x)
    _check_input(op, x)
    c = x.shape[1]
    running_mean = _param(op, xp, "running_mean", running_mean, c, x, writable=True)
    running_var = _param(op, xp, "running_var", running_var, c, x, writable=True)
    weight = kernel_view(_param(op, xp, "weight", weight, c, x))
    bias = kernel_view(_param(op, xp, "bias", bias, c, x))
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op}: give both running_mean and running_var, or neither")
    if not training and running_mean is None:
        raise ValueError(f"{op}: eval mode (training=False) needs running_mean and running_var")
    m = x.size // c if c else 0
    if training and c and m == 0:
        raise ValueError(f"{op}: training needs at least one value per channel, got x of shape {x.shape}")
    stats = xp.empty((2, c), np.float32)
    (x,), (y,), (r_out, r_in, ((sxc, sxo, sxi), (syc, syo, syi))) = _layout(
        xp, [x], lambda x0: [_empty_like_layout(xp, x0, x0.dtype)])
    if c == 0 or m == 0:  # eval on an empty batch: only the statistics
        if c:
            stats[0] = to_float32(xp, running_mean)
            stats[1] = 1.0 / xp.sqrt(to_float32(xp, running_var) + np.float32(eps))
        return y, stats[0], stats[1]

    rm, rm_back = _contiguous_copy(xp, running_mean)
    rv, rv_back = _contiguous_copy(xp, running_var)
    has_running = training and rm is not None
    block_c, inner = _tiling(c, r_out, r_in, sxc)
    s = _splits(c, block_c, m)
    int64 = needs_int64(x, y)
    grid = (triton.cdiv(c, block_c), s)
    dummy = stats
    common = dict(INT64=int64, BLOCK_C=block_c, INNER=inner)
    if training:
        part = xp.empty(3 * s * c + 2 * c, np.float32)  # (3, S, C) partials, then the running snapshot
        KERNELS["stats"][grid](
            arg(x), kernel_arg(part), arg(rm if has_running else dummy), arg(rv if has_running else dummy),
            c, r_out, r_in, s, sxc, sxo, sxi, HAS_RUNNING=has_running, **common)
        if s <= FUSE_MAX_SPLITS:
            mode, block_s = 1, triton.next_power_of_2(s)
        else:
            block_s, fin_c = _finalize_blocks(s)
            _bn_fwd_finalize_kernel[(triton.cdiv(c, fin_c),)](
                kernel_arg(part), kernel_arg(stats), arg(rm if has_running else dummy),
                arg(rv if has_running else dummy), c, s, float(momentum), float(eps),
                HAS_RUNNING=has_running, BLOCK_S=block_s, BLOCK_C=fin_c, num_warps=FINALIZE_WARPS)
            mode, block_s = 0, 1
    else:
        part, mode, block_s = dummy, 2, 1
    KERNELS["fwd_apply"][grid](
        arg(x), arg(y), kernel_arg(part), kernel_arg(stats),
        arg(weight if weight is not None else dummy), arg(bias if bias is not None else dummy),
        arg(rm if rm is not None else dummy), arg(rv if rv is not None else dummy),
        c, r_out, r_in, s, float(momentum), float(eps), sxc, sxo, sxi, syc, syo, syi,
        STATS=mode, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, HAS_RUNNING=has_running,
        BLOCK_S=block_s, **common)
    if has_running:
        for src, back in ((rm, rm_back), (rv, rv_back)):
            if back is not None:
                back[...] = src
    if activation == "relu":  # not fused into fwd_apply yet: one more pass over y
        y = relu_forward(y)
    return y, stats[0], stats[1]


def batch_norm_backward(grad_y, x, mean, inv_std, weight, training, needs=(True, True, True), y=None):
    """Gradients of ``batch_norm_forward`` with respect to x, weight and bias.

    dbeta = sum(g), dgamma = inv_std sum(g (x - mean)) per channel; training:
    dx = a (g - dbeta / M - (x - mean) inv_std dgamma / M), a = gamma inv_std (the
    batch statistics depend on x); eval: dx = a g. Two passes over g and x at most
    (float32 partial sums, then dx), see the module docstring.

    Args:
        grad_y: dL/dy, x's shape and dtype (float32 / float16 / bf16-as-uint16), any strides.
        x: the forward's input.
        mean, inv_std: (C,) what the forward returned (float32; any float dtype is taken).
        weight: (C,) float32 or x-dtype gamma, or None.
        training: whether the forward used batch statistics.
        needs: which of (dx, dgamma, dbeta) to compute.
        y: the forward's output when it applied ``activation="relu"`` (grad_y is then the
            gradient of that ReLU's output): grad_y is first masked by ``y > 0``, by
            ``relu_backward`` (one more pass), or None.

    Returns:
        ``(dx, dgamma, dbeta)``: dx of x's dtype, dense in x's dimension order; dgamma and
        dbeta (C,) in weight's dtype (x's when weight is None); None where ``needs`` says.
    """
    op = "batch_norm_backward"
    xp = get_array_module(grad_y, x)
    needs = tuple(bool(v) for v in needs)
    if y is not None:
        grad_y = relu_backward(grad_y, y)
    _check_input(op, x)
    _check_input(op, grad_y, "grad_y")
    check_float(op, grad_y, x)
    if grad_y.shape != x.shape:
        raise ValueError(f"{op}: grad_y has shape {grad_y.shape}, x has {x.shape}")
    c = x.shape[1]
    weight = kernel_view(_param(op, xp, "weight", weight, c, x))
    for name, v in (("mean", mean), ("inv_std", inv_std)):
        if getattr(v, "shape", None) != (c,):
            raise ValueError(f"{op}: {name} must have shape ({c},), got {getattr(v, 'shape', None)}")
    mean, inv_std = _stats_dtype_float32(xp, mean), _stats_dtype_float32(xp, inv_std)
    pdt = weight.dtype if weight is not None else x.dtype
    dgamma = xp.empty((c,), pdt) if needs[1] else None
    dbeta = xp.empty((c,), pdt) if needs[2] else None
    m = x.size // c if c else 0
    (grad_y, x), (dx,), (r_out, r_in, geo) = _layout(
        xp, [grad_y, x], lambda x0: [_empty_like_layout(xp, x0, x0.dtype) if needs[0] else None])
    if c == 0 or m == 0:  # nothing to sum: zero gradients
        for a in (dx, dgamma, dbeta):
            if a is not None:
                a[...] = 0
        return dx, dgamma, dbeta
    (sgc, sgo, sgi), (sxc, sxo, sxi) = geo[:2]
    sdc, sdo, sdi = geo[2] if dx is not None else geo[1]

    block_c, inner = _tiling(c, r_out, r_in, sxc)
    s = _splits(c, block_c, m)
    int64 = needs_int64(grad_y, x, dx)
    grid = (triton.cdiv(c, block_c), s)
    common = dict(INT64=int64, BLOCK_C=block_c, INNER=inner)
    want_sums = needs[1] or needs[2] or (training and needs[0])
    dummy = mean
    part = sums = dummy
    combine, block_s = False, 1
    if want_sums:
        part = xp.empty((2, s, c), np.float32)
        KERNELS["bwd_reduce"][grid](
            arg(grad_y), arg(x), kernel_arg(mean), kernel_arg(part),
            c, r_out, r_in, s, sgc, sgo, sgi, sxc, sxo, sxi, **common)
        combine = needs[0] and s <= FUSE_MAX_SPLITS
        if combine:
            block_s = triton.next_power_of_2(s)
        else:
            sums = xp.empty((2, c), np.float32)
            fin_s, fin_c = _finalize_blocks(s)
            _bn_bwd_finalize_kernel[(triton.cdiv(c, fin_c),)](
                kernel_arg(part), kernel_arg(inv_std), kernel_arg(sums),
                arg(dgamma if dgamma is not None else dummy), arg(dbeta if dbeta is not None else dummy),
                c, s, WRITE_DGAMMA=needs[1], WRITE_DBETA=needs[2], BLOCK_S=fin_s, BLOCK_C=fin_c,
                num_warps=FINALIZE_WARPS)
    if needs[0]:
        KERNELS["bwd_apply"][grid](
            arg(grad_y), arg(x), arg(dx), kernel_arg(part), kernel_arg(sums), kernel_arg(mean),
            kernel_arg(inv_std), arg(weight if weight is not None else dummy),
            arg(dgamma if dgamma is not None else dummy), arg(dbeta if dbeta is not None else dummy),
            c, r_out, r_in, s, float(m), sgc, sgo, sgi, sxc, sxo, sxi, sdc, sdo, sdi,
            TRAINING=bool(training), COMBINE=combine, WRITE_DGAMMA=combine and needs[1],
            WRITE_DBETA=combine and needs[2], HAS_WEIGHT=weight is not None, BLOCK_S=block_s, **common)
    return dx, dgamma, dbeta
