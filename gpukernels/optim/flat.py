"""Flat buffers: the parameters of one optimizer param group as views of one array.

For each (param group, device, dtype) an optimizer keeps one ``FlatParams``:

- ``data``: one contiguous array holding every parameter; each ``param.data`` is
  rebound to a view of it (the Module holds the same Parameter objects, so it sees the
  views);
- ``grad``: an array of the same layout; each parameter carries its slice as
  ``param._grad_view``, and autograd writes a leaf's gradient into that slice instead of
  a fresh array (``gpukernels.autograd._accumulate``), so ``param.grad.data`` is a view too;
- ``state[name]``: one array per optimizer state (``exp_avg``, ``momentum_buffer``, ...)
  of the same layout; ``optimizer.state[param][name]`` holds the parameter's view, so
  ``state_dict()`` keeps PyTorch's per-parameter layout;
- ``version``: the parameters' shared ``VersionCounter`` (views of one buffer share
  one, as in PyTorch), bumped once per update;
- ``steps`` (optimizers with ``capturable=True``): one float32 step count per parameter
  on the buffer's device (PyTorch's capturable ``state["step"]`` tensors);
  ``optimizer.state[param]["step"]`` holds the parameter's 0-d view, and the update
  advances the counts on the device.

An update is then one call over whole arrays: one kernel launch on the Triton backends,
whatever the number of parameter tensors (``gpukernels.triton.optim``).

Layout: parameter ``i`` occupies ``[offsets[i], offsets[i] + size_i)``; every offset is
a multiple of ``ALIGN_BYTES`` (128 bytes, a cache line), so each view starts aligned
(Triton specialises kernels on 16-byte aligned pointers: a conv kernel reading a weight
view keeps its vector loads). Padding costs at most 31 float32 elements per tensor
(ResNet-50: 161 tensors, < 20 KB). The padding is zero in ``data`` and ``grad`` and is
swept by whole-buffer updates (it stays zero: a zero gradient moves nothing, except
that ``eps = 0`` makes 0/0 there); no view ever reads it.

Validity: the buffer is valid while every parameter's ``.data`` IS its view (object
identity: the cheap check the optimizer makes before each step). ``Module.to`` moves
whole buffers (``move``), so the views survive it; ``Module.load_state_dict`` copies in
place. Anything else that rebinds ``.data`` (``p.data = ...``, moving only some of a
buffer's parameters) makes the optimizer rebuild the buffer at its next step, copying
values, gradients and state.

Memory traffic of the gradient path: autograd copies each fresh leaf gradient into its
slice once (4 + 4 bytes per float32 element: the same bytes a gather at step time would
move, and later backward calls then accumulate in place); a gradient the user assigns
(``p.grad = Tensor(...)``) is copied in at each step instead.
"""

from __future__ import annotations

import weakref

import numpy as np

from .. import backend
from ..autograd import VersionCounter
from ..kernels import cast_array
from ..tensor import Tensor

#: Every parameter's view starts at a multiple of this many bytes of the buffer.
ALIGN_BYTES = 128
#: dtype of the device step counts of capturable optimizers (PyTorch's: float32, exact
#: to 2**24 steps).
STEP_DTYPE = np.float32


def _dead():
    return None


