"""``gk.distributed``: many processes on ``torch.distributed``, with PyTorch's names.

    import gpukernels.distributed as dist
    dist.init_process_group()            # env:// from torchrun; "nccl" on cuda, "gloo" otherwise
    dist.get_rank(), dist.get_world_size(), dist.barrier(), dist.destroy_process_group()

We run no communication engine of our own: every collective is ``torch.distributed``'s
(NCCL between GPUs, gloo between CPU processes), launched by ``torchrun`` from one
machine to many. Arrays cross to torch without a copy: a NumPy array as
``torch.from_numpy`` (gloo reads and writes its memory), a CuPy array through DLPack
(``backend.torch_from_cupy``), with torch's current stream set to CuPy's current
stream while the collective is issued and waited for, so NCCL starts after the kernels
that wrote the array and the kernels that read the result start after NCCL.
bf16 arrays (uint16 bit patterns) are reduced as ``torch.bfloat16``.

``all_reduce`` and ``broadcast`` take a Tensor or a contiguous array, work in place, and
with ``async_op=True`` return a ``Work`` whose ``wait()`` finishes the job (and, for
``op="avg"`` on a backend without an average, divides by the world size then).

Collectives time out (``timeout``, default 10 minutes, as PyTorch's NCCL default) and a
peer that dies closes its connections, so a failed rank ends the job with an error on
every rank instead of a hang.

``torch`` is imported on first use: ``import gpukernels`` stays NumPy-only.
"""

from __future__ import annotations

import datetime
import os

import numpy as np

from . import backend
from .autograd import Node
from .dtypes import bfloat16

#: Collective timeout unless ``init_process_group(timeout=...)`` says otherwise
#: (``GPUKERNELS_DIST_TIMEOUT`` seconds overrides it).
DEFAULT_TIMEOUT = datetime.timedelta(minutes=10)
_OPS = ("sum", "avg", "max", "min", "product")


def _torch_dist():
    import torch.distributed as td  # noqa: PLC0415 - lazy: NumPy-only users never load torch

    return td


def is_available() -> bool:
    """Whether ``torch`` (with ``torch.distributed``) is installed."""
    try:
        return _torch_dist().is_available()
    except ImportError:
        return False


def is_initialized() -> bool:
    """Whether ``init_process_group`` has run (and ``destroy_process_group`` not since)."""
    return is_available() and _torch_dist().is_initialized()


def default_backend() -> str:
    """``"nccl"`` when the library runs on ``cuda``, ``"gloo"`` on ``numpy`` and ``interpret``."""
    return "nccl" if backend.get_backend() == "cuda" else "gloo"


def init_process_group(backend_name: str | None = None, init_method: str | None = None,
                       timeout: datetime.timedelta | float | None = None, world_size: int = -1,
                       rank: int = -1) -> None:
    """Join the default process group (``torch.distributed.init_process_group``).

    Args:
        backend_name: ``"nccl"``, ``"gloo"`` or None for ``default_backend()``.
        init_method: None reads ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK`` and
            ``WORLD_SIZE`` from the environment (``env://``, what ``torchrun`` sets).
        timeout: collective timeout, a ``timedelta`` or seconds (default
            ``DEFAULT_TIMEOUT``, or ``GPUKERNELS_DIST_TIMEOUT`` seconds).
        world_size, rank: for an ``init_method`` that needs them (``tcp://``, ``file://``).

    On ``cuda`` each process uses GPU ``LOCAL_RANK`` (CuPy's and torch's current device).
    """
    td = _torch_dist()
    if td.is_initialized():
        raise RuntimeError("init_process_group: the default process group is already initialised "
                           "(call destroy_process_group() first)")
    name = default_backend() if backend_name is None else backend_name
    if name not in ("nccl", "gloo"):
        raise ValueError(f"init_process_group: backend must be 'nccl' or 'gloo', got {name!r}")
    if name == "nccl" and backend.get_backend() != "cuda":
        raise ValueError(f"init_process_group: 'nccl' needs the cuda backend, the library runs on "
                         f"{backend.get_backend()!r}; use 'gloo'")
    if timeout is None:
        env = os.environ.get("GPUKERNELS_DIST_TIMEOUT")
        timeout = DEFAULT_TIMEOUT if env is None else float(env)
    if not isinstance(timeout, datetime.timedelta):
        if not timeout > 0:
            raise ValueError(f"init_process_group: timeout must be > 0 seconds, got {timeout!r}")
        timeout = datetime.timedelta(seconds=float(timeout))
    if name == "nccl":
        import torch  # noqa: PLC0415

        local = int(os.environ.get("LOCAL_RANK", "0"))
        backend._cupy().cuda.Device(local).use()
        torch.cuda.set_device(local)
    td.init_process_group(name, init_method=init_method or "env://", timeout=timeout,
                          world_size=world_size, rank=rank)


def destroy_process_group() -> None:
    """Leave the default process group (a no-op when none is initialised)."""
    if is_initialized():
        _torch_dist().destroy_process_group()


def get_rank() -> int:
    """This process's rank in the default group, 0 .. world_size - 1 (PyTorch raises a
    ValueError when no group is initialised, and so do we)."""
    return _torch_dist().get_rank()


