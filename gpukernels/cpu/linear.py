"""The ``numpy`` backend's linear layer y = x W^T + b: one BLAS GEMM per product, split
across our threads.

Each product is one GEMM, as in the reference; what differs is who runs it. BLAS is held
to one thread (``_parallel.blas_single``: OpenBLAS's threads, left spinning after a call,
would take a core from the next op's threads), and a product of at least
``_parallel.MIN_PARALLEL_FLOPS`` is cut into NUM_THREADS row blocks of its output, one
GEMM per block on its own thread (``_parallel.run_split``; NumPy releases the GIL in
the GEMM), each writing its block of the output in place (``out=``):

* y (M, O) = x (M, I) @ W^T and dx (M, I) = g (M, O) @ W: blocks of the M rows;
* dW (O, I) = g^T @ x: blocks of its O rows (g's columns, a transposed view BLAS reads
  as is), or of its I columns when O is too short to split (classifier heads).

The bias is added per block while the block is in cache. FLOPs: 2 M I O per product;
bytes: the operands once each (a 1024^3 float32 GEMM is 12 MiB against 2.1 GFLOP:
compute-bound, measured against the GEMM ceiling).
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module
from ..reference import linear as reference_linear
from . import _parallel

__all__ = ["linear_forward", "linear_backward"]


def _gemm(a, b, out, rows, bias=None):
    """out = a @ b (+ bias), cut into row blocks (``rows``: True) or column blocks of
    ``out`` across ``_parallel.run_split``'s threads; returns ``out``."""
    flops = 2.0 * a.shape[0] * a.shape[1] * b.shape[1]
    n = out.shape[0] if rows else out.shape[1]

    def work(i0, i1):
        if rows:
            np.matmul(a[i0:i1], b, out=out[i0:i1])
            if bias is not None:  # while the block is in cache
                out[i0:i1] += bias
        elif (i0, i1) == (0, n):
            np.matmul(a, b, out=out)
        else:  # a column block of out is strided: BLAS writes a fresh block, copied
            out[:, i0:i1] = a @ b[:, i0:i1]

    _parallel.run_split(n, flops, work)
    return out


def linear_forward(x, weight, bias):
    """y = x W^T + b.

    Args:
        x: (..., I) array (numpy or cupy).
        weight: (O, I), same dtype.
        bias: (O,) or None.

    Returns:
        y (..., O).
    """
    if get_array_module(x, weight) is not np:  # CuPy: the reference's one GEMM
        return reference_linear.linear_forward(x, weight, bias)
    lead = x.shape[:-1]
    rows = math.prod(lead)
    y2 = np.empty((rows, weight.shape[0]), dtype=np.result_type(x, weight))
    _gemm(x.reshape(rows, x.shape[-1]), weight.T, y2, rows=True, bias=bias)
    return y2.reshape(*lead, weight.shape[0])


def linear_backward(grad_y, x, weight, needs=(True, True, True)):
    """Gradients of ``linear_forward``: dx = g W, dW = g^T x, db = sum of g's rows (g:
    ``grad_y`` with its leading dimensions flattened).

    Returns:
        ``(dx, dW, db)``; an entry is None where ``needs`` says it is not wanted.
    """
    if get_array_module(grad_y, x, weight) is not np:
        return reference_linear.linear_backward(grad_y, x, weight, needs)
    rows = math.prod(grad_y.shape[:-1])  # not reshape(-1, F): ambiguous when F == 0
    g2 = grad_y.reshape(rows, grad_y.shape[-1])
    x2 = x.reshape(rows, x.shape[-1])
    dtype = np.result_type(grad_y, x, weight)
    gx = gw = gb = None
    if needs[0]:
        gx2 = _gemm(g2, weight, np.empty((rows, weight.shape[1]), dtype=dtype), rows=True)
        gx = gx2.reshape(*grad_y.shape[:-1], weight.shape[1])
    if needs[1]:
        o, i = weight.shape
        gw = _gemm(g2.T, x2, np.empty((o, i), dtype=dtype), rows=o >= i or o >= 64)
    if needs[2]:
        gb = g2.sum(axis=0)
    return gx, gw, gb