class FlatParams:
    """The parameters of one (param group, device, dtype) as views of one buffer.

    Args:
        params: Parameters, all on one device with one dtype (each appears once).
        owner: the optimizer whose ``state`` holds views of the state buffers (kept as a
            weak reference, so a parameter never keeps a dead optimizer's state alive).

    Attributes:
        params, device, dtype, offsets, sizes, numel (padded length of every buffer),
        data, grad, views, grad_views, state (name -> buffer), state_views (name -> views),
        steps (float32 counts, one per parameter, or None), step_views (their 0-d views).
    """

    def __init__(self, params, owner=None):
        self.params = list(params)
        first = self.params[0].data
        self.device, self.dtype = backend.device_of(first), first.dtype
        align = max(1, ALIGN_BYTES // self.dtype.itemsize)
        self.offsets, self.sizes = [], []
        n = 0
        for p in self.params:
            self.offsets.append(n)
            self.sizes.append(int(p.data.size))
            n += -(-int(p.data.size) // align) * align
        self.numel = n
        self._owner = weakref.ref(owner) if owner is not None else _dead
        self._init: dict = {}
        self.state: dict = {}
        self.state_views: dict = {}
        self.steps = None
        self.step_views: list = []
        # the parameters are views of one buffer, so they share one version counter
        # (autograd's check of saved tensors); an update bumps it once for all of them
        self.version = VersionCounter(max(p._version for p in self.params))
        xp = backend.xp_for_device(self.device)
        self.data = xp.zeros(n, dtype=self.dtype)
        self.grad = xp.zeros(n, dtype=self.dtype)
        self.views = self._views(self.data)
        self.grad_views = self._views(self.grad)
        for p, view, grad_view in zip(self.params, self.views, self.grad_views):
            view[...] = p.data
            self._bind(p, view, grad_view)

    # -- layout --------------------------------------------------------------------------
    def _views(self, buffer):
        return [buffer[o:o + s].reshape(p.shape) for p, o, s in zip(self.params, self.offsets, self.sizes)]

    def _copy(self, dst, src):
        """``dst[...] = src``, moving ``src`` to this buffer's device (dtype cast by assignment)."""
        dst[...] = backend.xp_for_device(self.device).asarray(backend.to_device(src, self.device))

    def _bind(self, p, view, grad_view):
        """Make ``p.data`` the view and ``grad_view`` the slice autograd writes; a gradient
        ``p`` already has is copied in, and follows the parameter when it was autograd's
        (the old slice), while a tensor the user assigned stays the user's."""
        old_slice = getattr(p, "_grad_view", None)
        grad = p.grad
        p.data = view
        p._vc = self.version
        p._grad_view = grad_view
        p._flat = weakref.ref(self)
        if grad is not None and tuple(grad.data.shape) == tuple(grad_view.shape):
            self._copy(grad_view, grad.data)
            if grad.data is old_slice:
                p.grad = Tensor(grad_view)

    def valid(self) -> bool:
        """Every parameter's ``.data`` is still its view (nothing rebound it)."""
        return all(p.data is v for p, v in zip(self.params, self.views))

    def segments(self, indices) -> tuple:
        """``(start, stop)`` element ranges covering the slots of the parameters at
        ``indices`` (ascending), a slot running to the next parameter's offset (padding
        included) so that neighbours merge into one range."""
        ranges: list[list[int]] = []
        for i in indices:
            start = self.offsets[i]
            stop = self.offsets[i + 1] if i + 1 < len(self.offsets) else self.numel
            if stop == start:
                continue
            if ranges and ranges[-1][1] == start:
                ranges[-1][1] = stop
            else:
                ranges.append([start, stop])
        return tuple((a, b) for a, b in ranges)

    # -- state ---------------------------------------------------------------------------
    def ensure_state(self, name: str, init: float) -> bool:
        """Allocate state buffer ``name`` filled with ``init`` unless it exists; True when
        it was allocated now (every slot then holds ``init``)."""
        if name in self.state:
            return False
        xp = backend.xp_for_device(self.device)
        self.state[name] = xp.full(self.numel, init, dtype=self.dtype)
        self.state_views[name] = self._views(self.state[name])
        self._init[name] = init
        return True

    def slot(self, name: str, index: int, reset: bool = False):
        """The view of state ``name`` for parameter ``index``, refilled with its initial
        value when ``reset`` (a parameter whose state starts after the buffer's)."""
        view = self.state_views[name][index]
        if reset:
            view.fill(self._init[name])
        return view

    def ensure_steps(self) -> bool:
        """Allocate the step counts (zeros, float32, on the device) unless they exist;
        True when allocated now."""
        if self.steps is not None:
            return False
        self.steps = backend.xp_for_device(self.device).zeros(len(self.params), dtype=STEP_DTYPE)
        self.step_views = self._step_views(self.steps)
        return True

    @staticmethod
    def _step_views(steps):
        return [steps[i:i + 1].reshape(()) for i in range(steps.size)]

    def adopt_steps(self, states) -> list:
        """Copy step counts that are not views of ``steps`` (host numbers loaded by
        ``load_state_dict``, arrays left in an old buffer or assigned by a user) into
        their slots, and make ``states[param]["step"]`` the view. Arrays are copied on
        the device (never read on the host). Returns ``(index, value)`` of the host
        numbers copied."""
        self.ensure_steps()
        numbers = []
        for i, (p, view) in enumerate(zip(self.params, self.step_views)):
            entry = states.get(p)
            value = entry.get("step") if entry else None
            if value is None or value is view:
                continue
            if isinstance(value, Tensor):
                value = value.data
            if hasattr(value, "shape"):
                if value.size != 1:
                    raise ValueError(f"optimizer state 'step' must hold one count, got shape {tuple(value.shape)}")
                self._copy(view, value.reshape(()))
            else:
                view[...] = value
                numbers.append((i, value))
            entry["step"] = view
        return numbers

    def adopt(self, states, names) -> None:
        """Copy state arrays that are not views of this buffer (loaded by
        ``load_state_dict``, assigned by a user, left in an old buffer) into their slots,
        and make ``states[param][name]`` the view."""
        for name in names:
            views = self.state_views[name]
            for p, view in zip(self.params, views):
                entry = states.get(p)
                value = entry.get(name) if entry else None
                if value is None or value is view or not hasattr(value, "shape"):
                    continue
                if tuple(value.shape) != tuple(view.shape):
                    raise ValueError(f"optimizer state {name!r} has shape {tuple(value.shape)}, "
                                     f"its parameter has shape {tuple(view.shape)}")
                self._copy(view, value)
                entry[name] = view

    # -- Module.to -----------------------------------------------------------------------
    def move(self, members, device=None, dtype=None) -> bool:
        """Move (and/or cast) the whole buffer with its gradient and state buffers, so the
        parameters stay views of one buffer after ``Module.to``.

        Args:
            members: ids of the parameters being moved; unless it holds every parameter
                of this buffer (and the buffer is valid) nothing happens.
            device: ``"cpu"`` / ``"cuda"`` or ``None``; dtype: a floating dtype or ``None``.

        Returns:
            True when the buffer now lives on ``device`` with ``dtype``; False when the
            caller must move these parameters one by one (the optimizer then rebuilds the
            buffer at its next step).
        """
        if not self.valid() or any(id(p) not in members for p in self.params):
            return False
        new_dtype = self.dtype if dtype is None else np.dtype(dtype)
        new_device = self.device if device is None else backend.normalize_device(device)
        if (new_dtype, new_device) == (self.dtype, self.device):
            return True

        def convert(a):
            return backend.to_device(cast_array(a, new_dtype), new_device)

        owner = self._owner()
        states = owner.state if owner is not None else {}
        old_grad_views = self.grad_views
        old_state_views = self.state_views
        self.device, self.dtype = new_device, new_dtype
        self.data, self.grad = convert(self.data), convert(self.grad)
        self.views, self.grad_views = self._views(self.data), self._views(self.grad)
        self.state = {name: convert(buf) for name, buf in self.state.items()}
        self.state_views = {name: self._views(buf) for name, buf in self.state.items()}
        old_step_views = self.step_views
        if self.steps is not None:  # counts stay float32, follow the device
            self.steps = backend.to_device(self.steps, new_device)
            self.step_views = self._step_views(self.steps)
        for i, p in enumerate(self.params):
            grad = p.grad
            p.data, p._grad_view = self.views[i], self.grad_views[i]
            if grad is not None:
                if grad.data is old_grad_views[i]:
                    p.grad = Tensor(self.grad_views[i])
                else:  # the user's tensor: moved alone, as Module.to moves any gradient
                    p.grad = Tensor(convert(grad.data))
            entry = states.get(p)
            for name, views in old_state_views.items():
                if entry and entry.get(name) is views[i]:
                    entry[name] = self.state_views[name][i]
            if entry and old_step_views and entry.get("step") is old_step_views[i]:
                entry["step"] = self.step_views[i]
        return True
