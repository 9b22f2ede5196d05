"""What every layout path of the NumPy conv2d (``gpukernels.cpu.conv``) shares: the
call's geometry, the batch's tiles, the bias + activation epilogue, the activation's
derivative, and the transposed convolution that computes grad_x for stride 1.

Shapes: ``x`` (N, C, H, W), ``weight`` (O, C/G, KH, KW), ``y`` (N, O, OH, OW); ``G`` is
``groups``, ``Cg = C/G``, ``Og = O/G``, ``Kg = Cg*KH*KW`` (one group's GEMM depth).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from functools import lru_cache

import numpy as np

from ..host_rules import activate_
from ..shapes import conv2d_output_size
from ..shapes import pair as _pair
from ._blocks import constant, filled


class Geom:
    """Every size one conv call needs, computed once."""

    def __init__(self, xshape, wshape, stride, padding, dilation, groups):
        self.N, self.C, self.H, self.W = (int(s) for s in xshape)
        self.O, _, self.KH, self.KW = (int(s) for s in wshape)
        self.sh, self.sw = _pair(stride)
        self.ph, self.pw = _pair(padding)
        self.dh, self.dw = _pair(dilation)
        self.G = int(groups)
        self.Cg, self.Og = self.C // self.G, self.O // self.G
        self.Kg = self.Cg * self.KH * self.KW
        self.OH, self.OW = conv2d_output_size(
            self.H, self.W, (self.KH, self.KW), (self.sh, self.sw), (self.ph, self.pw), (self.dh, self.dw)
        )
        self.L = self.OH * self.OW
        self.Hp, self.Wp = self.H + 2 * self.ph, self.W + 2 * self.pw
        self.flops = 2.0 * self.N * self.O * self.Kg * self.L
        self.rows_h = taps(self.OH, self.H, self.KH, self.sh, self.dh, self.ph)
        self.rows_w = taps(self.OW, self.W, self.KW, self.sw, self.dw, self.pw)


def geom(xshape, wshape, stride, padding, dilation, groups):
    """``Geom`` of one call, shared by every call of the same sizes (a Geom is never
    changed after it is built): building one costs ~25 us, a tenth of a small conv, and
    normalising the arguments for the lookup ~3 us, so the arguments as received are
    looked up first (shapes and the checked pairs are tuples of ints: hashable)."""
    try:
        return _geom_as_given(xshape, wshape, stride, padding, dilation, groups)
    except TypeError:  # unhashable (a list): normalise
        return _geom_normalised(xshape, wshape, stride, padding, dilation, groups)


def _geom_normalised(xshape, wshape, stride, padding, dilation, groups):
    return _geom(tuple(int(v) for v in xshape), tuple(int(v) for v in wshape), _pair(stride),
                 _pair(padding), _pair(dilation), int(groups))


@lru_cache(maxsize=512)
def _geom_as_given(xshape, wshape, stride, padding, dilation, groups):
    return _geom_normalised(xshape, wshape, stride, padding, dilation, groups)


@lru_cache(maxsize=512)
def _geom(xshape, wshape, stride, padding, dilation, groups):
    return Geom(xshape, wshape, stride, padding, dilation, groups)


def taps(out_len, in_len, k, s, d, p):
    """Per kernel tap t: ``(o0, o1, i0)``, the outputs ``o0 <= o < o1`` whose input
    ``o*s + t*d - p`` lies inside ``[0, in_len)``, and the input of ``o0``."""
    res = []
    for t in range(k):
        off = t * d - p
        o0 = 0 if off >= 0 else (-off + s - 1) // s
        o1 = max(o0, min(out_len, (in_len - 1 - off) // s + 1))
        res.append((o0, o1, o0 * s + off))
    return res


# ----------------------------------------------------------------------------- activation


def epilogue(acc, bias4, yt, activation, slope):
    """``yt = act(acc + bias)``: the tile's GEMM result lands in the output while cache-hot."""
    if bias4 is not None:
        np.add(acc, bias4, out=yt)
    else:
        np.copyto(yt, acc)
    activate(np, yt, activation, slope)


