"""Threads for the NumPy reference ops: one pool, one lock, two drivers.

Why threads in a NumPy reference
--------------------------------
The CPU training path runs on this reference, and its big operations are GEMMs
(conv) and passes over whole activations (batch norm, ReLU). NumPy releases the GIL
inside ufunc loops, copies, gufuncs such as vecdot and BLAS calls, so Python threads
working disjoint slices of one array really run on separate cores: this machine moves
~30 GB/s (read + write counted) per core between L3 and a core and ~58 GB/s with both
cores, and OpenBLAS runs two single-threaded GEMMs side by side at twice the rate of
one. Two users split the batch:

* ``run_split``: conv's and linear's driver, one contiguous chunk of the batch (or of a
  GEMM's rows) per thread, conv's worked tile by tile with per-thread buffers and
  accumulators;
* ``run_pieces``: the piece driver of the memory-bound ops (batch norm, activations,
  pools, cross-entropy; below).

BLAS runs on one thread in every call of the numpy backend (``blas_single``): the
parallelism is ours, never BLAS's (why: ``_BlasSingle``).

What a hand-off costs
---------------------
Handing work to the pool thread and waiting for it is two futex wake-ups, ~100 us in
all on the 2-core dev VM (measured for batch norm, whose module docstring has the
memory-traffic figures), about one operation over a 3 MiB array on one core. So small
calls stay on the calling thread (``run_split`` below MIN_PARALLEL_FLOPS, the piece
driver below MIN_PARALLEL_BYTES), and every piece costs a few Python-level GIL
transitions, so pieces are few (PIECES_PER_THREAD per thread).

One lock, one pool
------------------
``lock`` is taken, without blocking, by whichever call goes parallel; a call that
finds it held (another op is running threaded, e.g. a second user thread) runs on its
own calling thread instead, so two ops never put 2 * NUM_THREADS busy threads on the
cores. The pool holds NUM_THREADS - 1 workers (the calling thread is the other one)
and is created on first use, and again in a forked child: the child inherits the pool
object but not its threads, so work submitted there would never run.

NUM_THREADS, MIN_PARALLEL_BYTES, MIN_PARALLEL_FLOPS, PIECES_PER_THREAD, PIECE_BYTES,
``lock`` and ``_pool`` are read as globals of this module at call time by every user:
tests patch them here.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import knobs

#: Worker threads for large calls (the calling thread counts as one).
NUM_THREADS = max(
    1,
    min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)),
)
#: Array bytes times NumPy operations over them (``sweeps``) from which ``run_pieces``
#: splits a call across NUM_THREADS threads. Handing work to the pool's thread and
#: waiting for it costs ~100 us on this VM (two futex wake-ups), about one operation
#: over a 3 MiB array on one core; measured, a second core starts to pay at ~8 MiB of
#: operations (one ReLU over 8 MiB, the two of an affine map over 4 MiB, the four of
#: batch norm's dx over 2 MiB).
MIN_PARALLEL_BYTES = 8 << 20
#: Pieces per thread (see ``run_pieces``), each of at least PIECE_BYTES where the array
#: allows.
PIECES_PER_THREAD = 2
PIECE_BYTES = 1 << 20
#: FLOPs from which ``run_split`` (conv, linear) splits a BLAS-bound call across
#: NUM_THREADS threads; below it the hand-off (~100 us) costs more than it saves.
#: Measured on the digits CNN's conv2 (16->32 4x4, batch 64, 9.4 MFLOP), one thread
#: against two: forward 209 -> 292 us, backward 416 -> 506 us split by images, 416 ->
#: 456-546 us as two tasks (grad_x on one thread, grad_w on the other; each alone 240
#: and 218 us); the whole digits step 1.90 -> 2.20 ms with the threshold at 3e6. A
#: worker polling for work with ``time.sleep(0)`` instead of blocking hands over no
#: faster (round trip 53-71 us against the pool's 12-61): the two threads then trade
#: the GIL instead.
MIN_PARALLEL_FLOPS = 1e8


def policy() -> tuple:
    """``(threads, min_parallel_bytes, piece_bytes, pieces_per_thread)`` for this call:
    the constants above, unless the ``cpu_threads`` knob (``gpukernels.knobs``) asks
    tests to stay on the calling thread (``"serial"``) or to hand every call to two
    threads in pieces as small as the array allows (``"forced"``)."""
    mode = knobs.get("cpu_threads")
    if mode == "serial":
        return NUM_THREADS, float("inf"), PIECE_BYTES, PIECES_PER_THREAD
    if mode == "forced":
        return 2, 0, 1, 3
    return NUM_THREADS, MIN_PARALLEL_BYTES, PIECE_BYTES, PIECES_PER_THREAD


_pool = {"executor": None, "pid": None}
#: Held by the one call running threaded; others run on their calling thread.
lock = threading.Lock()


class _BlasSingle:
    """``with blas_single:`` -- BLAS held to one thread while any such block runs.

    Every BLAS call of the numpy backend runs inside one: its parallelism is our
    threads' (``run_split``, ``run_pieces``), never BLAS's. Why: OpenBLAS's own
    threads spin for ~0.1 s after each call they served, waiting for the next, so on a
    2-core machine a BLAS call on two threads (a batch-norm GEMV, a small conv GEMM)
    leaves a core busy while our two threads work the next op: measured, a ResNet-8
    step's conv backward went from 130 to 80 ms once every BLAS call ran on one thread.

    OpenBLAS's thread count (on pthreads, NumPy's build) is one process-wide setting, so
    the blocks share one depth count: the outermost entry saves the count and sets 1,
    the last exit restores it (user code around the library keeps its BLAS threads), and
    ``held`` says whether the setting took (without threadpoolctl, which is optional, it
    cannot be set: then ``run_split`` stays on the calling thread, since BLAS's threads
    would compete with ours). Through threadpoolctl's methods (BLAS libraries other than
    OpenBLAS on pthreads) only the first thread that set a count can change it, so a
    block on another thread may not take, and a restore that did not take (the last
    block to leave ran on another thread) is retried at the next block's end; OpenBLAS's
    own calls take from any thread.

    Cost: ~1.5 us per outermost block where NumPy's BLAS is OpenBLAS on pthreads (its
    ``openblas_get/set_num_threads`` called through ctypes, ``_raw_openblas``), ~7 us
    through threadpoolctl's controller methods (other BLAS builds). Measured on the
    digits CNN step (7 blocks, interleaved A/B): 1.99 -> 1.90 ms (median of 400 steps)
    with the blocks made free and BLAS left at one thread, and the raw calls take back
    30-40 us of those ~100."""

    def __init__(self):
        self.depth = 0
        self.saved = None  # the counts to restore, once a block changed them
        self.held = False
        self.mutex = threading.Lock()
        self.libs = None  # a _Counts per BLAS library, found on first use

    def _controllers(self):
        """``(get, set)`` thread-count functions per BLAS library NumPy loaded."""
        try:
            import threadpoolctl  # noqa: PLC0415 - optional dependency

            ctl = threadpoolctl.ThreadpoolController()
            libs = [lib for lib in ctl.lib_controllers if lib.user_api == "blas"]
        except Exception:  # noqa: BLE001 - missing or broken: BLAS keeps its threads
            return []
        return [_raw_openblas(lib) or _Counts(lib.get_num_threads, lib.set_num_threads) for lib in libs]

    def __enter__(self):
        with self.mutex:
            if self.libs is None:
                self.libs = self._controllers()
            if self.depth == 0 and self.libs:
                now = [lib.get() for lib in self.libs]
                if self.saved is None:
                    self.saved = now
                held = True
                for lib, n in zip(self.libs, now):
                    if n != 1:
                        lib.set(1)
                        held = held and (lib.sticks or lib.get() == 1)
                self.held = held
            self.depth += 1
        return self

    def __exit__(self, *exc):
        with self.mutex:
            self.depth -= 1
            if self.depth == 0 and self.saved is not None:
                back = True
                for lib, n in zip(self.libs, self.saved):
                    if n != 1:
                        lib.set(n)
                        back = back and (lib.sticks or lib.get() == n)
                if back:
                    self.saved = None  # else retried at the next outermost exit
                self.held = False
        return False


class _Counts:
    """One BLAS library's thread count: ``get()`` and ``set(n)``; ``sticks``: a set
    always takes (OpenBLAS's own call), else it is read back (threadpoolctl's methods
    ignore a thread that is not the first to have set a count)."""

    __slots__ = ("get", "set", "sticks")

    def __init__(self, get, set_, sticks=False):
        self.get, self.set, self.sticks = get, set_, sticks


def _raw_openblas(lib):
    """``_Counts`` calling OpenBLAS's own ``openblas_get/set_num_threads`` through ctypes
    (0.1-0.3 us a call, against 1-3 us through threadpoolctl's methods, which look the
    symbol up and check the calling thread each time), for OpenBLAS built on pthreads,
    whose count is one process-wide setting; None for other libraries (MKL, BLIS,
    OpenBLAS on OpenMP, whose count threadpoolctl reads per thread)."""
    import ctypes  # noqa: PLC0415

    if getattr(lib, "internal_api", None) != "openblas" or getattr(lib, "threading_layer", None) == "openmp":
        return None
    dynlib = getattr(lib, "dynlib", None)
    for prefix in ("", "scipy_"):  # the symbol names OpenBLAS builds export (NumPy's: scipy_..64_)
        for suffix in ("", "64_", "_64"):
            get = getattr(dynlib, f"{prefix}openblas_get_num_threads{suffix}", None)
            set_ = getattr(dynlib, f"{prefix}openblas_set_num_threads{suffix}", None)
            if get is not None and set_ is not None:
                get.restype, get.argtypes = ctypes.c_int, []
                set_.restype, set_.argtypes = None, [ctypes.c_int]
                return _Counts(get, set_, sticks=True)
    return None


#: The one instance: ``with _parallel.blas_single:`` (see ``_BlasSingle``).
blas_single = _BlasSingle()


def executor():
    """The worker pool, created on first use and again in a forked child (a child
    inherits the pool object but not its threads: work submitted there would never run)."""
    if _pool["executor"] is None or _pool.get("pid") != os.getpid():
        workers = max(1, NUM_THREADS - 1)
        _pool["executor"] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gk-conv")
        _pool["pid"] = os.getpid()
    return _pool["executor"]


def split(n, parts):
    """``parts`` contiguous near-equal ranges covering ``range(n)``."""
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts) if bounds[i + 1] > bounds[i]]


def run_split(n, flops, work, nbytes=0):
    """``work(i0, i1)`` over ``range(n)`` (a batch, a GEMM's rows), with BLAS held to one
    thread (``blas_single``): NUM_THREADS contiguous chunks on as many threads for calls
    of at least MIN_PARALLEL_FLOPS, or of at least MIN_PARALLEL_BYTES of arrays read and
    written (``nbytes``: the memory-bound calls, e.g. a strided 1x1 conv), else one call
    on the calling thread (also where BLAS could not be held to one thread, whose own
    threads would then compete with ours, and while another op holds ``lock``). Returns
    the chunks' results in order."""
    mode = knobs.get("cpu_threads")  # tests: "serial" / "forced" (gpukernels.knobs)
    nthreads = min(policy()[0], n)
    min_flops = {"serial": float("inf"), "forced": 0}.get(mode, MIN_PARALLEL_FLOPS)
    big = flops >= min_flops or (mode != "serial" and nbytes >= MIN_PARALLEL_BYTES)
    with blas_single:
        if nthreads > 1 and big and blas_single.held and lock.acquire(blocking=False):
            try:
                chunks = split(n, nthreads)
                futures = [executor().submit(work, a, b) for a, b in chunks[1:]]
                try:
                    first = work(*chunks[0])
                finally:
                    rest = [f.result() for f in futures]
                return [first, *rest]
            finally:
                lock.release()
        return [work(0, n)]


def run_pieces(x3, work, sweeps):
    """``work(n0, n1)`` over the images ``[0, N)`` of ``x3`` (any array whose first axis
    is cut); returns the results in range order. ``sweeps``: how many NumPy operations
    ``work`` runs over its range.

    Calls on NumPy arrays with at least MIN_PARALLEL_BYTES of operations are cut into
    up to NUM_THREADS * PIECES_PER_THREAD ranges of at least PIECE_BYTES, worked on two
    threads: the calling thread takes pieces from the front, the pool threads from the
    back, until they meet. So with two threads each works one contiguous part of the
    batch, the same part in every call (conv splits the batch the same way), while a
    worker descheduled on a shared machine only delays the piece it holds. Other calls
    (smaller, on CuPy, or while another op holds ``lock``) run on the calling thread,
    in pieces of ~PIECE_BYTES when ``work`` runs several operations (the later ones then
    find their piece in L2: 5-15% faster for 2-4 MiB arrays)."""
    n = x3.shape[0]
    threads, min_bytes, piece_bytes, per_thread = policy()
    size = max(1, min(n, x3.nbytes // piece_bytes))  # pieces of at least PIECE_BYTES
    threads = max(1, threads)
    if (isinstance(x3, np.ndarray) and threads > 1 and size > 1
            and x3.nbytes * sweeps >= min_bytes and lock.acquire(blocking=False)):
        pieces = split(n, min(size, threads * per_thread))
    else:  # pieces only help where a later operation finds its piece in L2
        pieces = split(n, size) if isinstance(x3, np.ndarray) and sweeps > 1 else [(0, n)]
        return [work(a, b) for a, b in pieces]
    results = [None] * len(pieces)
    ends = [0, len(pieces)]  # next piece from the front, one past the next from the back
    ends_lock = threading.Lock()

    def drain(front):
        while True:
            with ends_lock:
                if ends[0] >= ends[1]:
                    return
                if front:
                    i = ends[0]
                    ends[0] += 1
                else:
                    ends[1] -= 1
                    i = ends[1]
            results[i] = work(*pieces[i])

    try:
        futures = [executor().submit(drain, False) for _ in range(threads - 1)]
        try:
            drain(True)
        finally:
            for f in futures:  # one not started yet has nothing left to take
                if not f.cancel():
                    f.result()
    finally:
        lock.release()
    return results
