"""``gk.nn.parallel.DistributedDataParallel``: data-parallel training over ``gk.distributed``.

Every rank holds the whole model and runs it on its shard of the batch; backward
averages the gradients over the ranks, so each rank's optimizer takes the same step and
the replicas stay equal (they start equal: rank 0's parameters and buffers are
broadcast at construction).

How the gradients travel (per backward, per rank):

- **Buckets of the flat gradient buffer.** The fused optimizers already keep every
  gradient of a param group in one contiguous buffer (``gpukernels.optim.flat``:
  autograd writes each parameter's gradient into its slice). A bucket is a contiguous
  range of that buffer (about ``bucket_cap_mb``; the first, ready earliest, 1 MB so
  communication starts early), all-reduced in place: no gradient is copied into or out
  of a bucket. Parameters that no optimizer holds yet get a gradient buffer of the same
  layout from us.
- **Overlap.** Buckets are filled in reverse order of registration (the order in which
  backward finishes gradients). Each parameter's post-accumulate hook counts down its
  bucket; when a bucket's last gradient is final, its all-reduce starts asynchronously
  (gloo works on a thread of its own, NCCL on its stream) while backward computes the
  earlier layers. Buckets start in index order on every rank (collectives must be
  issued in one order everywhere). At the end of backward the pending ones are waited
  for, so ``loss.backward()`` returns with averaged gradients.
- **Averaging, once.** NCCL averages inside the all-reduce (``ReduceOp.AVG``); gloo
  sums and the bucket is divided by the world size in place when it arrives.
- Bytes per step: ``2 (n-1)/n`` x the gradient bytes sent and received per rank (ring
  all-reduce), plus nothing else (``docs/scaling.md`` turns that into time).

``no_sync()`` skips the communication for backward passes of forwards run inside it
(gradient accumulation); the first backward outside reduces the accumulated sum.
``broadcast_buffers`` (PyTorch's default) copies rank 0's buffers (batch norm running
statistics) to every rank at each forward; with ``SyncBatchNorm`` they are equal anyway.
"""

from __future__ import annotations

import contextlib
import time
import weakref

import numpy as np

from .. import autograd, backend, distributed
from ..autograd import is_grad_enabled
from ..optim.flat import ALIGN_BYTES
from ..tensor import Tensor
from .module import Module

#: Size cap of the first bucket (PyTorch's ``_DEFAULT_FIRST_BUCKET_BYTES``): the last
#: layers' gradients are final first, and a small first bucket starts communication early.
FIRST_BUCKET_BYTES = 1024 * 1024


