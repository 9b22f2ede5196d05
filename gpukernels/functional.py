"""User-facing neural-network ops (``gk.functional``, PyTorch's ``F``).

Each op family lives in one file of ``gpukernels/ops/``: its autograd ``Function``
(forward and backward call the backend's kernels through ``gpukernels.kernels``), the
argument checks (once, here at the public surface, with errors that name the argument
and what was received) and the public function re-exported below.
"""

from __future__ import annotations

from .ops.activation import add_relu, heaviside, leaky_relu, relu, sigmoid, tanh
from .ops.batchnorm import batch_norm
from .ops.conv import conv2d
from .ops.cross_entropy import cross_entropy, log_softmax, softmax
from .ops.dropout import dropout
from .ops.linear import linear
from .ops.loss import mse_loss
from .ops.pool import avg_pool2d, max_pool2d
from .tensor import Tensor

__all__ = [
    "conv2d", "linear", "relu", "add_relu", "leaky_relu", "sigmoid", "tanh", "heaviside",
    "max_pool2d", "avg_pool2d", "batch_norm", "softmax", "log_softmax", "cross_entropy",
    "mse_loss", "flatten", "dropout",
]


def flatten(x, start_dim=0, end_dim=-1):
    """Merge dimensions start_dim..end_dim into one (``torch.flatten``)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"input must be a Tensor, got {type(x).__name__}")
    return x.flatten(start_dim, end_dim)
