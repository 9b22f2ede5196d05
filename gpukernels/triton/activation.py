"""Elementwise activations in Triton: ReLU, leaky ReLU, sigmoid, tanh and Heaviside
forward, and the backward of the first four from the saved OUTPUT; plus ``add_relu``,
relu(a + b), a residual block's sum and ReLU in one pass (its backward is ReLU's).

The reference (the oracle every kernel is tested against) is
``gpukernels.cpu.activation``: the same function names, arguments and results.

Formulas (float32 math whatever the storage dtype; one rounding to it at the store):

    relu        y = x < 0 ? 0 : x                 dx = g * [y > 0]
    leaky_relu  y = x > 0 ? x : s x               dx = y > 0 ? g : s g      (s >= 0)
    sigmoid     e = exp(-|x|),  y = x >= 0 ? 1 / (1 + e) : e / (1 + e)
                                                  dx = g y (1 - y)
    tanh        |x| < 0.625: x P(x^2)  (Taylor series, 10 terms: no cancellation near 0)
                otherwise:   sign(x) (1 - 2 / (exp(2|x|) + 1))   (exp overflow gives +-1)
                                                  dx = g (1 - y^2)
    heaviside   y = x > 0 ? 1 : (x < 0 ? 0 : values)   (NaN -> values, as the reference)
    add_relu    s = a + b,  y = s < 0 ? 0 : s       da = db = g * [y > 0]   (relu_backward)

The backward never needs the input: ReLU and leaky ReLU (s >= 0) keep the sign of their
input, sigmoid' = y (1 - y), tanh' = 1 - y^2, so a layer keeps one tensor. Special values
follow the reference's arithmetic, not a shortcut: relu's gradient is a product with
the 0/1 mask (inf * 0 = NaN, as NumPy), NaN inputs propagate (``tl.maximum`` would
drop them on a GPU, so relu is a ``where`` that keeps x unless x < 0). The slope, the
Heaviside value and every other constant are first rounded to the storage dtype, as
the reference's ``x.dtype.type(slope)``, so float16 results match it bit for bit where
its arithmetic is exact.

tanh has no portable Triton builtin (libdevice's does not run under the interpreter):
the two-branch form above, evaluated in float32 NumPy, is within 1.7 ulp of float64 tanh
on 2.2M points spanning float32 (the GPU's approximate exp and division add an ulp or
two; the gpu tests compare with torch.tanh), and costs ~12 FMAs, nothing against the
memory time.

Memory traffic, one pass each: forward reads x and writes y (2 x itemsize bytes per
element), backward reads g and y and writes dx (3 x itemsize); nothing else.
``add_relu_forward`` reads a and b and writes y (3 x itemsize), where an add pass then a
ReLU pass move 5 x itemsize. Every
kernel runs flat over the buffer in BLOCK-wide pieces: a full piece is loaded and stored
without a mask, so Triton emits 16-byte vector accesses (it specialises a launch on
16-byte aligned pointers, which CuPy's allocations are); only the last, partial piece
is masked (its indices clamped into the buffer, so no lane ever addresses past it).

Layouts: any *dense* layout (C-contiguous, channels-last, any permutation of the axes,
no gaps) runs in place over its memory, and the result keeps that layout; arrays with
gaps, broadcast (stride 0) or negative strides, or two operands laid out differently,
are first copied to C order (one extra pass, never a misread). ``heaviside_forward``
with an array ``values`` broadcasts it as NumPy does, reading x and values through up
to 4 (collapsed) strided dimensions without copying them.

int64 offsets once a tensor nears 2**31 elements (``INT64``, from ``INT32_SAFE``: the
block arithmetic must not wrap either); float32, float16 and bfloat16 (as uint16 bit
patterns) storage; float64 is refused (TypeError), as by every Triton family. Configs
are autotuned per element count ``n`` (and dtype) on a GPU. The configs, layout and
launch of flat kernels (``FLAT_CONFIGS``, ``flat_inputs``, ``launch_flat``,
``flat_block``, ``storage_round``) live in ``_common``: cast, dropout and loss share them.
"""

