"""``gpukernels.cpu._parallel``: BLAS held to one thread inside the numpy backend's
calls and given back after them, and the flop-split driver's chunks."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from gpukernels.cpu import _parallel
from gpukernels.cpu import linear as cpu_linear

threadpoolctl = pytest.importorskip("threadpoolctl")


def _blas_threads():
    info = [lib for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
    if not info:
        pytest.skip("threadpoolctl sees no BLAS")
    return info[0]["num_threads"]


def test_blas_single_nests_and_restores():
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        before = _blas_threads()
        with _parallel.blas_single:
            assert _blas_threads() == 1 and _parallel.blas_single.held
            with _parallel.blas_single:
                assert _blas_threads() == 1
            assert _blas_threads() == 1, "an inner exit gave BLAS its threads back"
        assert _blas_threads() == before and not _parallel.blas_single.held


def test_blas_single_shared_by_threads_restores_after_the_last():
    """Overlapping blocks on two threads: BLAS stays at one thread until both left, and
    the count is back once a block ends on this thread: at the other thread's exit
    already through OpenBLAS's own calls; through threadpoolctl's methods, which only
    let the first thread that set a count change it, at this thread's next block."""
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        before = _blas_threads()
        inside, leave, seen = threading.Event(), threading.Event(), []

        def other():
            with _parallel.blas_single:
                inside.set()
                leave.wait(5)
                seen.append(_blas_threads())

        t = threading.Thread(target=other)
        with _parallel.blas_single:
            t.start()
            inside.wait(5)
        leave.set()  # this thread left first: the other still runs with one
        t.join()
        assert seen == [1]
        with _parallel.blas_single:
            pass
        assert _blas_threads() == before
        assert _parallel.blas_single.saved is None


def test_a_linear_call_leaves_blas_threads_as_they_were(knob):
    knob(cpu_threads="forced")
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        before = _blas_threads()
        x = np.ones((8, 4), np.float32)
        cpu_linear.linear_forward(x, np.ones((3, 4), np.float32), None)
        assert _blas_threads() == before


def test_run_split_chunks_cover_the_range_in_order(knob):
    knob(cpu_threads="forced")
    got = _parallel.run_split(9, 0, lambda a, b: (a, b, threading.get_ident()))
    assert [(a, b) for a, b, _ in got] == _parallel.split(9, min(_parallel.policy()[0], 9))
    assert not _parallel.lock.locked()
    knob(cpu_threads="serial")
    assert [r[:2] for r in _parallel.run_split(9, 1e30, lambda a, b: (a, b))] == [(0, 9)]


def test_run_split_goes_parallel_on_flops_or_on_bytes(knob, monkeypatch):
    """Memory-bound calls (a strided 1x1 conv: few FLOPs, many bytes) split too."""
    monkeypatch.setattr(_parallel, "NUM_THREADS", 2)
    knob(cpu_threads=None)
    parts = lambda **kw: len(_parallel.run_split(8, kw.pop("flops", 0), lambda a, b: (a, b), **kw))  # noqa: E731
    assert parts() == 1
    assert parts(nbytes=_parallel.MIN_PARALLEL_BYTES - 1) == 1
    assert parts(nbytes=_parallel.MIN_PARALLEL_BYTES) == 2
    assert parts(flops=_parallel.MIN_PARALLEL_FLOPS) == 2
    knob(cpu_threads="serial")
    assert parts(nbytes=1 << 40, flops=1e30) == 1