#: Bytes of the zeros block the ReLU of a tile runs against, block by block.
ZEROS_BLOCK_BYTES = 256 << 10


def activate(xp, yt, activation, slope):
    """``host_rules.activate_`` of an output tile, in place; on NumPy a C-contiguous
    tile's ReLU runs against blocks of zeros (``_blocks.filled``): NumPy's maximum
    with a scalar operand runs a loop ~4x slower than between two arrays (64K float32
    in place: 24.7 against 6.0 us; the digits CNN's first conv forward spent a fifth of
    its time there)."""
    if activation != "relu" or xp is not np or not yt.flags.c_contiguous:
        return activate_(xp, yt, activation, slope)
    flat = yt.reshape(-1)
    zeros = filled(0, flat, ZEROS_BLOCK_BYTES)
    for i in range(0, flat.size, zeros.size):
        j = min(i + zeros.size, flat.size)
        np.maximum(flat[i:j], zeros[: j - i], out=flat[i:j])
    return yt


def masked_grad(xp, gy, y, activation, slope, work=None):
    """``gy`` times the activation's derivative read from the saved output ``y``:
    ``gy`` itself without activation, else a new array (or ``work``, contiguous and of
    ``gy``'s shape). Kept contiguous on purpose: a bool*float multiply runs buffered,
    and into a strided destination it is ~3x slower than multiply-then-copy."""
    if activation is None:
        return gy
    if activation == "relu":
        return xp.multiply(gy, y > 0, out=work)
    factor = xp.where(y > 0, gy.dtype.type(1), gy.dtype.type(slope))
    return xp.multiply(gy, factor, out=work)


# ----------------------------------------------------------------------------- bias gradient


def channel_sums(xp, a, channel_axis=1):
    """grad_b's per-channel sums of ``a``: (N, C, ...) NCHW (``channel_axis`` 1), or a
    2-D (rows, C) channels-last matrix (1) or (C, cols) one (0). On NumPy a BLAS GEMV
    against ones (on the caller's one BLAS thread): NumPy reduces an axis that is not
    the innermost one 5-17x slower (measured, float32: (1024, 32) column sums 16.8 ->
    2.2 us, the digits CNN's second conv; (128, 16, 32, 32) over (0, 2, 3) 347 -> 61)."""
    if xp is not np:
        return a.sum(axis=tuple(i for i in range(a.ndim) if i != channel_axis))
    if a.ndim == 2:
        if channel_axis == 1:
            return constant(1, a.dtype, a.shape[0]) @ a
        return a @ constant(1, a.dtype, a.shape[1])
    rows = a.reshape(a.shape[0] * a.shape[1], -1)  # a copy where ``a`` is strided
    return (rows @ constant(1, a.dtype, rows.shape[1])).reshape(a.shape[0], a.shape[1]).sum(axis=0)


# ----------------------------------------------------------------------------- layout

#: Channel planes of at least this many bytes are copied to channels-last this many
#: channels at a time (``to_channels_last``).
PLANE_BLOCK_BYTES = 4096
CHANNEL_BLOCK = 8


def to_channels_last(dst, src):
    """``dst[n, h, w, c] = src[n, c, h, w]``. NumPy walks the destination in memory
    order, so one copy reads C planes at once in its inner loop; planes 4 KiB or a
    multiple apart (32x32 float32) all map to the same L1 sets and the copy thrashes. Blocks
    of 8 channels keep the lines in play within the cache's ways: 64x32x32 float32,
    4 images, 0.80 -> 0.24 ms; smaller planes copy faster in one go (128x16x16 0.11
    against 0.14 ms in blocks)."""
    c = src.shape[1]
    if abs(src.strides[1]) < PLANE_BLOCK_BYTES or c <= CHANNEL_BLOCK:
        np.copyto(dst, src.transpose(0, 2, 3, 1))
        return
    for c0 in range(0, c, CHANNEL_BLOCK):
        np.copyto(dst[..., c0 : c0 + CHANNEL_BLOCK], src[:, c0 : c0 + CHANNEL_BLOCK].transpose(0, 2, 3, 1))


