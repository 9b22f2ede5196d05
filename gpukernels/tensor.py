"""Tensor and reverse-mode autograd.

A ``Tensor`` wraps one array (``numpy.ndarray`` or ``cupy.ndarray``). Every
differentiable op is a ``Function``: ``forward`` computes on raw arrays and saves what
its backward needs, ``backward`` maps the gradient of the output to the gradients of
the inputs (a vector-Jacobian product). ``Function.apply`` runs the forward and, when
grad mode is on and an input requires a gradient, records the Function on the output:
the recorded Functions form the tape. ``Tensor.backward`` sorts the tape topologically
and runs the backwards in reverse, summing gradients where a tensor feeds several ops.

In-place ops (``zero_``, ``fill_``, ``add_``, ``mul_``, ``copy_``, ``t[i] = v``) bump the
tensor's version counter (``VersionCounter``, shared by tensors that share data), as do
optimizer steps and ``load_state_dict``; backward refuses a tensor saved for it whose
version changed since, naming the op that saved it, as PyTorch does. Outside ``no_grad``
an in-place op on a leaf that requires grad raises; on another tensor autograd records
it (the tensor becomes the op's output; earlier consumers keep its old node).

The elementwise, matmul, reduction and shape ops live here, each backward beside its
forward; the neural-network ops (conv, pooling, losses, ...) live in ``functional.py``
and dispatch to the backend's kernels.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

from . import backend

# ----------------------------------------------------------------------------- grad mode

_grad_mode = threading.local()


def is_grad_enabled() -> bool:
    """Whether ops record themselves for backward (``True`` unless in ``no_grad``)."""
    return getattr(_grad_mode, "enabled", True)


@contextlib.contextmanager
def _set_grad_enabled(enabled: bool):
    previous = is_grad_enabled()
    _grad_mode.enabled = enabled
    try:
        yield
    finally:
        _grad_mode.enabled = previous


class no_grad(contextlib.ContextDecorator):
    """Context manager (and decorator) that disables graph recording, as in PyTorch."""

    def __enter__(self):
        self._ctx = _set_grad_enabled(False)
        self._ctx.__enter__()

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


class enable_grad(contextlib.ContextDecorator):
    """Context manager (and decorator) that re-enables graph recording."""

    def __enter__(self):
        self._ctx = _set_grad_enabled(True)
        self._ctx.__enter__()

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


# ----------------------------------------------------------------------------- dtypes

from .dtypes import FLOATS as _FLOATS  # noqa: E402,F401 - re-exported names of the dtype layer
from .dtypes import (  # noqa: E402,F401
    as_dtype as _as_dtype, bfloat16, bool_, dtype_name, float16, float32, float64, from_float32, int32, int64,
    to_float32,
)


def cast_array(a, dtype):
    """``a`` as ``dtype``, bf16 (uint16 bits) included; ``a`` itself when it already is.
    Conversions to or from bf16 take the backend's ``cast`` kernel (one pass on a GPU)."""
    dtype = np.dtype(dtype)
    if a.dtype == dtype:
        return a
    if dtype != bfloat16 and a.dtype != bfloat16:
        return a.astype(dtype)
    if a.dtype not in (float16, float32, bfloat16):
        a = a.astype(np.float32)  # float64 / integers: the kernels take 16/32-bit floats
    out = backend.kernels("cast", backend.device_of(a)).cast(a, float32 if dtype not in (float16, bfloat16) else dtype)
    return out if out.dtype == dtype else out.astype(dtype)


def add_arrays(a, b):
    """a + b for gradient sums: the backend's ``add_forward`` (one kernel pass on the
    Triton backends); bf16 bit patterns are added as float32 and rounded once."""
    if a.shape == b.shape and a.dtype == b.dtype and a.dtype in (float16, float32, bfloat16):
        return backend.kernels("activation", backend.device_of(a)).add_forward(a, b)
    if a.dtype == bfloat16 or b.dtype == bfloat16:
        xp = backend.get_array_module(a, b)
        return from_float32(xp, to_float32(xp, a) + to_float32(xp, b), bfloat16)
    return a + b


def _to_array(data, dtype, device):
    """Turn ``data`` into an array on ``device`` with PyTorch's dtype inference."""
    if isinstance(data, Tensor):
        data = data.data
    xp = backend.xp_for_device(device)
    if hasattr(data, "dtype") and hasattr(data, "shape"):  # numpy / cupy array or scalar
        array = backend.to_device(data if hasattr(data, "ndim") else np.asarray(data), device)
        return cast_array(array, dtype) if dtype is not None else array
    try:
        host = np.asarray(data)
    except ValueError:
        where = _ragged(data)
        if where is None:
            raise
        raise ValueError(f"tensor(): {where}") from None
    if host.dtype == object:  # NumPy < 1.24 makes ragged lists object arrays
        where = _ragged(data)
        if where is not None:
            raise ValueError(f"tensor(): {where}")
    if dtype is None:
        if host.dtype.kind == "f":
            dtype = float32  # Python floats become float32, as in PyTorch
        elif host.dtype.kind in "iu":
            dtype = int64
        elif host.dtype.kind != "b":
            raise TypeError(f"tensor(): cannot make a tensor from {type(data).__name__} data")
    return xp.asarray(host if dtype is None else cast_array(host, dtype))