class _GradBuffer:
    """A contiguous gradient buffer for parameters no optimizer holds in a flat buffer:
    the layout of ``FlatParams`` (aligned slots), gradient only."""

    def __init__(self, params):
        self.params = list(params)
        dtype, device = self.params[0].data.dtype, self.params[0].device
        align = max(1, ALIGN_BYTES // dtype.itemsize)
        self.offsets, n = [], 0
        for p in self.params:
            self.offsets.append(n)
            n += -(-p.data.size // align) * align
        self.numel = n
        self.grad = backend.xp_for_device(device).zeros(n, dtype=dtype)
        self.grad_views = [self.grad[o:o + p.data.size].reshape(p.shape) for p, o in zip(self.params, self.offsets)]
        for p, view in zip(self.params, self.grad_views):
            if p.grad is not None:
                view[...] = p.grad.data
                p.grad = Tensor(view)
            p._grad_view = view


def _slot(p):
    """``(buffer, start, stop, view)`` of ``p``'s gradient slot in an optimizer's flat
    buffer (``stop`` runs to the next slot: padding included), or None."""
    ref = getattr(p, "_flat", None)
    flat = ref() if ref is not None else None
    view = getattr(p, "_grad_view", None)
    if flat is None or view is None or not flat.valid():
        return None
    i = next((k for k, q in enumerate(flat.params) if q is p), None)
    if i is None or flat.grad_views[i] is not view or tuple(view.shape) != p.shape:
        return None
    stop = flat.offsets[i + 1] if i + 1 < len(flat.params) else flat.numel
    return flat.grad, flat.offsets[i], stop, view


class _Bucket:
    __slots__ = ("buffer", "start", "stop", "members", "pending", "work", "array")

    def __init__(self, buffer, start, stop, members):
        self.buffer, self.start, self.stop, self.members = buffer, start, stop, members
        self.array = buffer[start:stop]
        self.pending, self.work = len(members), None

    @property
    def nbytes(self) -> int:
        return self.array.nbytes


class DistributedDataParallel(Module):
    """Wrap ``module`` so that backward averages its gradients over every rank.

    Args:
        module: the model (each rank builds the same one; rank 0's values win).
        device_ids, output_device: accepted for PyTorch compatibility; the device is the
            process's (``LOCAL_RANK`` on cuda, set by ``init_process_group``).
        broadcast_buffers: copy rank 0's buffers to every rank at each forward.
        bucket_cap_mb: bucket size in MiB (the first bucket is at most 1 MiB).
        find_unused_parameters: allow parameters that get no gradient in a backward
            (one extra small all-reduce per backward finds which are unused on every
            rank: those keep ``grad = None``). Without it such a backward is an error.

    Attributes:
        module: the wrapped model: save ``ddp.module.state_dict()`` for keys without
            the ``module.`` prefix.
        buckets: ``(bytes, parameter names)`` of each bucket, in the order reduced.
        comm_stats: of the last synchronised backward: ``buckets``, ``bytes``,
            ``wait_s`` (time backward spent waiting for communication at its end: the
            part that did not overlap), ``backward_end_s`` (wall time of that wait
            plus the launches still left then).
    """

    def __init__(self, module: Module, device_ids=None, output_device=None, broadcast_buffers: bool = True,
                 bucket_cap_mb: float = 25, find_unused_parameters: bool = False):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel: module must be a gk.nn.Module, got {type(module).__name__}")
        if not distributed.is_initialized():
            raise RuntimeError("DistributedDataParallel: the default process group is not initialised; "
                               "call gk.distributed.init_process_group() first (under torchrun)")
        if not bucket_cap_mb > 0:
            raise ValueError(f"DistributedDataParallel: bucket_cap_mb must be > 0, got {bucket_cap_mb!r}")
        self.module = module
        self.broadcast_buffers = broadcast_buffers
        self.bucket_bytes = int(bucket_cap_mb * 1024 * 1024)
        self.find_unused_parameters = find_unused_parameters
        self.require_backward_grad_sync = True
        self.world_size = distributed.get_world_size()
        self.comm_stats: dict = {}
        self.buckets: list = []
        self._key = None
        self._buckets: list[_Bucket] = []
        self._where: dict = {}  # id(param) -> bucket index
        self._names = {id(p): n for n, p in module.named_parameters()}
        self._own: list = []  # our _GradBuffers (for parameters no optimizer holds)
        self._armed = False
        self._next = 0
        self._ready_seen: set = set()
        self._end_queued = False
        params = list({id(p): p for p in module.parameters()}.values())
        with autograd.no_grad():
            distributed.broadcast_arrays([p.data for p in params] + [b.data for b in module.buffers()], src=0)
        me = weakref.ref(self)
        self._hooks = [p.register_post_accumulate_grad_hook(lambda p, me=me: _on_grad(me, p))
                       for p in params if p.requires_grad]

    # -- forward -------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        if self.broadcast_buffers and self.world_size > 1:
            buffers = [b.data for b in self.module.buffers()]
            if buffers:
                distributed.broadcast_arrays(buffers, src=0)
        if is_grad_enabled() and self.require_backward_grad_sync:
            self._arm()
        else:
            self._armed = False
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        """Forwards run inside skip the gradient all-reduce in their backward (gradients
        accumulate locally); the next synchronised backward reduces the sum."""
        old = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = old

    # -- buckets -------------------------------------------------------------------------
    def _params(self) -> list:
        return [p for p in {id(p): p for p in self.module.parameters()}.values() if p.requires_grad]

    def _arm(self) -> None:
        """Before a backward that synchronises: (re)build the buckets when the gradient
        storage moved (an optimizer made its flat buffers, a buffer was rebuilt), and
        reset the countdowns."""
        self._finish_abandoned()
        params = self._params()
        if _storage_key(params) != self._key:
            self._build(params)
            self._key = _storage_key(params)  # after _build: it may hand out our own buffer's slices
        for b in self._buckets:
            b.pending, b.work = len(b.members), None
        self._next, self._ready_seen, self._end_queued = 0, set(), False
        self._armed = True

    def _build(self, params) -> None:
        slots, orphans = {}, []
        for p in params:
            s = _slot(p)
            if s is None:
                orphans.append(p)
            else:
                slots[id(p)] = s
        self._own = []
        groups: dict = {}
        for p in orphans:
            groups.setdefault((p.device, p.data.dtype), []).append(p)
        for members in groups.values():
            own = _GradBuffer(members)
            self._own.append(own)
            for i, p in enumerate(own.params):
                stop = own.offsets[i + 1] if i + 1 < len(own.params) else own.numel
                slots[id(p)] = (own.grad, own.offsets[i], stop, own.grad_views[i])
        buckets: list[_Bucket] = []
        cur = None  # [buffer, start, stop, members]
        for p in reversed(params):  # backward finishes the last-registered first
            buf, start, stop, _ = slots[id(p)]
            cap = min(FIRST_BUCKET_BYTES, self.bucket_bytes) if not buckets else self.bucket_bytes
            # join the open bucket when adjacent in the same buffer and under its cap (a
            # bucket passes the cap by at most one parameter, as PyTorch's)
            if cur is not None and cur[0] is buf and stop == cur[1] and (cur[2] - cur[1]) * buf.itemsize < cap:
                cur[1] = start
                cur[3].append(p)
                continue
            if cur is not None:
                buckets.append(_Bucket(*cur))
            cur = [buf, start, stop, [p]]
        if cur is not None:
            buckets.append(_Bucket(*cur))
        self._buckets = buckets
        self._slots = slots
        self._where = {id(p): k for k, b in enumerate(buckets) for p in b.members}
        self.buckets = [(b.nbytes, [self._names.get(id(p), "?") for p in b.members]) for b in buckets]

    # -- backward ------------------------------------------------------------------------
    def _ready(self, p) -> None:
        if not self._armed or id(p) not in self._where or id(p) in self._ready_seen:
            return
        self._ready_seen.add(id(p))
        view = self._slots[id(p)][3]
        if p.grad is not None and p.grad.data is not view:  # a gradient outside the buffer
            view[...] = p.grad.data
            p.grad = Tensor(view)
        if not self._end_queued:
            autograd.queue_callback(self._finish)
            self._end_queued = True
            self._t_start = time.perf_counter()
        bucket = self._buckets[self._where[id(p)]]
        bucket.pending -= 1
        if bucket.pending == 0:
            self._launch_ready()

    def _launch_ready(self) -> None:
        while self._next < len(self._buckets) and self._buckets[self._next].pending == 0:
            b = self._buckets[self._next]
            b.work = distributed.all_reduce(b.array, op="avg", async_op=True)
            self._next += 1

    def _finish(self) -> None:
        """End of backward: start what is left, wait for every bucket (the exposed
        communication), and leave every gradient averaged."""
        t0 = time.perf_counter()
        missing = [p for b in self._buckets for p in b.members if id(p) not in self._ready_seen]
        if missing and not self.find_unused_parameters:
            self._launch_ready()
            self._wait()
            self._armed = False
            names = ", ".join(self._names.get(id(p), "?") for p in missing[:8])
            raise RuntimeError(
                f"DistributedDataParallel: {len(missing)} parameter(s) got no gradient in this backward "
                f"({names}{', ...' if len(missing) > 8 else ''}); every rank must reduce the same buckets: "
                "pass find_unused_parameters=True, or set requires_grad=False on parameters you do not train")
        used = None
        if self.find_unused_parameters:
            every = [p for b in self._buckets for p in b.members]
            for p in missing:
                if p.grad is None:  # a stale slot must not enter the average
                    self._slots[id(p)][3].fill(0)
                self._buckets[self._where[id(p)]].pending -= 1
            self._launch_ready()
            flags = np.array([id(p) in self._ready_seen for p in every], dtype=np.float32)
            flags = backend.to_device(flags, every[0].device)  # NCCL reduces device memory only
            distributed.all_reduce(flags)
            used = {id(p) for p, f in zip(every, backend.to_numpy(flags)) if f > 0}
        self._launch_ready()
        t1 = time.perf_counter()
        self._wait()
        t2 = time.perf_counter()
        for p in missing:  # used on another rank: its averaged gradient is now in the slot
            if used is not None and id(p) in used and p.grad is None:
                p.grad = Tensor(self._slots[id(p)][3])
        self._armed = False
        self.comm_stats = {"buckets": len(self._buckets), "bytes": sum(b.nbytes for b in self._buckets),
                           "wait_s": t2 - t1, "backward_end_s": t2 - t0}

    def _wait(self) -> None:
        for b in self._buckets:
            if b.work is not None:
                b.work.wait()
                b.work = None

    def _finish_abandoned(self) -> None:
        """A backward that raised left buckets in flight: let them land before reuse."""
        if self._armed:
            self._wait()

    def extra_repr(self) -> str:
        return f"world_size={self.world_size}, buckets={len(self._buckets) or 'not built'}"


def _storage_key(params) -> tuple:
    """What the buckets depend on: each parameter, its gradient slice and its data."""
    return tuple((id(p), id(getattr(p, "_grad_view", None)), id(p.data)) for p in params)


def _on_grad(me, p) -> None:
    ddp = me()
    if ddp is not None:
        ddp._ready(p)
