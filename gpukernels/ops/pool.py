"""max_pool2d and avg_pool2d, their autograd Functions and checks.

Kernels: ``gpukernels/{reference,cpu,triton}/pool.py``.
"""

from __future__ import annotations

from .. import kernels
from ..shapes import check_pair
from ._common import KernelFunction, tensor_arg


class MaxPool2dFunction(KernelFunction):
    def forward(self, x, kernel, stride, padding, dilation):
        self.args = (kernel, stride, padding, dilation)
        y, argmax = kernels.pool.on(x).max_pool2d_forward(x, *self.args)
        self.save_for_backward(argmax, x.shape)
        return y

    def backward(self, g):
        argmax, shape = self.saved
        return (kernels.pool.on(g).max_pool2d_backward(g, argmax, shape, *self.args),)


class AvgPool2dFunction(KernelFunction):
    def forward(self, x, kernel, stride, padding, count_include_pad):
        self.args = (kernel, stride, padding, count_include_pad)
        self.shape = x.shape
        return kernels.pool.on(x).avg_pool2d_forward(x, *self.args)

    def backward(self, g):
        return (kernels.pool.on(g).avg_pool2d_backward(g, self.shape, *self.args),)


def _pool_args(op, x, kernel_size, stride, padding, dilation=1):
    tensor_arg(x, f"{op}: input", 4)
    kernel = check_pair(kernel_size, "kernel_size", 1)
    stride = kernel if stride is None else check_pair(stride, "stride", 1)
    padding = check_pair(padding, "padding", 0)
    dilation = check_pair(dilation, "dilation", 1)
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"padding {padding} must be at most half of kernel_size {kernel}")
    for axis, size in enumerate(x.shape[2:]):
        if size + 2 * padding[axis] < dilation[axis] * (kernel[axis] - 1) + 1:
            raise ValueError(f"pooling window {kernel} is larger than the padded input {x.shape}")
    return kernel, stride, padding, dilation


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1):
    """y = max over each KH x KW window (padding counts as -inf).

    Args:
        kernel_size: int or (h, w). stride defaults to kernel_size.
        padding: at most half the kernel; dilation spaces the window's taps.
    """
    kernel, stride, padding, dilation = _pool_args("max_pool2d", x, kernel_size, stride, padding, dilation)
    return MaxPool2dFunction.apply(x, kernel, stride, padding, dilation)


def avg_pool2d(x, kernel_size, stride=None, padding=0, count_include_pad=True):
    """y = mean over each KH x KW window; with ``count_include_pad=False`` padding is not
    counted in the divisor."""
    kernel, stride, padding, _ = _pool_args("avg_pool2d", x, kernel_size, stride, padding)
    return AvgPool2dFunction.apply(x, kernel, stride, padding, bool(count_include_pad))