from __future__ import annotations

import numbers

import numpy as np
import triton
import triton.language as tl

from .. import backend
from ..backend import get_array_module
from ._common import (
    FLAT_CONFIGS, check_arrays, flat_block, flat_inputs, flat_kernel, from_float32, kernel_view, launch_flat,
    storage_round, strides,
)

_ACT = {"relu": 0, "leaky_relu": 1, "sigmoid": 2, "tanh": 3, "heaviside": 4}


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _tanh(x):
    """tanh in float32 within 2 ulp: for |x| < 0.625 x P(x^2), P the first 10 Taylor
    coefficients of tanh(x) / x (from the Bernoulli numbers); beyond, no cancellation."""
    a = tl.abs(x)
    z = x * x
    p = -0.00023912911424355248 * z + 0.000590027440945586
    p = p * z - 0.0014558343870513183
    p = p * z + 0.003592128036572481
    p = p * z - 0.008863235529902197
    p = p * z + 0.021869488536155203
    p = p * z - 0.05396825396825397
    p = p * z + 0.13333333333333333
    p = p * z - 0.3333333333333333
    p = p * z + 1.0
    big = 1.0 - 2.0 / (tl.exp(2.0 * a) + 1.0)  # exp overflow: 2 / inf = 0, y = 1
    big = tl.where(x < 0, -big, big)
    return tl.where(a < 0.625, x * p, big)  # NaN fails a < 0.625: NaN from the big branch


@triton.jit
def _forward(x, slope, value, ACT: tl.constexpr):
    """y of activation ACT on float32 x (see the module docstring)."""
    if ACT == 0:
        y = tl.where(x < 0, 0.0, x)  # keeps NaN, as np.maximum
    elif ACT == 1:
        y = tl.where(x > 0, x, x * slope)
    elif ACT == 2:
        e = tl.exp(-tl.abs(x))  # in (0, 1]: never overflows
        y = tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    elif ACT == 3:
        y = _tanh(x)
    else:
        y = tl.where(x > 0, 1.0, tl.where(x < 0, 0.0, value))
    return y


@triton.jit
def _backward(g, y, slope, ACT: tl.constexpr):
    """dL/dx from dL/dy and the saved float32 output y."""
    if ACT == 0:
        dx = g * (y > 0).to(tl.float32)  # a product, as the reference: inf * 0 = NaN
    elif ACT == 1:
        dx = tl.where(y > 0, g, g * slope)
    elif ACT == 2:
        dx = g * y * (1.0 - y)
    else:
        dx = g * (1.0 - y * y)
    return dx