def _is_sequence(x) -> bool:
    return isinstance(x, (list, tuple)) or (hasattr(x, "__len__") and hasattr(x, "shape")
                                            and getattr(x, "ndim", 0) > 0)


def _ragged(data):
    """Where nested sequences ``data`` stop being rectangular, in words (``None`` when
    they are): the first dimension at which two elements differ in length, or where a
    sequence meets a scalar."""
    level, paths = [data], [""]
    for dim in range(64):
        kinds = [_is_sequence(x) for x in level]
        if not any(kinds):
            return None
        if not all(kinds):
            seq, scalar = kinds.index(True), kinds.index(False)
            return (f"ragged nested sequence: at dimension {dim}, data{paths[seq]} is a sequence "
                    f"but data{paths[scalar]} is a scalar ({level[scalar]!r})")
        lengths = [len(x) for x in level]
        for i, n in enumerate(lengths):
            if n != lengths[0]:
                return (f"ragged nested sequence: dimension {dim} has length {lengths[0]} at "
                        f"data{paths[0]} but length {n} at data{paths[i]}; every element along a "
                        "dimension must have the same length")
        level = [y for x in level for y in x]
        paths = [f"{path}[{j}]" for path, n in zip(paths, lengths) for j in range(n)]
    return None


def tensor(data, requires_grad: bool = False, dtype=None, device=None) -> Tensor:
    """Create a tensor that owns a copy of ``data``.

    Args:
        data: array, nested lists, scalar or Tensor.
        requires_grad: record ops on it for backward (floating dtypes only).
        dtype: ``None`` keeps an array's dtype (float64 stays float64); Python floats
            become float32, Python ints int64.
        device: ``"cpu"`` or ``"cuda"``; ``None`` means the current backend's device.
    """
    device = backend.normalize_device(device) if device is not None else backend.device_of_backend()
    dtype = _as_dtype(dtype) if dtype is not None else None
    array = _to_array(data, dtype, device)
    if array is data or (isinstance(data, Tensor) and array is data.data):
        array = array.copy()
    return Tensor(array, requires_grad=requires_grad)


# ----------------------------------------------------------------------------- versions


class VersionCounter:
    """How many in-place changes a tensor's data has seen (PyTorch's ``_version``).

    Tensors that share data share one counter: ``detach()``, ``Tensor(t)``, the outputs
    of view ops (``reshape``, ``permute``, basic indexing) and the parameters an
    optimizer keeps as views of one flat buffer (``gpukernels.optim.flat``: one counter
    per buffer, bumped once per ``step()``). Every in-place op bumps it; a Function
    records the version of each tensor it saves for backward, and backward refuses a
    saved tensor whose version changed since.
    """

    __slots__ = ("value",)

    def __init__(self, value: int = 0):
        self.value = value

    def __repr__(self):
        return f"VersionCounter({self.value})"


#: Bumped by each in-place op that autograd records (a "rebase", below); Functions
#: recorded since the last one carry the value as ``_epoch``, so backward routes the
#: gradient of a tensor changed in place to the node it was when each consumer used it.
_rebase_epoch = 0


def _saved_versions(saved, args, result) -> tuple:
    """``(index in saved, counter, version)`` for each saved array that is an input's or
    the output's data: what backward checks against later in-place changes."""
    found = []
    for i, s in enumerate(saved):
        if s is None or not hasattr(s, "ndim"):
            continue
        owner = result if s is result.data else None
        if owner is None:
            for a in args:
                if isinstance(a, Tensor) and a.data is s:
                    owner = a
                    break
            else:
                continue
        vc = owner._vc
        if vc is None:
            vc = owner._vc = VersionCounter()
        found.append((i, vc, vc.value))
    return tuple(found)


def _check_saved_versions(fn) -> None:
    for i, vc, version in fn._saved_versions:
        if vc.value != version:
            a = fn.saved[i]
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by an "
                f"inplace operation: [Tensor of shape {tuple(a.shape)}, dtype {dtype_name(a.dtype)}] "
                f"saved by {type(fn).__name__} is at version {vc.value}; expected version {version} "
                "instead. Hint: an in-place op (zero_, fill_, add_, mul_, copy_, t[...] = v, an "
                "optimizer step, load_state_dict) changed it after the forward pass used it; do "
                "that after backward(), or work on a clone()")


