"""Activations: relu, add_relu (fused residual add + ReLU), leaky_relu, sigmoid, tanh,
heaviside; their autograd Functions and checks.

Kernels: ``gpukernels/{reference,cpu,triton}/activation.py`` (``<op>_forward``,
``<op>_backward``; every backward reads only the saved output).
"""

from __future__ import annotations

from .. import kernels
from ..tensor import Tensor
from ..tensor_ops import ReLUFunction  # Tensor.relu is the same op, so it sits with the Tensor's
from ._common import KernelFunction, check_slope, same_dtype, tensor_arg


class LeakyReLUFunction(KernelFunction):
    """y = x for x > 0, slope * x otherwise; the backward reads the saved output (its
    sign is the input's for slope >= 0)."""

    def forward(self, x, slope):
        self.slope = slope
        y = kernels.activation.on(x).leaky_relu_forward(x, slope)
        self.save_for_backward(y)
        return y

    def backward(self, g):
        (y,) = self.saved
        return kernels.activation.on(g).leaky_relu_backward(g, y, self.slope), None


class SigmoidFunction(KernelFunction):
    """dL/dx = dL/dy * y (1 - y), from the saved output."""

    def forward(self, x):
        y = kernels.activation.on(x).sigmoid_forward(x)
        self.save_for_backward(y)
        return y

    def backward(self, g):
        (y,) = self.saved
        return (kernels.activation.on(g).sigmoid_backward(g, y),)


class TanhFunction(KernelFunction):
    """dL/dx = dL/dy * (1 - y^2), from the saved output."""

    def forward(self, x):
        y = kernels.activation.on(x).tanh_forward(x)
        self.save_for_backward(y)
        return y

    def backward(self, g):
        (y,) = self.saved
        return (kernels.activation.on(g).tanh_backward(g, y),)


def relu(x):
    """y = max(x, 0)."""
    return ReLUFunction.apply(tensor_arg(x, "relu: input"))


class AddReLUFunction(KernelFunction):
    """relu(a + b) in one kernel pass; both inputs get dL/dy * [y > 0]."""

    def forward(self, a, b):
        y = kernels.activation.on(a).add_relu_forward(a, b)
        self.save_for_backward(y)
        return y

    def backward(self, g):
        (y,) = self.saved
        if not any(self.needs_input_grad[:2]):
            return None, None
        dz = kernels.activation.on(g).relu_backward(g, y)
        return (dz if self.needs_input_grad[0] else None), (dz if self.needs_input_grad[1] else None)


def add_relu(a, b):
    """y = max(a + b, 0), fused: a residual block's ``relu(body(x) + shortcut(x))``.

    One pass reads a and b and writes y (3 x itemsize per element) where ``relu(a + b)``
    costs an add pass then a ReLU pass (5 x itemsize). dL/da = dL/db = dL/dy * [y > 0].
    No broadcasting: PyTorch has no such op; this equals ``torch.relu(a + b)`` for
    tensors of one shape.

    Args:
        a, b: floating-point tensors of the same shape, dtype and device.
    """
    tensor_arg(a, "add_relu: a")
    tensor_arg(b, "add_relu: b")
    if a.shape != b.shape:
        raise ValueError(f"add_relu: a shape {a.shape} differs from b shape {b.shape}")
    same_dtype("add_relu", a=a, b=b)
    if a.device != b.device:
        raise RuntimeError(f"add_relu: a is on {a.device}, b on {b.device}")
    return AddReLUFunction.apply(a, b)


def leaky_relu(x, negative_slope=0.01):
    """y = x for x > 0, negative_slope * x otherwise (negative_slope >= 0)."""
    return LeakyReLUFunction.apply(tensor_arg(x, "leaky_relu: input"), check_slope(negative_slope))


def sigmoid(x):
    """y = 1 / (1 + exp(-x))."""
    return SigmoidFunction.apply(tensor_arg(x, "sigmoid: input"))


def tanh(x):
    """y = tanh(x)."""
    return TanhFunction.apply(tensor_arg(x, "tanh: input"))


class HeavisideFunction(KernelFunction):
    def forward(self, x, values):
        return kernels.activation.on(x).heaviside_forward(x, values)

    def backward(self, g):
        raise RuntimeError(
            "heaviside is not differentiable (its derivative is 0 almost everywhere and "
            "undefined at 0); train step-function models with the perceptron rule instead"
        )


def heaviside(x, values=0.0):
    """Step function: 0 for x < 0, ``values`` at 0, 1 for x > 0 (``torch.heaviside``).

    Forward only: backward through it raises an error.
    """
    tensor_arg(x, "heaviside: input")
    if isinstance(values, Tensor):
        values = values.data
    return HeavisideFunction.apply(x, values)
