"""The Tensor's own differentiable ops: elementwise arithmetic, matmul, reductions and
shape ops, each backward right below its forward. ``Tensor``'s methods (tensor.py)
call them; they work on raw arrays (NumPy or CuPy, through ``get_array_module``), so
this module needs no Tensor. The neural-network ops (conv, pooling, losses, ...) live
in ``gpukernels/ops/``.
"""

from __future__ import annotations

import numpy as np

from . import backend, kernels
from .autograd import Function, unbroadcast
from .dtypes import FLOATS, bfloat16
from .kernels import cast_array
from .shapes import broadcast_shape as _broadcast_shape

_MATMUL_HINT = "as in PyTorch, @ and F.linear do not promote: cast one operand with .to(dtype)"


def _promote(a, b):
    """PyTorch's rule when an integer/bool tensor meets a floating one: the result takes
    the floating dtype (NumPy alone would give float64 for int64 with float32)."""
    if a.dtype in FLOATS and b.dtype not in FLOATS:
        b = b.to(a.dtype)
    elif b.dtype in FLOATS and a.dtype not in FLOATS:
        a = a.to(b.dtype)
    return a, b


def _axes(dim, ndim):
    if dim is None:
        return None
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    for d in dims:
        if not -ndim <= d < max(ndim, 1):
            raise IndexError(f"dim {d} is out of range for a tensor with {ndim} dimensions")
    return tuple(d % max(ndim, 1) for d in dims)


# ----------------------------------------------------------------------------- basic ops
# Each op: forward on arrays, backward (VJP) right below it.


class Add(Function):
    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        try:
            return a + b
        except ValueError:  # shapes that do not broadcast: say so with both shapes
            _broadcast_shape("add", a.shape, b.shape)
            raise

    def backward(self, g):
        return unbroadcast(g, self.shapes[0]), unbroadcast(g, self.shapes[1])


class Sub(Function):
    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        try:
            return a - b
        except ValueError:  # shapes that do not broadcast: say so with both shapes
            _broadcast_shape("sub", a.shape, b.shape)
            raise

    def backward(self, g):
        return unbroadcast(g, self.shapes[0]), unbroadcast(-g, self.shapes[1])


class Mul(Function):
    def forward(self, a, b):
        self.save_for_backward(a, b)
        try:
            return a * b
        except ValueError:  # shapes that do not broadcast: say so with both shapes
            _broadcast_shape("mul", a.shape, b.shape)
            raise

    def backward(self, g):
        a, b = self.saved
        ga = unbroadcast(g * b, a.shape) if self.needs_input_grad[0] else None
        gb = unbroadcast(g * a, b.shape) if self.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    def forward(self, a, b):
        self.save_for_backward(a, b)
        try:
            return a / b
        except ValueError:  # shapes that do not broadcast: say so with both shapes
            _broadcast_shape("div", a.shape, b.shape)
            raise

    def backward(self, g):
        a, b = self.saved
        ga = unbroadcast(g / b, a.shape) if self.needs_input_grad[0] else None
        gb = unbroadcast(-g * a / (b * b), b.shape) if self.needs_input_grad[1] else None
        return ga, gb


class Neg(Function):
    def forward(self, a):
        return -a

    def backward(self, g):
        return (-g,)


class Pow(Function):
    def forward(self, a, exponent):
        self.save_for_backward(a)
        self.exponent = exponent
        return a**exponent

    def backward(self, g):
        (a,) = self.saved
        if self.exponent == 0:  # d(a**0)/da = 0 everywhere, also at a = 0 (not 0 * inf)
            return (backend.get_array_module(g).zeros_like(g),)
        return (g * self.exponent * a ** (self.exponent - 1),)


class Exp(Function):
    def forward(self, a):
        out = backend.get_array_module(a).exp(a)
        self.save_for_backward(out)
        return out

    def backward(self, g):
        return (g * self.saved[0],)


class Log(Function):
    def forward(self, a):
        self.save_for_backward(a)
        return backend.get_array_module(a).log(a)

    def backward(self, g):
        return (g / self.saved[0],)


class Abs(Function):
    def forward(self, a):
        self.save_for_backward(a)
        return abs(a)

    def backward(self, g):
        return (g * backend.get_array_module(g).sign(self.saved[0]),)