# ----------------------------------------------------------------------------- scratch

#: Scratch objects (a path's tile buffers) of at most this many bytes are kept, per
#: thread, for the next call of the same sizes (``scratch``) ...
SCRATCH_MAX_BYTES = 2 << 20
#: ... up to this many bytes a thread, the least recently used dropped first.
SCRATCH_THREAD_BYTES = 8 << 20

_scratch = threading.local()


def scratch(key, nbytes, make):
    """``make()``, or the object an earlier call on this thread made for the same
    ``key``: the tile buffers of a small conv, whose zeroed frames and strided views
    cost more to build than the small call's copies and GEMMs (the digits CNN's second
    conv builds three ``_Nhwc`` buffers a step, ~8 us each, out of ~0.6 ms for its
    forward and backward). ``key`` names the sizes (a ``Geom`` is shared by every call
    of the same sizes) and the buffer's role; ``nbytes`` is what it holds. Only the
    calling thread uses what it gets, and a caller must leave the object as it found
    it apart from what every call rewrites (zero borders stay zero), since the next
    call of the same sizes takes it as is. Objects above SCRATCH_MAX_BYTES are made
    afresh every call (they are large calls' tiles, where building them is cheap
    against the work), so a thread keeps at most SCRATCH_THREAD_BYTES."""
    if nbytes > SCRATCH_MAX_BYTES:
        return make()
    cache = getattr(_scratch, "lru", None)
    if cache is None:
        cache = _scratch.lru = OrderedDict()
        _scratch.bytes = 0
    hit = cache.get(key)
    if hit is not None:
        cache.move_to_end(key)
        return hit[0]
    obj = make()
    cache[key] = (obj, nbytes)
    _scratch.bytes += nbytes
    while _scratch.bytes > SCRATCH_THREAD_BYTES:
        _, (_, dropped) = cache.popitem(last=False)
        _scratch.bytes -= dropped
    return obj


# ----------------------------------------------------------------------------- tiles


def tiles(n0, n1, per_image_bytes, budget, min_images=1):
    """Near-equal tiles of ``[n0, n1)`` whose column buffers fit ``budget`` bytes, of at
    least ``min_images`` images each where the range allows."""
    n = n1 - n0
    b = max(1, min(n, max(min_images, budget // max(1, per_image_bytes))))
    count = -(-n // b)
    b = -(-n // count)
    return b, [(s, min(n1, s + b)) for s in range(n0, n1, b)]


# ----------------------------------------------------------------------------- transposed conv


def flat_ok(g):
    """Stride 1: grad_x is then a (stride-1) convolution of grad_y (``transposed_geom``)."""
    return g.sh == 1 and g.sw == 1


def transposed_geom(g):
    """The geometry of grad_x as a stride-1 conv of grad_y: kernel flipped and
    transposed, padding ``d*(K-1) - p`` (negative means cropping)."""
    return geom(
        (g.N, g.O, g.OH, g.OW),
        (g.C, g.Og, g.KH, g.KW),
        (1, 1),
        (g.dh * (g.KH - 1) - g.ph, g.dw * (g.KW - 1) - g.pw),
        (g.dh, g.dw),
        g.G,
    )


def flipped_weight(weight, g):
    """The transposed conv's weight ``(C, Og, KH, KW)``:
    ``wq[g*Cg + cg, og, kh, kw] = w[g*Og + og, cg, KH-1-kh, KW-1-kw]``."""
    return np.ascontiguousarray(
        weight.reshape(g.G, g.Og, g.Cg, g.KH, g.KW)[:, :, :, ::-1, ::-1].transpose(0, 2, 1, 3, 4)
    ).reshape(g.C, g.Og, g.KH, g.KW)
