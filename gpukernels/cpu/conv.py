"""The ``numpy`` backend's conv2d: forward and backward as tiled BLAS GEMMs, six paths
(five memory layouts and Winograd's transforms), two threads (formulas:
``gpukernels.reference.conv``).

Where it stands (2-core AMD EPYC VM, OpenBLAS 0.3.31, against PyTorch 2.13's oneDNN
with 2 threads, benchmarks/results/cpu-x2-numpy): forward + backward of the benchmark
layers (k3, batch 64) 64x32x32 at 0.65-0.88x and 128x16x16 (winograd) at 0.9-1.1x, the
ResNet-8 layers at 0.6-0.8x (their 1x1 shortcuts 0.9-1.8x). The im2col paths are
GEMM-bound: OpenBLAS's sgemm peaks at ~100-105 GFLOP/s a core here and the conv GEMMs
run at 60-95 (16-channel shapes ~70), with the copies around them 10-30% of a call;
oneDNN's convs reach ~100-130 a core. float64 matches PyTorch to ~1e-13.

Shapes: ``x`` (N, C, H, W), ``weight`` (O, C/G, KH, KW), ``y`` (N, O, OH, OW); ``G`` is
``groups``, ``Cg = C/G``, ``Og = O/G``, ``Kg = Cg*KH*KW`` (one group's GEMM depth).
This module holds the public functions, the choice of layout path and the threads; the
paths are private modules (``_conv_common`` holds what they share).

Tiles
-----
Materialising im2col for the whole batch (a ``(C*KH*KW, N*OH*OW)`` matrix, 151 MB for
the benchmark layer) costs more memory traffic than the GEMM. So every path walks the
batch in *tiles* of ``b`` images whose working set (columns or frames + GEMM output)
fits ``TILE_BYTES`` (1 MiB, a core's L2 here): one 64-channel 32x32 image already
exceeds it, so such layers use ``b = 1``; the whole batch of the 8x8 digits CNN fits in
one tile. Per tile: build the inputs (cache-hot), GEMM, then bias + activation (forward)
while the output is still in cache; backward rebuilds a tile's inputs rather than saving
the forward's columns. Loops over tiles and over kernel taps (KH*KW) are the only
Python loops.

Six paths (``_path``; CuPy always takes generic)
------------------------------------------------
Every path runs the three products as OpenBLAS GEMMs; what differs is the layout of the
GEMM operands and so the copies around them (and, for winograd, the FLOPs). Chosen by
measurement on the ResNet-20 / CIFAR-10, fast CIFAR and digits layers (batch 128 / 32 /
64, float32, two threads):

* ``winograd`` (``_conv_winograd``, F(2x2, 3x3): 2.25x fewer FLOPs, paid for in
  transforms): 3x3, stride 1, dilation 1, groups 1, float32/64, at least
  WINOGRAD_MIN_CHANNELS input and output channels (WINOGRAD_JIT_MIN_CHANNELS where
  numba compiles the transforms) and outputs WINOGRAD_MIN_OW wide
  (fwd+bwd against nhwc, 2 threads: 128x16x16 b64 63 vs 110 ms, 256x8x8 b32 31 vs 53,
  512x4x4 b32 58 vs 78; at 64 channels and below its transforms cost more than they
  save: 64x8x8 b128 20 vs 15 ms, 64x32x32 b64 115 vs flat's 102);
* ``pointwise`` (``_conv_pointwise``, one GEMM per image, no columns): 1x1 kernels,
  groups 1, no padding, ``C*O >= POINTWISE_MIN_CHANNELS2`` (strided shortcuts);
* ``nhwc`` (``_conv_nhwc``, channels-last columns): groups 1, kernels larger than 1x1,
  ``C > GENERIC_MAX_CHANNELS``, and either stride > 1, ``OW < BATCH_INNER_MAX_OW``, or
  ``O >= NHWC_MIN_CHANNELS`` with ``OW <= NHWC_MAX_OW`` (the 16x16 and 8x8 ResNet
  stages, every strided 3x3), but the backward of stride-1 layers of fewer than
  FLAT_BACKWARD_MAX_CHANNELS inputs with outputs FLAT_BACKWARD_MIN_OW wide or more (the
  32-channel 16x16 stage) takes flat;
* ``flat`` (``_conv_flat``, shifted views of a padded frame): stride 1, wider outputs
  (the 32x32 stages);
* ``batch_inner`` (``_conv_nchw``, batch-innermost columns): grouped convs and 1x1
  kernels with ``OW < BATCH_INNER_MAX_OW``;
* ``generic`` (``_conv_nchw``, NCHW im2col): ``Kg < GENERIC_MAX_DEPTH``, ungrouped convs
  of at most ``GENERIC_MAX_CHANNELS`` inputs (RGB first layers), small or padded strided
  1x1 and grouped strided convs, and CuPy.

Each path module's docstring says how its layout pays. ``knobs.override(conv_cpu_path=
...)`` pins a path (tests run every case on each).

Threads
-------
The pool, the lock and the thread count are shared with batch norm and ReLU; why and
what they cost: ``_parallel``'s module docstring. On NumPy every call runs with BLAS
held to one thread (``_parallel.blas_single``), and one with at least
``_parallel.MIN_PARALLEL_FLOPS`` of work, or ``_parallel.MIN_PARALLEL_BYTES`` of arrays
read and written (the strided 1x1 shortcuts, memory-bound: 16->32 32x32 b128 backward
2.06 -> 1.57 ms, 32->64 16x16 1.75 -> 1.09, on two threads), splits the batch into
``_parallel.NUM_THREADS`` contiguous chunks (``_parallel.run_split``), each worked tile
by tile on its own Python thread (NumPy releases the GIL in copies and GEMMs). Each
thread owns its buffers and its ``grad_w``/``grad_b`` accumulator, summed at the end.
The chunks are fixed by the batch size alone, so the sums, and a training run, are
the same bit for bit run after run. (Tried and dropped: threads taking tiles from one
shared list as they go, so that one slowed down leaves its last tiles to the other.
It cut the time the threads' finishes lay apart in a ResNet-8 b128 step from ~5.3 to
~3 ms, but the step did not get measurably faster, and which thread summed which
tiles changed from run to run, so ``grad_w``'s rounding did too.)
Without threadpoolctl (optional), or while another thread is inside a threaded NumPy
op (``_parallel``'s lock), the tiles run serially on the calling thread, which is also
what small calls do (below ~1e8 flops the thread hand-off costs more than it saves).
"""

