"""CUDA graphs: record a whole training step once, replay it every step after.

A training step of a small CNN is a few hundred kernel launches of a few microseconds
each; from Python each launch costs 10-30 us of host time, so the GPU idles between
kernels. A CUDA graph records the launches of one step (forward, backward, optimizer
update) with their arguments, and one ``cudaGraphLaunch`` replays them all: the host
cost of a step becomes one call, whatever the number of kernels.

    step = GraphedStep(train_step, warmup=3)   # train_step(x, y) -> loss Tensor
    for x, y in loader:
        loss = step(x, y)                      # eager 3 times, then record, then replay

What a replay cannot change, and how this module copes:

- **Addresses.** Every kernel reads and writes the addresses it had at capture. Inputs
  are copied into static input tensors before each replay; the step's temporaries come
  from a memory pool private to the graph (nothing else allocates from it, so nothing
  else can be handed memory the graph writes); outputs (the loss) are the same tensors
  every replay: read them before the next call. Parameters, gradients and optimizer
  state are updated in place (flat buffers, ``gpukernels.optim.flat``): do not replace
  a parameter's ``.data`` between replays.
- **Host values.** Kernel scalars are frozen at capture. Step-dependent scalars (Adam's
  bias corrections) must live on the device: use ``capturable=True`` optimizers (an
  optimizer that is not raises while the step is recorded). Code that would read the
  device on the host during the step (a sync, illegal while recording) either defers
  its check to after each replay (cross-entropy's target range, ``check=True``) or
  refuses to be recorded (dropout, whose mask comes from the host).
- **First calls.** Triton compiles and autotunes a kernel on its first call for a shape,
  which a recording cannot contain: the ``warmup`` eager steps do that first. Those are
  real training steps, run on the inputs they are given, like every later call.

Replays run on one CUDA stream of their own that is ordered with CuPy's default stream
(a blocking stream), so data prepared on the default stream before a call is seen by
the replay, and reads of the outputs afterwards wait for it. Triton launches on CuPy's
current stream on the cuda backend (``backend._launch_triton_on_cupy_streams``), so the
Triton kernels are recorded along with CuPy's.
"""

from __future__ import annotations

import numbers

from . import backend

# ----------------------------------------------------------------------------- capture state
# Read by the kernels (gpukernels/triton/), so this module imports nothing above
# ``backend``: a step's tensors are recognised by what they are (``data``, ``_new``).

_capture = {"active": False, "checks": []}


def capturing() -> bool:
    """True while ``gpukernels.cuda_graph`` records a CUDA graph: code that would read a
    device value on the host (a sync, illegal during capture) or bake a per-step host
    value into a kernel argument must not run now (it raises, or defers its check)."""
    return _capture["active"]


def _set_capturing(active: bool) -> list:
    """Start (True) or stop (False) a capture; returns the checks deferred during it."""
    checks, _capture["checks"] = _capture["checks"], []
    _capture["active"] = bool(active)
    return checks


def defer_check(check) -> None:
    """During a capture: ``check()`` (which reads device values and raises on bad data)
    runs after each replay of the graph instead of now."""
    if not _capture["active"]:
        raise RuntimeError("defer_check() outside a CUDA graph capture: run the check now")
    _capture["checks"].append(check)


def _is_tensor(x) -> bool:
    return hasattr(x, "data") and callable(getattr(x, "_new", None))


# ----------------------------------------------------------------------------- GraphedStep



