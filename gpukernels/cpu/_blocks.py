"""Elementwise passes over flat buffers in L2-sized blocks, on both cores: the driver of
the ``numpy`` backend's optimizer updates (``cpu.optim``).

Why blocks
----------
An update is a dozen NumPy operations (NumPy has no fused multiply-add and no way to
fuse ufuncs). Over whole arrays each operation would stream its operands from L3 or
memory again: Adam over n float32 parameters would move ~150 bytes per element instead
of the 28 it must (read p, g, m, v; write p, m, v). Worked block by block, the first
operation of a block brings its operands into L2 (2 MiB per core here) and the later
ones find them there, so memory sees the 28 bytes and the other operations cost L2 time.

Why blocks of BLOCK_BYTES
-------------------------
Every NumPy call costs ~1-2 us of Python with the GIL held, and NumPy releases the GIL
only inside the loop; with two threads each call's return waits for the other thread to
drop the GIL (a futex wake-up, more on a shared VM). So blocks must be long enough that
a call's loop dwarfs that (measured for Adam over 4M float32: 16K-element blocks ran
no faster on two threads than on one; 128K-element blocks, 512 KiB per array, 1.7x),
and short enough that a block's 4-6 arrays stay in L2.
"""

from __future__ import annotations

import functools

import numpy as np

from . import _parallel

#: Bytes of one array's block (128K float32 elements: p, g, m, v and two scratch
#: blocks are 3 MiB, mostly in L2; smaller blocks lose the second core to the GIL).
BLOCK_BYTES = 512 << 10


def flat_spans(size, segments):
    """``[(start, stop)]`` element ranges of the flattened buffers an update touches:
    everything (``segments`` None) or the non-empty ``segments``, each checked to lie in
    ``[0, size]`` (the reference's ValueError otherwise, raised before any update)."""
    if segments is None:
        return [(0, size)] if size else []
    spans = []
    for start, stop in segments:
        if not 0 <= start <= stop <= size:
            raise ValueError(f"segments: ({start}, {stop}) is not a range inside the {size} elements")
        if stop > start:
            spans.append((int(start), int(stop)))
    return spans


def run_blocks(arrays, spans, kernel, scratch, sweeps):
    """``kernel(views, tmp)`` over every block of ``spans``: ``views`` maps each name of
    ``arrays`` (flat 1-D NumPy arrays of one dtype, or None) to its ``[a:b]`` slice,
    ``tmp`` is a list of ``scratch`` per-thread scratch arrays of the block's length.
    ``sweeps``: NumPy operations per block, for ``_parallel.run_pieces``'s threshold.
    Blocks are disjoint, so threads working different blocks never share an element."""
    first = next(a for a in arrays.values() if a is not None)
    dtype = first.dtype
    block = max(1, BLOCK_BYTES // dtype.itemsize)
    cuts = []
    for start, stop in spans:
        cuts.extend((a, min(a + block, stop)) for a in range(start, stop, block))
    if not cuts:
        return

    def work(i0, i1):
        longest = max(b - a for a, b in cuts[i0:i1])
        tmp_full = [np.empty(longest, dtype) for _ in range(scratch)]
        for a, b in cuts[i0:i1]:
            views = {name: None if arr is None else arr[a:b] for name, arr in arrays.items()}
            kernel(views, [t[:b - a] for t in tmp_full])

    # run_pieces cuts its first axis: one row per block, as many bytes in all as the
    # blocks hold (a broadcast view: nothing is allocated)
    total = sum(b - a for a, b in cuts)
    rows = np.broadcast_to(np.empty((), dtype), (len(cuts), max(1, total // len(cuts))))
    _parallel.run_pieces(rows, work, sweeps)


def filled(value, like, block_bytes):
    """A read-only block of ``value`` in ``like``'s dtype, as long as ``like`` up to
    ``block_bytes``: NumPy's maximum, minimum, fmax and fmin run their SIMD loops only
    between two arrays (with a scalar operand: 2-4x slower), so the activations and the
    conv epilogue's ReLU take their constants as blocks. Cached: a fresh 256 KiB block
    costs its page faults and fill, ~10% of a 4 MiB ReLU."""
    return constant(value, like.dtype, max(1, min(like.size, block_bytes // like.itemsize)))


def constant(value, dtype, n):
    """A cached read-only (n,) array of ``value`` in ``dtype``."""
    dtype = np.dtype(dtype)
    return _constant(dtype.type(value).tobytes(), dtype, n)  # bytes: -0.0 is not 0.0


@functools.lru_cache(maxsize=64)
def _constant(value, dtype, n):
    block = np.full(n, np.frombuffer(value, dtype=dtype)[0], dtype=dtype)
    block.flags.writeable = False
    return block