from __future__ import annotations

import numpy as np

from .. import knobs
from ..backend import get_array_module
from ..shapes import conv2d_output_size  # noqa: F401 - the family's formula, re-exported
from . import _jit, _parallel
from ._conv_common import flat_ok, geom
from ._conv_flat import flat_backward, flat_forward
from ._conv_nchw import batch_inner_backward, batch_inner_forward, generic_backward, generic_forward
from ._conv_nhwc import nhwc_backward, nhwc_forward
from ._conv_pointwise import pointwise_backward, pointwise_forward, pointwise_ok
from ._conv_winograd import weight_transform, winograd_backward, winograd_forward, winograd_ok

__all__ = ["conv2d_output_size", "conv2d_forward", "conv2d_backward"]

#: Target size in bytes of one tile's working set (about half of a core's 2 MB L2).
TILE_BYTES = 1 << 20
#: GEMM depths (Cg*KH*KW) below this (C = 1 first layers, depthwise) and ungrouped
#: convs with at most GENERIC_MAX_CHANNELS inputs (RGB first layers) use the NCHW
#: im2col: the columns dominate the traffic and are written in runs of OH*OW there,
#: where flat's per-tap grad_w GEMMs would have N = C and nhwc's copies runs of KW*C.
GENERIC_MAX_DEPTH = 16
GENERIC_MAX_CHANNELS = 4
#: Ungrouped stride-1 convs with at least this many output channels and outputs at
#: most NHWC_MAX_OW wide use the channels-last path (so do narrower outputs than
#: BATCH_INNER_MAX_OW and strided convs whatever O).
NHWC_MIN_CHANNELS = 32
NHWC_MAX_OW = 24
#: ... except in the backward of layers with fewer input channels than this and outputs
#: at least FLAT_BACKWARD_MIN_OW wide, which takes flat (fwd / bwd ms, 2 threads, nhwc
#: against flat: 32->32 16x16 b128 6.05 / 12.49 against 6.34 / 11.25, b32 1.53 / 3.31
#: against 1.69 / 2.92; 64->64 16x16 b64 8.57 / 18.09 against 9.54 / 19.18, 32->32
#: 12x12 b128 even).
FLAT_BACKWARD_MAX_CHANNELS = 64
FLAT_BACKWARD_MIN_OW = 16
#: Outputs narrower than this use nhwc, or (grouped, 1x1) the batch-inner layout.
BATCH_INNER_MAX_OW = 12
#: 1x1 convs (groups 1, no padding) with C*O at least this take ``pointwise``
#: (a per-image GEMM of O x C: smaller ones, the digits-size layers, keep generic's).
POINTWISE_MIN_CHANNELS2 = 64
#: 3x3 stride-1 convs with at least this many input and output channels take
#: ``winograd`` (below it its transforms cost more than the FLOPs it saves).
WINOGRAD_MIN_CHANNELS = 128
#: ... or this many where numba compiles its transforms (``_jit``): one pass each instead
#: of 4-8 NumPy operations. fwd+bwd ms, 2 threads, float32, default path against
#: winograd: 64x32x32 b64 105 (flat) vs 83, 32x16x16 b128 24.2 (nhwc / flat) vs 21.0,
#: 64x8x8 b128 23.5 (nhwc) vs 13.5; at 16 channels still 31 (flat) vs 64.
WINOGRAD_JIT_MIN_CHANNELS = 32
#: ... and outputs at least this wide: at 2x2 (one tile an image) it is a wash against
#: nhwc (512x2x2 b32 33 vs 39 ms, 256x2x2 8.2 vs 7.4).
WINOGRAD_MIN_OW = 4
#: Column-buffer budget per tile on CuPy (device memory, no cache argument there).
CUPY_TILE_BYTES = 256 << 20

