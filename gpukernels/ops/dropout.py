"""dropout, its autograd Function and checks (the mask comes from ``gk.manual_seed``'s generator).

Kernels: ``gpukernels/{reference,cpu,triton}/dropout.py``.
"""

from __future__ import annotations

import numbers

from .. import kernels
from ._common import KernelFunction, tensor_arg


class DropoutFunction(KernelFunction):
    def forward(self, x, p):
        y, mask = kernels.dropout.on(x).dropout_forward(x, p)
        self.save_for_backward(mask)
        return y

    def backward(self, g):
        return kernels.dropout.on(g).dropout_backward(g, self.saved[0]), None


def dropout(x, p=0.5, training=True):
    """Zero each element with probability p and scale the rest by 1/(1-p) (training only).

    The mask comes from the library generator (``gk.manual_seed``).
    """
    tensor_arg(x, "dropout: input")
    if not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, got {p!r}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    return DropoutFunction.apply(x, float(p))