def get_world_size() -> int:
    """The number of processes in the default group."""
    return _torch_dist().get_world_size()


def get_backend_name() -> str:
    """The default group's backend: ``"gloo"`` or ``"nccl"``."""
    return str(_torch_dist().get_backend())


def barrier() -> None:
    """Wait until every rank has reached this call."""
    td = _torch_dist()
    if get_backend_name() == "nccl":
        import torch  # noqa: PLC0415

        td.barrier(device_ids=[torch.cuda.current_device()])
    else:
        td.barrier()


# ----------------------------------------------------------------------------- arrays


def _raw(x):
    return x.data if isinstance(x, Node) else x


def as_torch(array):
    """A torch tensor sharing ``array``'s memory (no copy): ``torch.from_numpy`` for a
    NumPy array, DLPack for a CuPy array; bf16 bits (uint16) as ``torch.bfloat16``."""
    import torch  # noqa: PLC0415

    if not array.flags.c_contiguous:
        raise ValueError(f"distributed: collectives need a contiguous array, got shape {tuple(array.shape)} "
                         f"with strides {tuple(array.strides)}")
    is_bf16 = array.dtype == bfloat16
    if isinstance(array, np.ndarray):
        t = torch.from_numpy(array.view(np.int16) if is_bf16 else array)
        return t.view(torch.bfloat16) if is_bf16 else t
    return backend.torch_from_cupy(array, bfloat16=is_bf16)


class _OnCupyStream:
    """Make torch's current stream CuPy's current one (cuda); nothing on the host."""

    _streams: dict = {}

    def __init__(self, array):
        self.ctx = None
        if not isinstance(array, np.ndarray):
            import torch  # noqa: PLC0415

            ptr = backend._cupy().cuda.get_current_stream().ptr
            stream = self._streams.get(ptr)
            if stream is None:
                stream = torch.cuda.default_stream() if ptr == 0 else torch.cuda.ExternalStream(ptr)
                self._streams[ptr] = stream
            self.ctx = torch.cuda.stream(stream)

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


class Work:
    """An asynchronous collective in flight; ``wait()`` returns once its result is in
    the array (on ``cuda``: once CuPy's current stream waits for it). Waiting twice is
    harmless."""

    def __init__(self, work, array, divide_by: int = 1):
        self._work, self.array, self._divide_by = work, array, divide_by

    def is_completed(self) -> bool:
        return self._work is None or self._work.is_completed()

    def wait(self):
        if self._work is not None:
            with _OnCupyStream(self.array):
                self._work.wait()
            self._work = None
            if self._divide_by != 1:  # in place, one pass, after the sum is in
                if self.array.dtype == bfloat16:  # uint16 bits: divide as bf16
                    with _OnCupyStream(self.array):
                        as_torch(self.array).div_(self._divide_by)
                else:
                    self.array /= self._divide_by
                self._divide_by = 1
        return self.array


def _reduce_op(op: str):
    if op not in _OPS:
        raise ValueError(f"all_reduce: op must be one of {_OPS}, got {op!r}")
    td = _torch_dist()
    return getattr(td.ReduceOp, "PRODUCT" if op == "product" else op.upper())


def all_reduce(x, op: str = "sum", async_op: bool = False):
    """Reduce ``x`` (a Tensor or contiguous array) over every rank, in place.

    Args:
        op: ``"sum"``, ``"avg"`` (NCCL averages inside the collective; gloo sums and the
            result is divided by the world size once, in place), ``"max"``, ``"min"``,
            ``"product"``.
        async_op: return a ``Work`` at once instead of waiting.

    Returns:
        The array (``async_op=False``) or a ``Work``.
    """
    array = _raw(x)
    td = _torch_dist()
    divide = 1
    if op == "avg" and get_backend_name() != "nccl":
        op, divide = "sum", get_world_size()
    with _OnCupyStream(array):
        work = td.all_reduce(as_torch(array), op=_reduce_op(op), async_op=True)
    done = Work(work, array, divide)
    return done if async_op else done.wait()


def broadcast(x, src: int = 0, async_op: bool = False):
    """Copy rank ``src``'s ``x`` (a Tensor or contiguous array) into every rank's, in place."""
    array = _raw(x)
    with _OnCupyStream(array):
        work = _torch_dist().broadcast(as_torch(array), src=src, async_op=True)
    done = Work(work, array)
    return done if async_op else done.wait()


def broadcast_arrays(arrays, src: int = 0) -> None:
    """Broadcast many arrays from ``src`` in one collective per (device, dtype): they are
    packed into one buffer, broadcast, and unpacked in place (one copy each way; for a
    model's parameters and buffers, cheaper than a collective per tensor)."""
    groups: dict = {}
    for a in arrays:
        groups.setdefault((backend.device_of(a), a.dtype), []).append(a)
    for (device, dtype), members in groups.items():
        xp = backend.xp_for_device(device)
        flat = xp.concatenate([a.reshape(-1) for a in members]) if members else xp.zeros(0, dtype)
        broadcast(flat, src)
        offset = 0
        for a in members:
            a[...] = flat[offset:offset + a.size].reshape(a.shape)
            offset += a.size