def _route(fn, parent):
    """The node ``parent`` was when ``fn`` recorded it: itself, or the node it replaced
    at an in-place op recorded after ``fn``."""
    for epoch, old in parent._rebases:
        if fn._epoch < epoch:
            return old
    return parent


# ----------------------------------------------------------------------------- Function


class Function:
    """One differentiable op: ``forward`` on arrays, ``backward`` as a VJP.

    Subclasses implement ``forward(self, *args, **kwargs) -> array`` and
    ``backward(self, grad) -> tuple`` with one entry per positional argument of forward
    (``None`` where there is no gradient). ``self.needs_input_grad[i]`` tells whether
    positional argument ``i`` wants a gradient, so backward can skip work.

    ``save_for_backward`` keeps arrays for backward; those that are the data of an
    input or of the output are checked at backward time against in-place changes made
    since (``VersionCounter``), as in PyTorch.
    """

    needs_input_grad: tuple = ()
    #: Whether forward/backward handle bfloat16 (uint16 bit patterns) correctly; an op
    #: that would compute on the bits as integers refuses bf16 inputs instead.
    bf16: bool = False
    #: Whether the output may be a view of the first input's data (reshape, permute,
    #: indexing): it then shares the input's version counter.
    view: bool = False
    saved = None
    _saved_versions: tuple = ()
    _epoch = 0

    def save_for_backward(self, *values):
        self.saved = values

    @classmethod
    def apply(cls, *args, **kwargs) -> Tensor:
        fn = cls()
        tensors = [a for a in args if isinstance(a, Tensor)]
        _check_same_device(cls.__name__, tensors)
        if not cls.bf16:
            for t in tensors:
                _refuse_bf16(t, cls.__name__)
        fn.needs_input_grad = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        raw = [a.data if isinstance(a, Tensor) else a for a in args]
        out = fn.forward(*raw, **kwargs)
        requires_grad = is_grad_enabled() and any(fn.needs_input_grad) and out.dtype in _FLOATS
        result = Tensor(out, requires_grad=requires_grad)
        if cls.view:
            src = args[0].data
            base = getattr(out, "base", None)
            if base is not None and (base is src or base is getattr(src, "base", None)):
                result._vc = args[0]._version_counter()
                result._is_view = True
        if requires_grad:
            fn.inputs = tuple(a if isinstance(a, Tensor) else None for a in args)
            result._ctx = fn
            if _rebase_epoch:
                fn._epoch = _rebase_epoch
            if fn.saved:
                fn._saved_versions = _saved_versions(fn.saved, args, result)
        return result

    def forward(self, *args, **kwargs):  # pragma: no cover - interface
        raise NotImplementedError

    def backward(self, grad):  # pragma: no cover - interface
        raise NotImplementedError


def _refuse_bf16(t, op):
    if t.dtype == bfloat16:
        raise TypeError(
            f"{op}: got a bfloat16 tensor of shape {t.shape}; bf16 data is held as uint16 "
            "bit patterns, which only the fused gk.functional ops (on the cuda/interpret "
            "backends), shape ops and casts understand: call .float() first")


def _check_same_device(op, tensors):
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        where = ", ".join(f"{tuple(t.shape)} on {t.device}" for t in tensors)
        raise RuntimeError(f"{op}: expected all tensors on one device, got {where}")


def _broadcast_shape(op, a, b) -> tuple:
    """NumPy's broadcast of shapes ``a`` and ``b``; a ValueError naming ``op``, both
    shapes and the first dimension that differs when they do not broadcast."""
    a, b = tuple(a), tuple(b)
    if a == b:
        return a
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        m = a[-i] if i <= len(a) else 1
        n = b[-i] if i <= len(b) else 1
        if m != n and m != 1 and n != 1:
            raise ValueError(
                f"{op}: shapes {a} and {b} cannot be broadcast together: size {m} (dimension "
                f"{len(a) - i} of the first) does not match size {n} (dimension {len(b) - i} of the "
                "second), and neither is 1")
        out.append(max(m, n) if m != 1 and n != 1 else m * n)
    return tuple(reversed(out))


def check_same_dtype(op, hint="", **tensors) -> None:
    """The dtype rule of ``@`` and ``gk.functional``'s ops (PyTorch's): operands of one
    op have one dtype; a mix (float32 with float64, ...) is a TypeError naming each."""
    dtypes = {name: t.dtype for name, t in tensors.items() if t is not None}
    if len(set(dtypes.values())) > 1:
        raise TypeError(f"{op}: dtypes differ: {', '.join(f'{k}={dtype_name(v)}' for k, v in dtypes.items())}"
                        + (f" ({hint})" if hint else ""))


