"""conv2d: 2-d convolution with fused bias and activation, its autograd Function and checks.

Kernels: ``gpukernels/{reference,cpu,triton}/conv.py`` (``conv2d_forward``, ``conv2d_backward``).
"""

from __future__ import annotations

import numbers

from .. import kernels
from ..amp import low_precision
from ..shapes import check_pair
from ._common import KernelFunction, check_slope, same_dtype, tensor_arg


class Conv2dFunction(KernelFunction):
    def forward(self, x, weight, bias, stride, padding, dilation, groups, activation, negative_slope):
        self.args = (stride, padding, dilation, groups, activation, negative_slope)
        y = kernels.conv.on(x).conv2d_forward(x, weight, bias, *self.args)
        self.save_for_backward(x, weight, y if activation else None)
        return y

    def backward(self, g):
        x, weight, y = self.saved
        return kernels.conv.on(g).conv2d_backward(
            g, x, weight, y, *self.args, needs=self.needs_input_grad[:3]
        )


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
           activation=None, negative_slope=0.01):
    """2-d cross-correlation with optional fused bias and activation.

    y[n, o] = act(b[o] + sum_{c, i, j} w[o, c, i, j] * x[n, g*C/G + c, s*p + d*i - pad, ...])

    Args:
        x: (N, C, H, W) input.
        weight: (O, C // groups, KH, KW).
        bias: (O,) or None.
        stride, padding, dilation: int or (h, w) pair.
        groups: C and O must both be divisible by it.
        activation: None, "relu" or "leaky_relu", applied in the same kernel.
        negative_slope: leaky ReLU slope (>= 0).
    """
    tensor_arg(x, "conv2d: input", 4)
    tensor_arg(weight, "conv2d: weight", 4)
    if bias is not None:
        tensor_arg(bias, "conv2d: bias", 1)
    x, weight, bias = low_precision(x, weight, bias)
    same_dtype("conv2d", input=x, weight=weight, bias=bias)
    stride = check_pair(stride, "stride", 1)
    padding = check_pair(padding, "padding", 0)
    dilation = check_pair(dilation, "dilation", 1)
    if not isinstance(groups, numbers.Integral) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    if c % groups or o % groups:
        raise ValueError(f"conv2d: in_channels {c} and out_channels {o} must be divisible by groups={groups}")
    if cg * groups != c:
        raise ValueError(
            f"conv2d: weight of shape {weight.shape} expects {cg * groups} input channels "
            f"(groups={groups}), got input of shape {x.shape}"
        )
    if bias is not None and bias.shape != (o,):
        raise ValueError(f"conv2d: bias must have shape ({o},), got {bias.shape}")
    eff_h, eff_w = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    if h + 2 * padding[0] < eff_h or w + 2 * padding[1] < eff_w:
        raise ValueError(
            f"conv2d: padded input {h + 2 * padding[0]}x{w + 2 * padding[1]} is smaller than "
            f"the dilated kernel {eff_h}x{eff_w}"
        )
    if activation not in (None, "relu", "leaky_relu"):
        raise ValueError(f"activation must be None, 'relu' or 'leaky_relu', got {activation!r}")
    slope = check_slope(negative_slope) if activation == "leaky_relu" else 0.0
    return Conv2dFunction.apply(x, weight, bias, stride, padding, dilation, int(groups), activation, slope)