#: path -> (forward, backward, prepare), the first two working the images [n0, n1) of
#: one call: ``forward(g, x, weight, bias, activation, slope, y, n0, n1, budget)`` writes
#: y's rows, ``backward(g, grad_y, x, weight, y, activation, slope, needs, grad_x, n0,
#: n1, budget)`` writes grad_x's rows and returns that range's (grad_w, grad_b) sums.
#: ``prepare`` (or None) turns the weight into the form both take, once per call rather
#: than once per thread.
_PATHS = {
    "nhwc": (nhwc_forward, nhwc_backward, None),
    "flat": (flat_forward, flat_backward, None),
    "batch_inner": (batch_inner_forward, batch_inner_backward, None),
    "generic": (generic_forward, generic_backward, None),
    "pointwise": (pointwise_forward, pointwise_backward, None),
    "winograd": (winograd_forward, winograd_backward, weight_transform),
}


def _path(g, dtype, backward=False):
    """Which NumPy path serves ``g``'s forward (or, ``backward=True``, its backward):
    thresholds measured on the 2-core dev machine, see the module docstring."""
    forced = knobs.get("conv_cpu_path")  # tests and benchmarks pin a path
    if forced is not None:
        unfit = ((forced == "flat" and not flat_ok(g)) or (forced == "pointwise" and not pointwise_ok(g))
                 or (forced == "winograd" and not winograd_ok(g, dtype)))
        return "generic" if unfit else forced
    if pointwise_ok(g) and g.C * g.O >= POINTWISE_MIN_CHANNELS2:
        return "pointwise"
    min_channels = WINOGRAD_JIT_MIN_CHANNELS if _jit.enabled() else WINOGRAD_MIN_CHANNELS
    if winograd_ok(g, dtype) and min(g.C, g.O) >= min_channels and g.OW >= WINOGRAD_MIN_OW:
        return "winograd"
    if g.Kg < GENERIC_MAX_DEPTH or (g.G == 1 and g.C <= GENERIC_MAX_CHANNELS):
        return "generic"
    if g.G == 1 and g.KH * g.KW > 1:
        small = g.OW < BATCH_INNER_MAX_OW or (g.O >= NHWC_MIN_CHANNELS and g.OW <= NHWC_MAX_OW)
        flat_back = backward and g.Cg < FLAT_BACKWARD_MAX_CHANNELS and g.OW >= FLAT_BACKWARD_MIN_OW
        if (small and not flat_back) or not flat_ok(g):
            return "nhwc"
    if g.OW < BATCH_INNER_MAX_OW:
        return "batch_inner"
    return "flat" if flat_ok(g) else "generic"