@triton.jit
def _act_fwd_kernel(x_ptr, y_ptr, n, slope, value,
                    ACT: tl.constexpr, INT64: tl.constexpr, BLOCK: tl.constexpr):
    """y[i] = act(x[i]) over the flat buffer; program p owns [p BLOCK, (p + 1) BLOCK)."""
    start, offs = flat_block(INT64, BLOCK)
    if start + BLOCK <= n:  # a full block: unmasked, so the accesses vectorise
        x = tl.load(x_ptr + offs).to(tl.float32)
        tl.store(y_ptr + offs, _forward(x, slope, value, ACT).to(y_ptr.dtype.element_ty))
    else:  # the tail: masked, indices clamped into the buffer
        ok = offs < n
        offs = tl.where(ok, offs, 0)
        x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        tl.store(y_ptr + offs, _forward(x, slope, value, ACT).to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _act_bwd_kernel(g_ptr, y_ptr, dx_ptr, n, slope,
                    ACT: tl.constexpr, INT64: tl.constexpr, BLOCK: tl.constexpr):
    """dx[i] = g[i] act'(y[i]) over the flat buffers (g, y and dx share one layout)."""
    start, offs = flat_block(INT64, BLOCK)
    if start + BLOCK <= n:
        g = tl.load(g_ptr + offs).to(tl.float32)
        y = tl.load(y_ptr + offs).to(tl.float32)
        tl.store(dx_ptr + offs, _backward(g, y, slope, ACT).to(dx_ptr.dtype.element_ty))
    else:
        ok = offs < n
        offs = tl.where(ok, offs, 0)
        g = tl.load(g_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        tl.store(dx_ptr + offs, _backward(g, y, slope, ACT).to(dx_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _add_relu_kernel(a_ptr, b_ptr, y_ptr, n, RELU: tl.constexpr, INT64: tl.constexpr, BLOCK: tl.constexpr):
    """y[i] = relu(a[i] + b[i]) (or a[i] + b[i] without RELU) over the flat buffers (a, b
    and y share one layout): the sum in float32, rounded once to the storage dtype."""
    start, offs = flat_block(INT64, BLOCK)
    if start + BLOCK <= n:
        s = tl.load(a_ptr + offs).to(tl.float32) + tl.load(b_ptr + offs).to(tl.float32)
        if RELU:
            s = tl.where(s < 0, 0.0, s)  # keeps NaN
        tl.store(y_ptr + offs, s.to(y_ptr.dtype.element_ty))
    else:
        ok = offs < n
        offs = tl.where(ok, offs, 0)
        s = (tl.load(a_ptr + offs, mask=ok, other=0.0).to(tl.float32)
             + tl.load(b_ptr + offs, mask=ok, other=0.0).to(tl.float32))
        if RELU:
            s = tl.where(s < 0, 0.0, s)
        tl.store(y_ptr + offs, s.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _heaviside_kernel(x_ptr, v_ptr, y_ptr, n, D1, D2, D3,
                      sx0, sx1, sx2, sx3, sv0, sv1, sv2, sv3,
                      INT64: tl.constexpr, BLOCK: tl.constexpr):
    """y[i] = heaviside(x[i], values[i]) for y C-contiguous of shape (D0, D1, D2, D3);
    x and values are read through their (broadcast: stride 0) strides."""
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
        sx0, sx1, sx2, sx3 = sx0.to(tl.int64), sx1.to(tl.int64), sx2.to(tl.int64), sx3.to(tl.int64)
        sv0, sv1, sv2, sv3 = sv0.to(tl.int64), sv1.to(tl.int64), sv2.to(tl.int64), sv3.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    offs = tl.where(ok, offs, 0)
    i3 = offs % D3
    r = offs // D3
    i2 = r % D2
    r = r // D2
    i1 = r % D1
    i0 = r // D1
    x = tl.load(x_ptr + i0 * sx0 + i1 * sx1 + i2 * sx2 + i3 * sx3, mask=ok, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + i0 * sv0 + i1 * sv1 + i2 * sv2 + i3 * sv3, mask=ok, other=0.0).to(tl.float32)
    y = tl.where(x > 0, 1.0, tl.where(x < 0, 0.0, v))
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=ok)


# ----------------------------------------------------------------------------- configs

# The flat kernels' configs (``_common.FLAT_CONFIGS``); heaviside's strided kernel has
# fewer. Each spill-free on sm_80 and sm_90 (aot_specs).
GPU_CONFIGS = FLAT_CONFIGS
HEAVISIDE_CONFIGS = [(1024, 4, 1), (2048, 8, 1)]

#: ``knobs.override(configs={KERNELS[kind]: cfg})`` pins one config (the gpu tests run each).
KERNELS = {
    "fwd": flat_kernel(_act_fwd_kernel),
    "bwd": flat_kernel(_act_bwd_kernel),
    "heaviside": flat_kernel(_heaviside_kernel, HEAVISIDE_CONFIGS),
    "add_relu": flat_kernel(_add_relu_kernel),
}


# ----------------------------------------------------------------------------- launchers


def _check_slope(op, negative_slope):
    if not isinstance(negative_slope, numbers.Real) or isinstance(negative_slope, bool) or not negative_slope >= 0:
        # the backward reads the saved output, whose sign is the input's only for slope >= 0
        raise ValueError(f"{op}: negative_slope must be a real number >= 0, got {negative_slope!r}")
    return float(negative_slope)


def _forward_launch(op, x, slope=0.0, value=0.0):
    _, (x,), empty = flat_inputs(op, x=x)
    y = empty()
    launch_flat(KERNELS["fwd"], (x, y), x.size, slope, value, ACT=_ACT[op.split("_forward")[0]])
    return y


def _backward_launch(op, grad_y, y, slope=0.0):
    _, (grad_y, y), empty = flat_inputs(op, grad_y=grad_y, y=y)
    dx = empty()
    launch_flat(KERNELS["bwd"], (grad_y, y, dx), y.size, slope, ACT=_ACT[op.split("_backward")[0]])
    return dx


def relu_forward(x):
    """y = max(x, 0) (NaN stays NaN).

    Args:
        x: float32 / float16 / bf16-as-uint16 array (CuPy, or NumPy under ``interpret``),
            any shape and strides (dense layouts kept, others copied to C order).

    Returns:
        y, same shape, dtype and (dense) layout as x.
    """
    return _forward_launch("relu_forward", x)


def relu_backward(grad_y, y):
    """dx = g * [y > 0], from the saved output y.

    Args:
        grad_y: dL/dy, same shape and dtype as y.
        y: the output of ``relu_forward``.
    """
    return _backward_launch("relu_backward", grad_y, y)


def add_relu_forward(a, b):
    """y = max(a + b, 0) in one pass (NaN stays NaN): the sum and ReLU of a residual block.

    Reads a and b once and writes y once (3 x itemsize per element; an add pass then a
    ReLU pass move 5). The sum is float32, rounded once to the storage dtype, so fp16 /
    bf16 results may differ from a rounded sum then ReLU by that one rounding. The
    backward is ``relu_backward(grad_y, y)``, the gradient of both a and b.

    Args:
        a, b: float32 / float16 / bf16-as-uint16 arrays of one shape, dtype and device,
            any strides (a shared dense layout is kept, otherwise both copied to C order).

    Returns:
        y, same shape and dtype as a (a's and b's dense layout when they share one).
    """
    return _add_launch("add_relu_forward", a, b, relu=True)


def add_forward(a, b):
    """y = a + b in one pass, the float32 sum rounded once to the storage dtype: how
    autograd sums two gradients of one tensor (a residual block's input gets one from
    the body and one from the shortcut). For bf16 that is one pass where widening,
    adding and rounding with array operations take four.

    Args:
        a, b: float32 / float16 / bf16-as-uint16 arrays of one shape, dtype and device,
            any strides (a shared dense layout is kept, otherwise both copied to C order).
    """
    return _add_launch("add_forward", a, b, relu=False)


def _add_launch(op, a, b, relu):
    _, (a, b), empty = flat_inputs(op, a=a, b=b)
    y = empty()
    launch_flat(KERNELS["add_relu"], (a, b, y), y.size, RELU=relu)
    return y


def leaky_relu_forward(x, negative_slope):
    """y = x if x > 0 else negative_slope * x (slope rounded to x's dtype first).

    Args:
        x: float array, any strides.
        negative_slope: real number >= 0 (the backward reads the sign of y).
    """
    slope = _check_slope("leaky_relu_forward", negative_slope)
    check_arrays("leaky_relu_forward", x=x)
    return _forward_launch("leaky_relu_forward", x, storage_round(x.dtype, slope))


def leaky_relu_backward(grad_y, y, negative_slope):
    """dx = g if y > 0 else negative_slope * g (slope >= 0, so sign(y) = sign(x)).

    Args:
        grad_y: dL/dy, same shape and dtype as y.
        y: the output of ``leaky_relu_forward``.
        negative_slope: the forward's slope.
    """
    slope = _check_slope("leaky_relu_backward", negative_slope)
    check_arrays("leaky_relu_backward", y=y)
    return _backward_launch("leaky_relu_backward", grad_y, y, storage_round(y.dtype, slope))


def sigmoid_forward(x):
    """y = 1 / (1 + exp(-x)), as 1 / (1 + e) or e / (1 + e) with e = exp(-|x|) (no
    overflow); x as in ``relu_forward``."""
    return _forward_launch("sigmoid_forward", x)


def sigmoid_backward(grad_y, y):
    """dx = g * y * (1 - y), from the saved output y."""
    return _backward_launch("sigmoid_backward", grad_y, y)


def tanh_forward(x):
    """y = tanh(x) (series near 0, 1 - 2 / (exp(2|x|) + 1) elsewhere; within 2 ulp); x as
    in ``relu_forward``."""
    return _forward_launch("tanh_forward", x)


def tanh_backward(grad_y, y):
    """dx = g * (1 - y^2), from the saved output y."""
    return _backward_launch("tanh_backward", grad_y, y)


def _collapse(shape, *stride_sets):
    """Merge neighbouring axes that every stride set walks as one (and drop size-1
    axes): the fewest dimensions that address the same elements."""
    dims = [(size, [s[i] for s in stride_sets]) for i, size in enumerate(shape) if size != 1]
    out = []
    for size, sts in dims:
        if out and all(ps == s * size for ps, s in zip(out[-1][1], sts)):
            out[-1] = (out[-1][0] * size, sts)
        else:
            out.append((size, sts))
    return out


def heaviside_forward(x, values):
    """y = 0 for x < 0, ``values`` at x == 0, 1 for x > 0 (``torch.heaviside``).

    NaN in x gives ``values`` (as the reference: NaN is neither < 0 nor > 0; note that
    torch.heaviside gives 0 there).

    Args:
        x: float array, any strides.
        values: a real number, or an array broadcastable with x (NumPy broadcasting:
            the result takes the broadcast shape), converted to x's dtype. A 0-d host
            NumPy array is a number.

    Returns:
        y in x's dtype: x's (dense) layout for a number ``values``, else C-contiguous.
    """
    op = "heaviside_forward"
    check_arrays(op, x=x)
    if isinstance(values, np.ndarray) and values.ndim == 0:
        values = values.item()
    if isinstance(values, (numbers.Real, np.generic)):
        if isinstance(values, np.generic) and values.dtype.kind not in "fiub":
            raise TypeError(f"{op}: values must be a real number or a real array, got {values.dtype}")
        return _forward_launch(op, x, value=storage_round(x.dtype, float(values)))
    if not hasattr(values, "dtype") or not hasattr(values, "shape") or values.dtype.kind not in "fiub":
        raise TypeError(f"{op}: values must be a real number or a real array, got "
                        f"{getattr(values, 'dtype', type(values).__name__)}")
    if backend.device_of(values) != backend.device_of(x):
        raise RuntimeError(f"{op}: x is on {backend.device_of(x)}, values on {backend.device_of(values)}")
    xp = get_array_module(x)
    try:
        shape = tuple(np.broadcast_shapes(tuple(x.shape), tuple(values.shape)))
    except ValueError:
        raise ValueError(f"{op}: values shape {tuple(values.shape)} does not broadcast with x shape "
                         f"{tuple(x.shape)}") from None
    if values.dtype != x.dtype:  # the reference casts the chosen values to x's dtype
        if x.dtype == np.uint16:
            values = from_float32(xp, values.astype(np.float32), x.dtype)
        else:
            values = values.astype(x.dtype)
    y = xp.empty(shape, dtype=x.dtype)
    n = y.size
    if n == 0:
        return y
    x, values = kernel_view(x), kernel_view(values)  # no negative strides, writeable
    # the kernel reads x and values themselves (a broadcast view is read-only, which
    # kernel_arg would copy) through the strides of their broadcast views
    xb, vb = xp.broadcast_to(x, shape), xp.broadcast_to(values, shape)
    dims = _collapse(shape, strides(xb), strides(vb))
    if len(dims) > 4:  # more than 4 independent axes: read C-ordered copies instead
        x, values = xp.array(xb, order="C"), xp.array(vb, order="C")  # fresh, writeable
        dims = _collapse(shape, strides(x), strides(values))
    dims = [(1, [0, 0])] * (4 - len(dims)) + dims
    sizes = [d[0] for d in dims]
    sx = [d[1][0] for d in dims]
    sv = [d[1][1] for d in dims]
    launch_flat(KERNELS["heaviside"], (x, values, y), n, sizes[1], sizes[2], sizes[3], *sx, *sv)
    return y
