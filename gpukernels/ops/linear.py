"""linear: y = x W^T + b, its autograd Function and checks.

Kernels: ``gpukernels/{reference,cpu,triton}/linear.py`` (``linear_forward``, ``linear_backward``).
"""

from __future__ import annotations

from .. import kernels
from ..amp import low_precision
from ._common import KernelFunction, same_dtype, tensor_arg


class LinearFunction(KernelFunction):
    def forward(self, x, weight, bias):
        self.save_for_backward(x, weight)
        return kernels.linear.on(x).linear_forward(x, weight, bias)

    def backward(self, g):
        x, weight = self.saved
        return kernels.linear.on(g).linear_backward(g, x, weight, needs=self.needs_input_grad)


def linear(x, weight, bias=None):
    """y = x W^T + b.

    Args:
        x: (..., in_features).
        weight: (out_features, in_features).
        bias: (out_features,) or None.
    """
    tensor_arg(x, "linear: input")
    tensor_arg(weight, "linear: weight", 2)
    if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear: input of shape {x.shape} does not match weight of shape {weight.shape} "
            f"(last input dimension must be {weight.shape[1]})"
        )
    if bias is not None and (tensor_arg(bias, "linear: bias", 1).shape != (weight.shape[0],)):
        raise ValueError(f"linear: bias must have shape ({weight.shape[0]},), got {bias.shape}")
    x, weight, bias = low_precision(x, weight, bias)
    same_dtype("linear", input=x, weight=weight, bias=bias)
    return LinearFunction.apply(x, weight, bias)