class MatMul(Function):
    """``a @ b`` with NumPy's broadcasting over leading (batch) dimensions."""

    def forward(self, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError("matmul: both operands need at least one dimension")
        k_a, k_b = a.shape[-1], b.shape[-2 if b.ndim > 1 else 0]
        if k_a != k_b:
            raise ValueError(
                f"matmul: shapes {a.shape} and {b.shape} cannot be multiplied: the first's last "
                f"dimension ({k_a}) must equal the second's "
                f"{'second-to-last' if b.ndim > 1 else 'only'} dimension ({k_b})")
        self.save_for_backward(a, b)
        try:
            return a @ b
        except ValueError:  # batch dimensions that do not broadcast
            try:
                _broadcast_shape("matmul", a.shape[:-2], b.shape[:-2])
            except ValueError as exc:
                raise ValueError(f"matmul: shapes {a.shape} and {b.shape} cannot be multiplied: their batch "
                                 f"dimensions {a.shape[:-2]} and {b.shape[:-2]} do not broadcast "
                                 f"({str(exc).split(': ', 2)[-1]})") from None
            raise

    def backward(self, g):
        a, b = self.saved
        xp = backend.get_array_module(g)
        # promote 1-d operands to matrices so one formula covers every case
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = g
        if b.ndim == 1:  # first: for 1-d @ 1-d, g is 0-d and becomes (1, 1)
            g2 = xp.expand_dims(g2, -1)
        if a.ndim == 1:
            g2 = xp.expand_dims(g2, -2)
        ga = gb = None
        if self.needs_input_grad[0]:
            ga = unbroadcast(g2 @ xp.swapaxes(b2, -1, -2), a2.shape).reshape(a.shape)
        if self.needs_input_grad[1]:
            gb = unbroadcast(xp.swapaxes(a2, -1, -2) @ g2, b2.shape).reshape(b.shape)
        return ga, gb


def _expand_reduced(g, shape, dim, keepdim):
    """Reinsert the reduced axes into ``g`` so it broadcasts against ``shape``."""
    if dim is None:
        return g.reshape((1,) * len(shape))
    if keepdim:
        return g
    for d in sorted(dim):
        g = backend.get_array_module(g).expand_dims(g, d)
    return g


class Sum(Function):
    def forward(self, a, dim, keepdim):
        self.shape, self.dim, self.keepdim = a.shape, dim, keepdim
        return a.sum(axis=dim, keepdims=keepdim)

    def backward(self, g):
        xp = backend.get_array_module(g)
        g = _expand_reduced(g, self.shape, self.dim, self.keepdim)
        return (xp.broadcast_to(g, self.shape).copy(),)


class Mean(Function):
    def forward(self, a, dim, keepdim):
        self.shape, self.dim, self.keepdim = a.shape, dim, keepdim
        count = a.size if dim is None else int(np.prod([a.shape[d] for d in dim]))
        self.scale = 1.0 / max(count, 1)
        return a.mean(axis=dim, keepdims=keepdim)

    def backward(self, g):
        xp = backend.get_array_module(g)
        g = _expand_reduced(g, self.shape, self.dim, self.keepdim)
        return (xp.broadcast_to(g * g.dtype.type(self.scale), self.shape).copy(),)


class Max(Function):
    """Max over axes; the gradient is split evenly between tied maxima (as PyTorch's amax)."""

    def forward(self, a, dim, keepdim):
        out = a.max(axis=dim, keepdims=True)
        self.save_for_backward(a, out)
        self.dim, self.keepdim = dim, keepdim
        return out if keepdim else a.max(axis=dim)

    def backward(self, g):
        a, out = self.saved
        g = _expand_reduced(g, a.shape, self.dim, self.keepdim)
        mask = (a == out).astype(g.dtype)
        return (mask * g / mask.sum(axis=self.dim, keepdims=True),)


class Reshape(Function):
    bf16 = True
    view = True

    def forward(self, a, shape):
        self.shape = a.shape
        try:
            return a.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot view shape {a.shape} as {shape}") from None

    def backward(self, g):
        return (g.reshape(self.shape),)


class Permute(Function):
    bf16 = True
    view = True

    def forward(self, a, dims):
        self.inverse = tuple(np.argsort(dims))
        return a.transpose(dims)

    def backward(self, g):
        return (g.transpose(self.inverse),)


class GetItem(Function):
    """Basic and advanced indexing; the backward scatters with ``add.at`` (repeats add up)."""

    view = True  # basic indexing gives a view (advanced indexing a copy: checked in apply)

    def forward(self, a, index):
        self.shape, self.dtype, self.index = a.shape, a.dtype, index
        out = a[index]
        if isinstance(out, np.generic):  # NumPy gives a scalar copy for a full integer index:
            # a 0-d view instead (as CuPy and PyTorch), so t[i].zero_() changes t
            out = a[(index if isinstance(index, tuple) else (index,)) + (Ellipsis,)]
        return out

    def backward(self, g):
        xp = backend.get_array_module(g)
        out = xp.zeros(self.shape, dtype=g.dtype)
        if hasattr(xp, "add") and hasattr(xp.add, "at"):
            xp.add.at(out, self.index, g)
        else:  # pragma: no cover - cupy spells it scatter_add
            xp.scatter_add(out, self.index, g)
        return (out,)


class _Clone(Function):
    bf16 = True

    def forward(self, a):
        return a.copy()

    def backward(self, g):
        return (g,)


class _Cast(Function):
    bf16 = True

    def forward(self, a, dtype):
        self.dtype = a.dtype
        return cast_array(a, dtype)

    def backward(self, g):
        return (cast_array(g, self.dtype),)


class _ToDevice(Function):
    bf16 = True

    def forward(self, a, device):
        self.device = backend.device_of(a)
        return backend.to_device(a, device)

    def backward(self, g):
        return (backend.to_device(g, self.device),)


class _Fill(Function):
    """``fill_`` / ``zero_`` as autograd records them: a constant, no gradient back."""

    bf16 = True

    def forward(self, a, value):
        xp = backend.get_array_module(a)
        if a.dtype == bfloat16:
            return xp.full(a.shape, cast_array(np.full((), value, np.float32), bfloat16), dtype=bfloat16)
        return xp.full(a.shape, value, dtype=a.dtype)

    def backward(self, g):
        return (None,)


class _CopyFrom(Function):
    """``copy_``: the output is ``src`` broadcast to the tensor's shape and dtype; the
    overwritten values get no gradient."""

    bf16 = True

    def forward(self, a, src):
        self.src_shape, self.src_dtype = src.shape, src.dtype
        xp = backend.get_array_module(a)
        return cast_array(xp.broadcast_to(src, a.shape), a.dtype).copy()

    def backward(self, g):
        if not self.needs_input_grad[1]:
            return None, None
        return None, cast_array(unbroadcast(g, self.src_shape), self.src_dtype)


class _SetItem(Function):
    """``t[index] = value``: the output is ``a`` with ``value`` written at ``index``; the
    gradient of ``a`` is zero there, ``value`` gets the gradient of the written slots."""

    def forward(self, a, value, index):
        self.index, self.value_shape = index, value.shape
        out = a.copy()
        try:
            out[index] = value
        except (ValueError, IndexError) as exc:
            raise type(exc)(f"__setitem__: cannot assign a value of shape {value.shape} to index "
                            f"{index!r} of a tensor of shape {a.shape} ({exc})") from None
        return out

    def backward(self, g):
        ga = gv = None
        if self.needs_input_grad[0]:
            ga = g.copy()
            ga[self.index] = 0
        if self.needs_input_grad[1]:
            gv = unbroadcast(g[self.index], self.value_shape)
        return ga, gv


class ReLUFunction(Function):
    """``max(x, 0)`` on the backend's activation kernels; its backward reads only the
    saved output (dL/dx = dL/dy * [y > 0]). ``Tensor.relu`` and ``gk.functional.relu``."""

    bf16 = True

    def forward(self, x):
        y = kernels.activation.on(x).relu_forward(x)
        self.save_for_backward(y)
        return y

    def backward(self, g):
        (y,) = self.saved
        return (kernels.activation.on(g).relu_backward(g, y),)