def unbroadcast(grad, shape):
    """Sum ``grad`` over the axes that broadcasting expanded, so it takes ``shape``."""
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(
        i + extra for i, n in enumerate(shape) if n == 1 and grad.shape[i + extra] != 1
    )
    return grad.sum(axis=axes, keepdims=True).reshape(shape) if axes else grad.reshape(shape)


# ----------------------------------------------------------------------------- Tensor


class Tensor:
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
        global _rebase_epoch
        self.data[...] = new.data
        self._version_counter().value += 1
        if new._ctx is None:  # pragma: no cover - recorded ops always give a node
            return self
        self.requires_grad, self._ctx = True, new._ctx
        _rebase_epoch += 1
        self._rebases = self._rebases + ((_rebase_epoch, old),)
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
        _run_backward(self, grad, retain_graph)

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
        from . import functional  # noqa: PLC0415 - functional imports tensor

        return functional.relu(self)


_MATMUL_HINT = "as in PyTorch, @ and F.linear do not promote: cast one operand with .to(dtype)"


def _promote(a, b):
    """PyTorch's rule when an integer/bool tensor meets a floating one: the result takes
    the floating dtype (NumPy alone would give float64 for int64 with float32)."""
    if a.dtype in _FLOATS and b.dtype not in _FLOATS:
        b = b.to(a.dtype)
    elif b.dtype in _FLOATS and a.dtype not in _FLOATS:
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


# ----------------------------------------------------------------------------- backward


def _topological_order(root: Tensor) -> list[Tensor]:
    """Tensors of the graph under ``root``, every tensor after all it depends on."""
    order, visited = [], set()
    stack = [(root, False)]
    while stack:  # iterative DFS: deep nets must not hit Python's recursion limit
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        fn = node._ctx
        if fn is not None:
            for parent in fn.inputs:
                if parent is not None and parent._rebases:
                    parent = _route(fn, parent)  # changed in place after fn used it
                if parent is not None and parent.requires_grad and id(parent) not in visited:
                    stack.append((parent, False))
    return order


def _run_backward(root: Tensor, grad, retain_graph: bool) -> None:
    grads = {id(root): grad}
    handed_out = {id(grad)}  # arrays some .grad (or the caller) already holds
    for node in reversed(_topological_order(root)):
        g = grads.pop(id(node), None)
        if g is None:
            continue
        if node._ctx is None or node._retain_grad:
            _accumulate(node, g, handed_out)
        fn = node._ctx
        if fn is None:
            continue
        if getattr(fn, "freed", False):
            raise RuntimeError(
                "backward(): trying to backward through the graph a second time; "
                "pass retain_graph=True the first time"
            )
        if fn._saved_versions:
            _check_saved_versions(fn)
        input_grads = fn.backward(g)
        if not isinstance(input_grads, tuple):
            input_grads = (input_grads,)
        if not retain_graph:
            fn.saved, fn.freed = None, True
        for parent, pg in zip(fn.inputs, input_grads):
            if parent is None or pg is None:
                continue
            if parent._rebases:
                parent = _route(fn, parent)
            if not parent.requires_grad:
                continue
            if tuple(pg.shape) != parent.shape:
                raise RuntimeError(
                    f"{type(fn).__name__}.backward returned a gradient of shape "
                    f"{tuple(pg.shape)} for an input of shape {parent.shape}"
                )
            key = id(parent)
            grads[key] = pg if key not in grads else add_arrays(grads[key], pg)


def _accumulate(tensor: Tensor, g, handed_out: set) -> None:
    """Add ``g`` into ``tensor.grad``. A fresh gradient array becomes ``.grad`` as it is
    (no copy: for a conv input that is a whole activation's worth of memory traffic);
    one that another ``.grad`` or the caller holds, or a view, is copied, so a later
    in-place accumulation can never change two gradients at once.

    A parameter an optimizer keeps in a flat buffer (``gpukernels.optim.flat``) carries
    its slice of the flat gradient buffer as ``_grad_view``: with no ``.grad`` yet, ``g``
    is copied into that slice and ``.grad`` wraps it, so the optimizer finds every
    gradient in one contiguous array (one copy, the bytes a gather at step time would
    move). ``zero_grad(set_to_none=True)`` drops ``.grad``; the next backward writes the
    slice again."""
    g = cast_array(g, tensor.dtype)
    view = getattr(tensor, "_grad_view", None)
    if tensor.grad is not None:
        if g.dtype == bfloat16:
            tensor.grad.data[...] = add_arrays(tensor.grad.data, g)
        else:
            tensor.grad.data += g
    elif (view is not None and view.shape == g.shape and view.dtype == g.dtype
          and backend.device_of(view) == backend.device_of(g)):
        view[...] = g
        tensor.grad = Tensor(view)
    elif id(g) in handed_out or getattr(g, "base", None) is not None:
        tensor.grad = Tensor(g.copy())
    else:
        handed_out.add(id(g))
        tensor.grad = Tensor(g)


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
