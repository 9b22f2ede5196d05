"""``Tensor``: one array (``numpy.ndarray`` or ``cupy.ndarray``) with an optional
gradient and a link to the op that made it.

Autograd itself (``Function``, grad mode, version counters, the backward pass) is
``autograd.py``; the Tensor's differentiable ops (arithmetic, matmul, reductions, shape
ops, ReLU), each backward beside its forward, are ``tensor_ops.py``; the
neural-network ops (conv, pooling, losses, ...) are ``ops/``, re-exported by
``gk.functional``.

In-place ops (``zero_``, ``fill_``, ``add_``, ``mul_``, ``copy_``, ``t[i] = v``) bump the
tensor's version counter, as do optimizer steps and ``load_state_dict``. Outside
``no_grad`` an in-place op on a leaf that requires grad raises; on another tensor
autograd records it (the tensor becomes the op's output; earlier consumers keep its old
node), as PyTorch rebases the graph.
"""

from __future__ import annotations

import numpy as np

from . import backend
from .autograd import (
    Function, Node, VersionCounter, _check_same_device, _refuse_bf16, check_same_dtype, is_grad_enabled, rebase_epoch,
    register_post_accumulate_grad_hook, run_backward,
)
from .dtypes import FLOATS as _FLOATS
from .dtypes import as_dtype as _as_dtype
from .dtypes import bfloat16, dtype_name, float16, float32, float64, to_float32
from .kernels import cast_array
from .shapes import broadcast_shape as _broadcast_shape
from .tensor_ops import (
    _MATMUL_HINT, Abs, Add, Div, Exp, GetItem, Log, MatMul, Max, Mean, Mul, Neg, Permute, Pow, ReLUFunction, Reshape,
    Sub, Sum, _Cast, _Clone, _CopyFrom, _Fill, _promote, _SetItem, _ToDevice, _axes,
)

# ----------------------------------------------------------------------------- Tensor


