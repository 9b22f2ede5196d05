"""Reference linear layer y = x W^T + b, forward and backward (NumPy or CuPy arrays).

x is (..., in_features), W is (out_features, in_features). The backward flattens the
leading dimensions so each gradient is one GEMM: dx = g W, dW = g^T x, db = sum(g).
"""

from __future__ import annotations

import math


def linear_forward(x, weight, bias):
    y = x @ weight.T
    if bias is not None:
        y += bias
    return y


def linear_backward(grad_y, x, weight, needs=(True, True, True)):
    """Returns (dx, dW, db); an entry is None where ``needs`` says it is not wanted."""
    rows = math.prod(grad_y.shape[:-1])  # not reshape(-1, F): ambiguous when F == 0
    g2 = grad_y.reshape(rows, grad_y.shape[-1])
    gx = (grad_y @ weight) if needs[0] else None
    gw = (g2.T @ x.reshape(rows, x.shape[-1])) if needs[1] else None
    gb = g2.sum(axis=0) if needs[2] else None
    return gx, gw, gb