class GraphedStep:
    """``fn`` run eagerly ``warmup`` times, then recorded as a CUDA graph and replayed.

    Each call is one step on the inputs it is given, whether eager, recorded or replayed,
    so losses equal those of calling ``fn`` directly (the kernels are deterministic).

    Args:
        fn: the whole step, ``fn(*tensors) -> Tensor | tuple of Tensors`` (e.g. zero_grad,
            forward, loss, backward, ``optimizer.step()``; return the loss). Its inputs
            must keep their shapes and dtypes from call to call (use ``drop_last`` in the
            loader); everything else it touches must live on the GPU.
        warmup: eager calls before the recording (>= 1: they compile and autotune the
            kernels and create the optimizer state).
        check: after each replay, run the checks the step deferred while it was recorded
            (cross-entropy target range): one device sync per step. ``False`` skips them
            (benchmarks).

    Returns on each call what ``fn`` returns; after the recording these are the same
    tensors every call (overwritten by the next replay).
    """

    def __init__(self, fn, warmup: int = 3, check: bool = True):
        if not callable(fn):
            raise TypeError(f"GraphedStep: fn must be callable, got {type(fn).__name__}")
        if not isinstance(warmup, numbers.Integral) or warmup < 1:
            raise ValueError(f"GraphedStep: warmup must be an int >= 1 (compile and autotune "
                             f"before recording), got {warmup!r}")
        self.fn, self.warmup, self.check = fn, int(warmup), bool(check)
        self.calls = 0
        self.graph = None
        self._inputs = self._outputs = None
        self._checks = []

    @property
    def recorded(self) -> bool:
        """True once the graph exists (later calls replay it)."""
        return self.graph is not None

    def __call__(self, *inputs):
        for i, x in enumerate(inputs):
            if not _is_tensor(x):
                raise TypeError(f"GraphedStep: input {i} must be a Tensor, got {type(x).__name__}")
            if x.device != "cuda":
                raise RuntimeError(f"GraphedStep: input {i} is on {x.device}; CUDA graphs need "
                                   "every tensor of the step on the GPU (backend 'cuda')")
        if backend.get_backend() != "cuda":
            raise RuntimeError(f"GraphedStep needs the 'cuda' backend (CUDA graphs), got "
                               f"{backend.get_backend()!r}")
        self.calls += 1
        if self.calls <= self.warmup:
            return self.fn(*inputs)
        if self.graph is None:
            return self._record(inputs)
        return self._replay(inputs)

    # -- recording ---------------------------------------------------------------------
    def _record(self, inputs):
        cupy = backend._cupy()
        # a blocking stream: ordered with the legacy default stream both ways
        self._stream = cupy.cuda.Stream(non_blocking=False)
        self._pool = cupy.cuda.MemoryPool()  # the graph's temporaries, and only them
        self._inputs = tuple(x._new(x.data.copy()) for x in inputs)
        with self._stream, cupy.cuda.using_allocator(self._pool.malloc):
            _set_capturing(True)
            self._stream.begin_capture()
            try:
                outputs = self.fn(*self._inputs)
            except BaseException as exc:
                try:
                    self._stream.end_capture()
                except Exception:  # noqa: BLE001 - the capture is invalid anyway
                    pass
                _set_capturing(False)
                raise RuntimeError(f"GraphedStep: the step could not be recorded as a CUDA graph "
                                   f"(call {self.calls}): {exc}") from exc
            try:
                graph = self._stream.end_capture()
            finally:
                self._checks = _set_capturing(False)
        self.graph, self._outputs = graph, outputs
        return self._launch()  # recording ran nothing: this call's step runs now

    def _replay(self, inputs):
        if len(inputs) != len(self._inputs):
            raise ValueError(f"GraphedStep: recorded with {len(self._inputs)} inputs, got {len(inputs)}")
        for i, (static, x) in enumerate(zip(self._inputs, inputs)):
            if x.shape != static.shape or x.dtype != static.dtype:
                raise ValueError(
                    f"GraphedStep: input {i} has shape {x.shape} and dtype {x.dtype}; the graph "
                    f"was recorded for {static.shape} {static.dtype} (use drop_last=True)")
        with self._stream:
            for static, x in zip(self._inputs, inputs):
                static.data[...] = x.data  # device copy, on the replay stream
        return self._launch()

    def _launch(self):
        self.graph.launch(self._stream)
        if self.check:
            for check in self._checks:
                check()  # reads on the default stream: waits for the replay
        return self._outputs