def _prepared(prepare, weight):
    """``prepare(weight)`` (a path's weight form), on one BLAS thread like the paths'
    own GEMMs: BLAS's threads would spin on after it and take a core from ours."""
    if prepare is None:
        return weight
    with _parallel.blas_single:
        return prepare(weight)


def conv2d_forward(x, weight, bias, stride, padding, dilation, groups, activation=None, negative_slope=0.01):
    """y = act(conv(x, w) + b).

    Args:
        x: (N, C, H, W) array (numpy or cupy).
        weight: (O, C // groups, KH, KW), same dtype as ``x``.
        bias: (O,) or None.
        stride, padding, dilation: ``(h, w)`` int pairs (symmetric padding per axis).
        groups: int dividing C and O.
        activation: None, ``'relu'`` or ``'leaky_relu'`` (applied in place on ``y``).
        negative_slope: leaky ReLU slope (>= 0).

    Returns:
        y (N, O, OH, OW), same dtype as ``x``.
    """
    xp = get_array_module(x, weight)
    g = geom(x.shape, weight.shape, stride, padding, dilation, groups)
    y = xp.empty((g.N, g.O, g.OH, g.OW), dtype=x.dtype)
    if y.size == 0:
        return y
    weight = xp.ascontiguousarray(weight)
    if bias is not None:
        bias = xp.ascontiguousarray(bias).reshape(g.O)
    if xp is not np:
        generic_forward(g, x, weight, bias, activation, negative_slope, y, 0, g.N, CUPY_TILE_BYTES, xp=xp)
        return y
    forward, _, prepare = _PATHS[_path(g, x.dtype)]
    wop = _prepared(prepare, weight)
    _parallel.run_split(g.N, g.flops,
                        lambda a, e: forward(g, x, wop, bias, activation, negative_slope, y, a, e, TILE_BYTES),
                        nbytes=x.nbytes + y.nbytes)
    return y


def conv2d_backward(grad_y, x, weight, y, stride, padding, dilation, groups, activation=None,
                    negative_slope=0.01, needs=(True, True, True)):
    """Gradients of ``conv2d_forward`` with respect to x, weight and bias.

    ``grad_y`` is first multiplied by the activation's derivative read from the saved
    output ``y`` (relu: ``y > 0``; leaky_relu: 1 where ``y > 0`` else
    ``negative_slope``); ``y`` is only read when ``activation`` is set.

    Returns:
        ``(grad_x, grad_weight, grad_bias)``; an entry is None when ``needs[i]`` is
        False.
    """
    xp = get_array_module(grad_y, x, weight)
    g = geom(x.shape, weight.shape, stride, padding, dilation, groups)
    needs = tuple(bool(n) for n in needs)
    dtype = x.dtype
    grad_x = xp.empty(x.shape, dtype=dtype) if needs[0] else None
    if not any(needs):
        return None, None, None
    if grad_y.size == 0 or x.size == 0:
        if needs[0]:
            grad_x[...] = 0
        gw = xp.zeros(weight.shape, dtype=dtype) if needs[1] else None
        gb = xp.zeros((g.O,), dtype=dtype) if needs[2] else None
        return grad_x, gw, gb
    weight = xp.ascontiguousarray(weight)
    if activation is None:
        y = None
    if xp is not np:
        results = [generic_backward(g, grad_y, x, weight, y, activation, negative_slope, needs, grad_x,
                                    0, g.N, CUPY_TILE_BYTES, xp=xp)]
    else:
        _, backward, prepare = _PATHS[_path(g, x.dtype, backward=True)]
        # a path's weight form serves grad_x (winograd's U): not needed, not made
        wop = _prepared(prepare, weight) if needs[0] else weight
        moved = grad_y.nbytes + x.nbytes + (x.nbytes if needs[0] else 0)
        results = _parallel.run_split(g.N, g.flops,
                                      lambda a, e: backward(g, grad_y, x, wop, y, activation, negative_slope,
                                                            needs, grad_x, a, e, TILE_BYTES), nbytes=moved)
    gw = gb = None
    if needs[1]:
        gw = results[0][0]
        for r in results[1:]:
            gw += r[0]
        gw = gw.reshape(weight.shape)
    if needs[2]:
        gb = results[0][1]
        for r in results[1:]:
            gb += r[1]
    return grad_x, gw, gb
