"""Tensor and reverse-mode autograd.

A ``Tensor`` wraps one array (``numpy.ndarray`` or ``cupy.ndarray``). Every
differentiable op is a ``Function``: ``forward`` computes on raw arrays and saves what
its backward needs, ``backward`` maps the gradient of the output to the gradients of
the inputs (a vector-Jacobian product). ``Function.apply`` runs the forward and, when
grad mode is on and an input requires a gradient, records the Function on the output:
the recorded Functions form the tape. ``Tensor.backward`` sorts the tape topologically
and runs the backwards in reverse, summing gradients where a tensor feeds several ops.

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

float16, float32, float64 = np.dtype("float16"), np.dtype("float32"), np.dtype("float64")
int32, int64, bool_ = np.dtype("int32"), np.dtype("int64"), np.dtype("bool")

#: bfloat16 (8-bit exponent, 7-bit mantissa). NumPy and CuPy have no such dtype, so a bf16
#: tensor keeps its bit patterns in a ``uint16`` array (what ``torch.bfloat16.view(int16)``
#: holds) and ``gk.bfloat16 is numpy.dtype("uint16")``; the library has no unsigned 16-bit
#: integer tensors. Integer arithmetic on those bits would be silently wrong, so bf16
#: tensors only go through the ops that know (``Function.bf16``): the fused kernels of
#: ``gk.functional`` on the Triton backends, shape ops, casts and gradient sums.
bfloat16 = np.dtype("uint16")

_FLOATS = (float16, float32, float64, bfloat16)


def from_float32(xp, a32, dtype):
    """float32 values stored as ``dtype`` (bf16 bit patterns: round to nearest even;
    NaN stays NaN)."""
    if np.dtype(dtype) != bfloat16:
        return a32.astype(dtype, copy=False)  # float32 stays as it is: no extra pass
    bits = xp.ascontiguousarray(a32, dtype=np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    # the rounding carry could turn a NaN payload into inf or -0: keep NaNs quiet NaNs
    # (a select, not a host-side any(): no device sync, and CUDA-graph safe)
    return xp.where((bits & 0x7FFFFFFF) > 0x7F800000, np.uint16(0x7FC0), rounded).astype(np.uint16, copy=False)


def to_float32(xp, a):
    """The float32 values of ``a`` (bf16 bit patterns widened exactly)."""
    if a.dtype != bfloat16:
        return a.astype(np.float32)
    return (xp.ascontiguousarray(a).astype(np.uint32) << 16).view(np.float32)


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


def dtype_name(dtype) -> str:
    """``"bfloat16"`` for the bf16 storage dtype, NumPy's name otherwise."""
    return "bfloat16" if np.dtype(dtype) == bfloat16 else np.dtype(dtype).name


def _as_dtype(dtype):
    try:
        return np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be a NumPy dtype or its name, got {dtype!r}") from exc


def _to_array(data, dtype, device):
    """Turn ``data`` into an array on ``device`` with PyTorch's dtype inference."""
    if isinstance(data, Tensor):
        data = data.data
    xp = backend.xp_for_device(device)
    if hasattr(data, "dtype") and hasattr(data, "shape"):  # numpy / cupy array or scalar
        array = backend.to_device(data if hasattr(data, "ndim") else np.asarray(data), device)
        return cast_array(array, dtype) if dtype is not None else array
    host = np.asarray(data)
    if dtype is None:
        if host.dtype.kind == "f":
            dtype = float32  # Python floats become float32, as in PyTorch
        elif host.dtype.kind in "iu":
            dtype = int64
        elif host.dtype.kind != "b":
            raise TypeError(f"tensor(): cannot make a tensor from {type(data).__name__} data")
    return xp.asarray(host if dtype is None else cast_array(host, dtype))


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


# ----------------------------------------------------------------------------- Function


class Function:
    """One differentiable op: ``forward`` on arrays, ``backward`` as a VJP.

    Subclasses implement ``forward(self, *args, **kwargs) -> array`` and
    ``backward(self, grad) -> tuple`` with one entry per positional argument of forward
    (``None`` where there is no gradient). ``self.needs_input_grad[i]`` tells whether
    positional argument ``i`` wants a gradient, so backward can skip work.
    """

    needs_input_grad: tuple = ()
    #: Whether forward/backward handle bfloat16 (uint16 bit patterns) correctly; an op
    #: that would compute on the bits as integers refuses bf16 inputs instead.
    bf16: bool = False

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
        if requires_grad:
            fn.inputs = tuple(a if isinstance(a, Tensor) else None for a in args)
            result._ctx = fn
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

    def __init__(self, data, requires_grad: bool = False):
        if isinstance(data, Tensor):
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
        """A tensor sharing this data with no history and no gradient requirement."""
        return Tensor(self.data, requires_grad=False)

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

    def zero_(self) -> Tensor:
        self.data[...] = 0  # +0.0 is all-zero bits in every float dtype, bf16 included
        return self

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
        return MatMul.apply(self, self._wrap(other))

    def __rmatmul__(self, other):
        return MatMul.apply(self._wrap(other), self)

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
        return Tensor(op(self.data, other))

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
        if node._ctx is not None:
            for parent in node._ctx.inputs:
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
        input_grads = fn.backward(g)
        if not isinstance(input_grads, tuple):
            input_grads = (input_grads,)
        if not retain_graph:
            fn.saved, fn.freed = None, True
        for parent, pg in zip(fn.inputs, input_grads):
            if parent is None or pg is None or not parent.requires_grad:
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
        return a + b

    def backward(self, g):
        return unbroadcast(g, self.shapes[0]), unbroadcast(g, self.shapes[1])


class Sub(Function):
    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        return a - b

    def backward(self, g):
        return unbroadcast(g, self.shapes[0]), unbroadcast(-g, self.shapes[1])


class Mul(Function):
    def forward(self, a, b):
        self.save_for_backward(a, b)
        return a * b

    def backward(self, g):
        a, b = self.saved
        ga = unbroadcast(g * b, a.shape) if self.needs_input_grad[0] else None
        gb = unbroadcast(g * a, b.shape) if self.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    def forward(self, a, b):
        self.save_for_backward(a, b)
        return a / b

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
        self.save_for_backward(a, b)
        return a @ b

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

    def forward(self, a, dims):
        self.inverse = tuple(np.argsort(dims))
        return a.transpose(dims)

    def backward(self, g):
        return (g.transpose(self.inverse),)


class GetItem(Function):
    """Basic and advanced indexing; the backward scatters with ``add.at`` (repeats add up)."""

    def forward(self, a, index):
        self.shape, self.dtype, self.index = a.shape, a.dtype, index
        return a[index]

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