class Tensor(Node):
    """An n-dimensional array with an optional gradient and a link to the op that made it."""

    __array_priority__ = 1000  # numpy scalars/arrays defer to our __radd__ etc.
    # class-level defaults: a tensor gets its own only when it needs one
    _vc: VersionCounter | None = None  # created on first use (see VersionCounter)
    _is_view = False  # the output of a view op: its data is another tensor's
    _rebases: tuple = ()  # (epoch, node it replaced) per recorded in-place op

    def __init__(self, data, requires_grad: bool = False):
        if isinstance(data, Tensor):
            self._vc = data._version_counter()  # same data, same version
            data = data.data
        if not hasattr(data, "ndim") or isinstance(data, np.generic):
            data = np.asarray(data)  # NumPy reductions return scalars, not 0-d arrays
        if requires_grad and data.dtype not in _FLOATS:
            raise TypeError(
                f"only floating-point tensors can require gradients, got dtype {data.dtype}"
            )
        self.data = data
        self.requires_grad = bool(requires_grad)
        self.grad: Tensor | None = None
        self._ctx: Function | None = None
        self._retain_grad = False

    def _new(self, data, requires_grad: bool = False) -> Tensor:
        """A plain Tensor (not a subclass such as Parameter) holding ``data``: how
        autograd makes outputs and gradients without importing this module."""
        return Tensor(data, requires_grad)

    # -- properties --------------------------------------------------------------------
    shape = property(lambda self: tuple(self.data.shape))
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    device = property(lambda self: backend.device_of(self.data))
    is_leaf = property(lambda self: self._ctx is None)
    grad_fn = property(lambda self: self._ctx)
    T = property(lambda self: self.transpose(-2, -1) if self.ndim >= 2 else self)

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return self.ndim

    def numel(self) -> int:
        return int(self.data.size)

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        dev = ", device='cuda'" if self.device == "cuda" else ""
        values = to_float32(np, self.numpy()) if self.dtype == bfloat16 else self.numpy()
        body = np.array2string(values, separator=", ", prefix="tensor(")
        return f"tensor({body}, dtype={dtype_name(self.dtype)}{dev}{grad})"

    # -- conversion ----------------------------------------------------------------------
    def numpy(self) -> np.ndarray:
        """The data as a host ``numpy.ndarray`` (shares memory on the CPU, as PyTorch).
        A bfloat16 tensor gives its uint16 bit patterns; ``.float().numpy()`` the values."""
        return backend.to_numpy(self.data)

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item(): the tensor has {self.data.size} elements, expected 1")
        if self.dtype == bfloat16:
            return float(to_float32(np, backend.to_numpy(self.data).reshape(1))[0])
        return self.data.reshape(()).item()

    def tolist(self):
        return self.numpy().tolist()

    def to(self, device=None, dtype=None) -> Tensor:
        """A tensor on ``device`` and/or with ``dtype``; differentiable like PyTorch's."""
        if device is not None and not isinstance(device, str) and dtype is None:
            device, dtype = None, device  # t.to(float64)
        out = self
        if dtype is not None and _as_dtype(dtype) != self.dtype:
            out = _Cast.apply(out, dtype=_as_dtype(dtype))
        if device is not None and backend.normalize_device(device) != out.device:
            out = _ToDevice.apply(out, device=backend.normalize_device(device))
        return out

    def float(self) -> Tensor:
        return self.to(float32)

    def half(self) -> Tensor:
        return self.to(float16)

    def bfloat16(self) -> Tensor:
        return self.to(bfloat16)

    def double(self) -> Tensor:
        return self.to(float64)

    def cpu(self) -> Tensor:
        return self.to("cpu")

    def cuda(self) -> Tensor:
        return self.to("cuda")

    # -- autograd ------------------------------------------------------------------------
    def detach(self) -> Tensor:
        """A tensor sharing this data (and its version counter) with no history and no
        gradient requirement."""
        out = Tensor(self.data, requires_grad=False)
        out._vc = self._version_counter()
        return out

    def _version_counter(self) -> VersionCounter:
        vc = self._vc
        if vc is None:
            vc = self._vc = VersionCounter()
        return vc

    @property
    def _version(self) -> int:
        """How many in-place changes this tensor's data has seen (PyTorch's name)."""
        vc = self._vc
        return 0 if vc is None else vc.value

    def _bump_version(self) -> None:
        """Count one in-place change of the data (for code writing ``.data`` in place
        that wants autograd to notice, as ``nn.init`` and ``load_state_dict`` do)."""
        self._version_counter().value += 1

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        if not self.is_leaf:
            raise RuntimeError("requires_grad_(): only leaf tensors can change requires_grad")
        if requires_grad and self.dtype not in _FLOATS:
            raise TypeError(f"only floating-point tensors can require gradients, got {self.dtype}")
        self.requires_grad = bool(requires_grad)
        return self

    def retain_grad(self) -> None:
        """Keep ``.grad`` on this non-leaf tensor after backward."""
        self._retain_grad = True

    def register_post_accumulate_grad_hook(self, hook):
        """Run ``hook(self)`` whenever a backward pass has accumulated this leaf's
        ``.grad`` (final for that pass); returns a handle whose ``remove()`` undoes it."""
        return register_post_accumulate_grad_hook(self, hook)

    # -- in-place ops ----------------------------------------------------------------------
    # Each bumps the version counter. Outside no_grad, on a tensor that requires grad (or
    # with an operand that does), autograd records the op: the tensor becomes the output
    # of the out-of-place op on its old value (the node it was before is kept for the
    # consumers recorded earlier), as PyTorch rebases the graph. A leaf that requires
    # grad refuses, as in PyTorch (change parameters under gk.no_grad(), as optimizers
    # and nn.init do).

    def _records_inplace(self, op: str, *operands) -> bool:
        """Whether autograd must record in-place ``op``; raises where it cannot."""
        if not is_grad_enabled():
            return False
        if self.requires_grad:
            if self._ctx is None:
                raise RuntimeError(
                    f"{op}: a leaf Variable that requires grad is being used in an in-place operation "
                    f"(tensor of shape {self.shape}); change it under `with gk.no_grad():`, as "
                    "optimizers and nn.init do, or work on a clone()")
        elif not any(isinstance(o, Tensor) and o.requires_grad for o in operands):
            return False
        if self._is_view:
            raise RuntimeError(
                f"{op}: in-place operation on a view (shape {self.shape}) of another tensor while "
                "autograd records: gpukernels cannot rebase the tensor it views; clone() the view "
                "first, or run it under gk.no_grad()")
        return True

    def _snapshot(self, copy: bool = False) -> Tensor:
        """A new node standing for this tensor as it is now (same history); with ``copy``
        it holds a copy of the data (an op that saves its input needs the old values)."""
        old = Tensor.__new__(Tensor)
        old.data = self.data.copy() if copy else self.data
        old.requires_grad, old.grad, old._ctx, old._retain_grad = self.requires_grad, None, self._ctx, False
        if not copy:
            old._vc = self._version_counter()
        return old

    def _rebase(self, old: Tensor, new: Tensor) -> Tensor:
        """Write ``new`` (computed from ``old``) into this tensor's data and make this
        tensor ``new``'s node; consumers recorded before keep reaching ``old``."""
        self.data[...] = new.data
        self._version_counter().value += 1
        if new._ctx is None:  # pragma: no cover - recorded ops always give a node
            return self
        self.requires_grad, self._ctx = True, new._ctx
        rebase_epoch.value += 1
        self._rebases = self._rebases + ((rebase_epoch.value, old),)
        return self

    def _operand(self, op: str, other) -> Tensor:
        """``other`` as a tensor on this device whose result fits this tensor's shape and
        dtype (in-place ops neither broadcast nor change the tensor)."""
        other = self._wrap(other)
        _check_same_device(op, [self, other])
        _refuse_bf16(self, op)
        _refuse_bf16(other, op)
        if self.dtype not in _FLOATS and other.dtype in _FLOATS:
            raise TypeError(f"{op}: result type {dtype_name(other.dtype)} can't be cast to the "
                            f"desired output type {dtype_name(self.dtype)} (an in-place op keeps its tensor's dtype)")
        shape = _broadcast_shape(op, self.shape, other.shape)
        if shape != self.shape:
            raise ValueError(f"{op}: output with shape {self.shape} doesn't match the broadcast "
                             f"shape {shape} (other has shape {other.shape}); an in-place op keeps its "
                             "tensor's shape")
        return other

    def zero_(self) -> Tensor:
        """Fill with zeros, in place."""
        return self.fill_(0, op="zero_")

    def fill_(self, value, *, op="fill_") -> Tensor:
        """Fill with ``value`` (a number), in place."""
        if isinstance(value, Tensor):
            if value.numel() != 1:
                raise ValueError(f"{op}: value must be a number or a one-element tensor, got shape {value.shape}")
            value = value.item()
        if not isinstance(value, (bool, int, float, np.number)):
            raise TypeError(f"{op}: value must be a number, got {type(value).__name__}")
        if self._records_inplace(op):
            old = self._snapshot()
            return self._rebase(old, _Fill.apply(old, value=value))
        if self.dtype == bfloat16:  # bit patterns: round the value to bf16 first
            value = cast_array(np.full((), value, np.float32), bfloat16)
        self.data[...] = value  # 0 is all-zero bits in every float dtype, bf16 included
        self._version_counter().value += 1
        return self

    def add_(self, other, alpha=1) -> Tensor:
        """self += alpha * other, in place (``other`` broadcasts to this shape)."""
        other = self._operand("add_", other)
        if self._records_inplace("add_", other):
            old = self._snapshot()
            return self._rebase(old, old + (other if alpha == 1 else other * alpha))
        if alpha == 1:
            self.data += other.data
        else:
            self.data += other.data * alpha
        self._version_counter().value += 1
        return self

    def mul_(self, other) -> Tensor:
        """self *= other, in place (``other`` broadcasts to this shape)."""
        other = self._operand("mul_", other)
        if self._records_inplace("mul_", other):
            old = self._snapshot(copy=True)  # Mul saves its inputs for backward
            return self._rebase(old, old * other)
        self.data *= other.data
        self._version_counter().value += 1
        return self

    def copy_(self, src) -> Tensor:
        """Copy ``src`` (broadcast to this shape, cast to this dtype, moved to this
        device) into this tensor's data; differentiable with respect to ``src``."""
        if not isinstance(src, Tensor):
            src = Tensor(np.asarray(src))
        try:
            shape = _broadcast_shape("copy_", self.shape, src.shape)
        except ValueError:
            shape = None
        if shape != self.shape:
            raise ValueError(f"copy_: src of shape {src.shape} cannot be broadcast to the tensor's "
                             f"shape {self.shape}")
        if self._records_inplace("copy_", src):
            old = self._snapshot()
            return self._rebase(old, _CopyFrom.apply(old, src.to(self.device)))
        data = cast_array(backend.to_device(src.data, self.device), self.dtype)
        self.data[...] = data
        self._version_counter().value += 1
        return self

    def __setitem__(self, index, value):
        """``t[index] = value`` in place; differentiable with respect to both."""
        if isinstance(index, Tensor):
            index = index.data
        if self._records_inplace("__setitem__", value):
            value = value if isinstance(value, Tensor) else self._wrap(value)
            _check_same_device("__setitem__", [self, value])
            old = self._snapshot()
            self._rebase(old, _SetItem.apply(old, value.to(self.dtype), index=index))
            return
        raw = value
        if isinstance(value, Tensor):
            raw = cast_array(backend.to_device(value.data, self.device), self.dtype)
        try:
            self.data[index] = raw
        except (ValueError, IndexError, TypeError) as exc:
            got = f"a value of shape {tuple(raw.shape)}" if hasattr(raw, "shape") else repr(raw)
            raise type(exc)(f"__setitem__: cannot assign {got} to index {index!r} of a tensor of "
                            f"shape {self.shape} ({exc})") from None
        self._version_counter().value += 1

    def backward(self, gradient=None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``.

        Args:
            gradient: the upstream gradient, same shape as self; may be omitted only
                when self holds one element (a loss).
            retain_graph: keep the saved arrays so backward can run through the graph
                again; by default they are freed, as in PyTorch.
        """
        if not self.requires_grad:
            raise RuntimeError(
                "backward(): this tensor does not require grad and has no grad_fn"
            )
        if gradient is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward(): grad can be implicitly created only for scalar outputs; "
                    f"this tensor has shape {self.shape}, pass a gradient of that shape"
                )
            grad = cast_array(backend.get_array_module(self.data).ones(self.data.shape, np.float32), self.dtype)
        else:
            grad = gradient.data if isinstance(gradient, Tensor) else gradient
            if tuple(grad.shape) != self.shape:
                raise RuntimeError(
                    f"backward(): gradient has shape {tuple(grad.shape)}, expected {self.shape}"
                )
            grad = cast_array(grad, self.dtype)
        run_backward(self, grad, retain_graph)

    # -- arithmetic ----------------------------------------------------------------------
    def _wrap(self, other):
        if isinstance(other, Tensor):
            return other
        xp = backend.get_array_module(self.data)
        if isinstance(other, (bool, int, float)):
            if self.dtype in _FLOATS:
                dtype = self.dtype
            elif isinstance(other, float):
                dtype = float32  # int tensor with a Python float: float32, as in PyTorch
            else:
                dtype = np.result_type(self.dtype, other)
            # full, not asarray: a fill kernel with the value as its argument, no host ->
            # device copy (which a CUDA graph would replay from a reused staging buffer)
            return Tensor(cast_array(xp.full((), other, dtype=np.float32), dtype) if dtype == bfloat16
                          else xp.full((), other, dtype=dtype))
        return Tensor(xp.asarray(other))

    def __add__(self, other):
        return Add.apply(*_promote(self, self._wrap(other)))

    def __radd__(self, other):
        return Add.apply(*_promote(self._wrap(other), self))

    def __sub__(self, other):
        return Sub.apply(*_promote(self, self._wrap(other)))

    def __rsub__(self, other):
        return Sub.apply(*_promote(self._wrap(other), self))

    def __mul__(self, other):
        return Mul.apply(*_promote(self, self._wrap(other)))

    def __rmul__(self, other):
        return Mul.apply(*_promote(self._wrap(other), self))

    def __truediv__(self, other):
        return Div.apply(*_promote(self, self._wrap(other)))

    def __rtruediv__(self, other):
        return Div.apply(*_promote(self._wrap(other), self))

    def __neg__(self):
        return Neg.apply(self)

    def __pow__(self, exponent):
        if isinstance(exponent, Tensor):
            raise TypeError("pow(): only a Python number exponent is supported, got a Tensor")
        return Pow.apply(self, exponent=exponent)

    def __matmul__(self, other):
        other = self._wrap(other)
        check_same_dtype("matmul", _MATMUL_HINT, input=self, other=other)
        return MatMul.apply(self, other)

    def __rmatmul__(self, other):
        other = self._wrap(other)
        check_same_dtype("matmul", _MATMUL_HINT, input=other, other=self)
        return MatMul.apply(other, self)

    def __getitem__(self, index):
        if isinstance(index, Tensor):
            index = index.data
        return GetItem.apply(self, index=index)

    # comparisons are not differentiable: they return bool tensors
    def _compare(self, other, op):
        _refuse_bf16(self, "comparison")
        if isinstance(other, Tensor):
            _refuse_bf16(other, "comparison")
        other = other.data if isinstance(other, Tensor) else other
        try:
            return Tensor(op(self.data, other))
        except ValueError:
            if hasattr(other, "shape"):
                _broadcast_shape("comparison", self.shape, other.shape)
            raise

    __lt__ = lambda self, o: self._compare(o, lambda a, b: a < b)  # noqa: E731
    __le__ = lambda self, o: self._compare(o, lambda a, b: a <= b)  # noqa: E731
    __gt__ = lambda self, o: self._compare(o, lambda a, b: a > b)  # noqa: E731
    __ge__ = lambda self, o: self._compare(o, lambda a, b: a >= b)  # noqa: E731
    __hash__ = object.__hash__

    def eq(self, other):
        return self._compare(other, lambda a, b: a == b)

    # -- reductions and shapes -----------------------------------------------------------
    def sum(self, dim=None, keepdim: bool = False):
        return Sum.apply(self, dim=_axes(dim, self.ndim), keepdim=keepdim)

    def mean(self, dim=None, keepdim: bool = False):
        return Mean.apply(self, dim=_axes(dim, self.ndim), keepdim=keepdim)

    def max(self, dim=None, keepdim: bool = False):
        return Max.apply(self, dim=_axes(dim, self.ndim), keepdim=keepdim)

    def argmax(self, dim=None, keepdim: bool = False) -> Tensor:
        _refuse_bf16(self, "argmax")
        out = self.data.argmax(axis=dim)
        if keepdim and dim is not None:
            out = backend.get_array_module(out).expand_dims(out, dim)
        return Tensor(out)

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return Reshape.apply(self, shape=tuple(shape))

    view = reshape

    def unsqueeze(self, dim: int):
        """Insert an axis of size 1 at ``dim`` (negative counts from the end, as PyTorch)."""
        if not -self.ndim - 1 <= dim <= self.ndim:
            raise IndexError(f"unsqueeze(): dim {dim} is out of range for {self.ndim} dimensions")
        dim = dim % (self.ndim + 1)
        return self.reshape(self.shape[:dim] + (1,) + self.shape[dim:])

    def squeeze(self, dim=None):
        """Drop axes of size 1 (all of them, or ``dim`` when it has size 1)."""
        if dim is None:
            return self.reshape(tuple(n for n in self.shape if n != 1))
        (d,) = _axes(dim, self.ndim)
        return self.reshape(self.shape[:d] + self.shape[d + 1 :]) if self.shape[d] == 1 else self

    def clone(self) -> Tensor:
        """A copy of the data that stays in the graph (its gradient flows back to self)."""
        return _Clone.apply(self)

    def flatten(self, start_dim: int = 0, end_dim: int = -1):
        if self.ndim == 0:
            return self.reshape(1)
        start, end = start_dim % self.ndim, end_dim % self.ndim
        if start > end:
            raise ValueError(f"flatten(): start_dim {start_dim} comes after end_dim {end_dim}")
        merged = int(np.prod(self.shape[start : end + 1]))
        return self.reshape(self.shape[:start] + (merged,) + self.shape[end + 1 :])

    def permute(self, *dims):
        dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
        if sorted(d % self.ndim for d in dims) != list(range(self.ndim)):
            raise ValueError(f"permute(): dims {dims} is not a permutation of {self.ndim} axes")
        return Permute.apply(self, dims=tuple(d % self.ndim for d in dims))

    def transpose(self, dim0: int, dim1: int):
        dims = list(range(self.ndim))
        dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
        return Permute.apply(self, dims=tuple(dims))

    def exp(self):
        return Exp.apply(self)

    def log(self):
        return Log.apply(self)

    def sqrt(self):
        return self**0.5

    def abs(self):
        return Abs.apply(self)

    def relu(self):
        """``max(self, 0)``: the same Function as ``gk.functional.relu``."""
        return ReLUFunction.apply(self)
