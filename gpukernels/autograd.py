"""Reverse-mode autograd: grad mode, ``Function``, version counters and the backward pass.

Every differentiable op is a ``Function``: ``forward`` computes on raw arrays and saves
what its backward needs, ``backward`` maps the gradient of the output to the gradients
of the inputs (a vector-Jacobian product). ``Function.apply`` runs the forward and, when
grad mode is on and an input requires a gradient, records the Function on the output:
the recorded Functions form the tape. ``Tensor.backward`` calls ``run_backward``, which
sorts the tape topologically and runs the backwards in reverse, summing gradients where
a tensor feeds several ops.

In-place ops bump the tensor's version counter (``VersionCounter``, shared by tensors
that share data), as do optimizer steps and ``load_state_dict``; backward refuses a
tensor saved for it whose version changed since, naming the op that saved it, as
PyTorch does.

This module knows tensors only as ``Node``s (``Tensor`` in tensor.py is the one
subclass) and makes its outputs with the input's ``_new``, so the dependency points one
way: tensor.py imports autograd, never the reverse.
"""

from __future__ import annotations

import contextlib
import threading

from . import backend
from .dtypes import FLOATS, bfloat16, dtype_name
from .kernels import add_arrays, cast_array

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


# ----------------------------------------------------------------------------- versions


class Node:
    """What autograd reads of a tensor: ``data``, ``requires_grad``, ``grad``, ``_ctx``
    (the Function that made it), ``_vc`` (its version counter), ``_rebases`` and
    ``_retain_grad``; ``_new(data, requires_grad)`` makes a fresh tensor. ``Tensor`` is
    the one subclass."""

    _vc = None
    _rebases: tuple = ()
    #: ``hook(tensor)`` callables run when backward has accumulated this leaf's gradient
    #: (``register_post_accumulate_grad_hook``); a tensor gets its own list on first use.
    _post_accumulate_hooks: tuple = ()


class RemovableHandle:
    """What ``register_post_accumulate_grad_hook`` returns: ``remove()`` unregisters."""

    def __init__(self, hooks: list, hook):
        self._hooks, self._hook = hooks, hook

    def remove(self) -> None:
        if self._hook in self._hooks:
            self._hooks.remove(self._hook)


def register_post_accumulate_grad_hook(node: Node, hook) -> RemovableHandle:
    """Run ``hook(node)`` each time a backward pass has accumulated ``node.grad`` (a leaf),
    after all of that pass's contributions to it are summed: the gradient is final for
    the pass (PyTorch's ``Tensor.register_post_accumulate_grad_hook``). Data-parallel
    training starts a bucket's all-reduce from here, while backward goes on."""
    if node._ctx is not None:
        raise RuntimeError("post accumulate grad hooks cannot be registered on non-leaf tensors")
    if not node.__dict__.get("_post_accumulate_hooks"):
        node._post_accumulate_hooks = []
    node._post_accumulate_hooks.append(hook)
    return RemovableHandle(node._post_accumulate_hooks, hook)


_callbacks = threading.local()


def queue_callback(callback) -> None:
    """Run ``callback()`` once the backward pass now running has finished (after its last
    gradient is accumulated, before ``backward()`` returns): PyTorch's
    ``Variable._execution_engine.queue_callback``. Called outside a backward pass it is
    a RuntimeError."""
    queue = getattr(_callbacks, "queue", None)
    if queue is None:
        raise RuntimeError("queue_callback() can only be called while a backward pass is running")
    queue.append(callback)


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
class _Epoch:
    value = 0


rebase_epoch = _Epoch()  # .value: see above; tensor.py's in-place ops advance it


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
                if isinstance(a, Node) and a.data is s:
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
    #: Set by the tape before each ``backward``: True when it is the last one (no
    #: ``retain_graph``), after which the tape drops ``saved``, so backward may hand a
    #: saved array out as a gradient instead of a copy of it.
    last_backward: bool = False
    _saved_versions: tuple = ()
    _epoch = 0

    def save_for_backward(self, *values):
        self.saved = values

    @classmethod
    def apply(cls, *args, **kwargs) -> Node:
        fn = cls()
        tensors, raw, needs = [], [], []
        for a in args:  # one pass: a small op's whole Python cost is a few such loops
            if isinstance(a, Node):
                tensors.append(a)
                raw.append(a.data)
                needs.append(a.requires_grad)
            else:
                raw.append(a)
                needs.append(False)
        if len(tensors) > 1:
            _check_same_device(cls.__name__, tensors)
        if not cls.bf16:
            for t in tensors:
                _refuse_bf16(t, cls.__name__)
        fn.needs_input_grad = tuple(needs)
        out = fn.forward(*raw, **kwargs)
        requires_grad = is_grad_enabled() and any(fn.needs_input_grad) and out.dtype in FLOATS
        result = tensors[0]._new(out, requires_grad)
        if cls.view:
            src = args[0].data
            base = getattr(out, "base", None)
            if base is not None and (base is src or base is getattr(src, "base", None)):
                result._vc = args[0]._version_counter()
                result._is_view = True
        if requires_grad:
            fn.inputs = tuple(a if isinstance(a, Node) else None for a in args)
            result._ctx = fn
            if rebase_epoch.value:
                fn._epoch = rebase_epoch.value
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


# ----------------------------------------------------------------------------- backward


def _topological_order(root: Node) -> list[Node]:
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


def run_backward(root: Node, grad, retain_graph: bool) -> None:
    """Run the tape under ``root`` backwards from ``grad`` (``Tensor.backward``), then the
    callbacks queued during it (``queue_callback``), in the order queued."""
    outer = getattr(_callbacks, "queue", None)
    _callbacks.queue = queue = []
    try:
        _run_tape(root, grad, retain_graph)
        while queue:  # a callback may queue another
            queue.pop(0)()
    finally:
        _callbacks.queue = outer


def _run_tape(root: Node, grad, retain_graph: bool) -> None:
    grads = {id(root): grad}
    handed_out = {id(grad)}  # arrays some .grad (or the caller) already holds
    for node in reversed(_topological_order(root)):
        g = grads.pop(id(node), None)
        if g is None:
            continue
        if node._ctx is None or node._retain_grad:
            _accumulate(node, g, handed_out)
            for hook in tuple(node._post_accumulate_hooks):
                hook(node)
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
        fn.last_backward = not retain_graph
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


def _accumulate(tensor: Node, g, handed_out: set) -> None:
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
        tensor.grad = tensor._new(view)
    elif id(g) in handed_out or getattr(g, "base", None) is not None:
        tensor.grad = tensor._new(g.copy())
    else:
        handed_out.add(id(g))
        tensor.grad = tensor._new(g)
