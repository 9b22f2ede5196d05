"""User-facing neural-network ops (``gk.functional``, PyTorch's ``F``).

Each op has two halves side by side: an autograd ``Function`` whose forward/backward
call the current backend's kernels (``backend.kernels(family, device)``), and the public
function that validates its arguments, with an error that names the argument and what
was received, then calls ``Function.apply``.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import backend
from .amp import full_precision, low_precision
from .shapes import check_pair
from .tensor import _FLOATS, Function, Tensor, bfloat16, check_same_dtype

__all__ = [
    "conv2d", "linear", "relu", "add_relu", "leaky_relu", "sigmoid", "tanh", "heaviside",
    "max_pool2d", "avg_pool2d", "batch_norm", "softmax", "log_softmax", "cross_entropy",
    "mse_loss", "flatten", "dropout",
]

# ----------------------------------------------------------------------------- validation


def _kern(family, array):
    module = backend.kernels(family, backend.device_of(array))
    if array.dtype == bfloat16 and module.__name__.startswith("gpukernels.cpu"):
        raise TypeError(
            f"{family}: bfloat16 needs the Triton kernels (the 'cuda' or 'interpret' backend); "
            f"the NumPy reference has no bf16 arithmetic (backend {backend.get_backend()!r}); "
            "use float16 or float32 there")
    return module


class _KernelFunction(Function):
    """An op whose kernels (Triton: bf16 as uint16) handle every float dtype."""

    bf16 = True


def _tensor(x, name, ndim=None, floating=True):
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(x).__name__}")
    if ndim is not None and x.ndim not in ((ndim,) if isinstance(ndim, int) else ndim):
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    if floating and x.dtype not in _FLOATS:
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def _same_dtype(op, **tensors):
    """One dtype per op, the rule ``@`` follows too (``tensor.check_same_dtype``)."""
    check_same_dtype(op, "gk.autocast casts float32 operands of conv2d / linear for you", **tensors)


_pair = check_pair


def _check_reduction(reduction):
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _check_slope(negative_slope):
    if not isinstance(negative_slope, numbers.Real) or negative_slope < 0:
        # the backward reads the saved output, whose sign is the input's only for slope >= 0
        raise ValueError(f"negative_slope must be a number >= 0, got {negative_slope!r}")
    return float(negative_slope)


# ----------------------------------------------------------------------------- conv2d


class Conv2dFunction(_KernelFunction):
    def forward(self, x, weight, bias, stride, padding, dilation, groups, activation, negative_slope):
        self.args = (stride, padding, dilation, groups, activation, negative_slope)
        y = _kern("conv", x).conv2d_forward(x, weight, bias, *self.args)
        self.save_for_backward(x, weight, y if activation else None)
        return y

    def backward(self, g):
        x, weight, y = self.saved
        return _kern("conv", g).conv2d_backward(
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
    _tensor(x, "conv2d: input", 4)
    _tensor(weight, "conv2d: weight", 4)
    if bias is not None:
        _tensor(bias, "conv2d: bias", 1)
    x, weight, bias = low_precision(x, weight, bias)
    _same_dtype("conv2d", input=x, weight=weight, bias=bias)
    stride = _pair(stride, "stride", 1)
    padding = _pair(padding, "padding", 0)
    dilation = _pair(dilation, "dilation", 1)
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
    slope = _check_slope(negative_slope) if activation == "leaky_relu" else 0.0
    return Conv2dFunction.apply(x, weight, bias, stride, padding, dilation, int(groups), activation, slope)


# ----------------------------------------------------------------------------- linear


class LinearFunction(_KernelFunction):
    def forward(self, x, weight, bias):
        self.save_for_backward(x, weight)
        return _kern("linear", x).linear_forward(x, weight, bias)

    def backward(self, g):
        x, weight = self.saved
        return _kern("linear", g).linear_backward(g, x, weight, needs=self.needs_input_grad)


def linear(x, weight, bias=None):
    """y = x W^T + b.

    Args:
        x: (..., in_features).
        weight: (out_features, in_features).
        bias: (out_features,) or None.
    """
    _tensor(x, "linear: input")
    _tensor(weight, "linear: weight", 2)
    if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear: input of shape {x.shape} does not match weight of shape {weight.shape} "
            f"(last input dimension must be {weight.shape[1]})"
        )
    if bias is not None and (_tensor(bias, "linear: bias", 1).shape != (weight.shape[0],)):
        raise ValueError(f"linear: bias must have shape ({weight.shape[0]},), got {bias.shape}")
    x, weight, bias = low_precision(x, weight, bias)
    _same_dtype("linear", input=x, weight=weight, bias=bias)
    return LinearFunction.apply(x, weight, bias)


# ----------------------------------------------------------------------------- activations


class _Activation(_KernelFunction):
    """Elementwise activation whose backward reads only the saved output."""

    name = ""

    def forward(self, x, *params):
        self.params = params
        y = getattr(_kern("activation", x), f"{self.name}_forward")(x, *params)
        self.save_for_backward(y)
        return y

    def backward(self, g):
        (y,) = self.saved
        return getattr(_kern("activation", g), f"{self.name}_backward")(g, y, *self.params), None


class ReLUFunction(_Activation):
    name = "relu"


class LeakyReLUFunction(_Activation):
    name = "leaky_relu"


class SigmoidFunction(_Activation):
    name = "sigmoid"


class TanhFunction(_Activation):
    name = "tanh"


def relu(x):
    """y = max(x, 0)."""
    return ReLUFunction.apply(_tensor(x, "relu: input"))


class AddReLUFunction(_KernelFunction):
    """relu(a + b) in one kernel pass; both inputs get dL/dy * [y > 0]."""

    def forward(self, a, b):
        y = _kern("activation", a).add_relu_forward(a, b)
        self.save_for_backward(y)
        return y

    def backward(self, g):
        (y,) = self.saved
        if not any(self.needs_input_grad[:2]):
            return None, None
        dz = _kern("activation", g).relu_backward(g, y)
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
    _tensor(a, "add_relu: a")
    _tensor(b, "add_relu: b")
    if a.shape != b.shape:
        raise ValueError(f"add_relu: a shape {a.shape} differs from b shape {b.shape}")
    _same_dtype("add_relu", a=a, b=b)
    if a.device != b.device:
        raise RuntimeError(f"add_relu: a is on {a.device}, b on {b.device}")
    return AddReLUFunction.apply(a, b)


def leaky_relu(x, negative_slope=0.01):
    """y = x for x > 0, negative_slope * x otherwise (negative_slope >= 0)."""
    return LeakyReLUFunction.apply(_tensor(x, "leaky_relu: input"), _check_slope(negative_slope))


def sigmoid(x):
    """y = 1 / (1 + exp(-x))."""
    return SigmoidFunction.apply(_tensor(x, "sigmoid: input"))


def tanh(x):
    """y = tanh(x)."""
    return TanhFunction.apply(_tensor(x, "tanh: input"))


class HeavisideFunction(_KernelFunction):
    def forward(self, x, values):
        return _kern("activation", x).heaviside_forward(x, values)

    def backward(self, g):
        raise RuntimeError(
            "heaviside is not differentiable (its derivative is 0 almost everywhere and "
            "undefined at 0); train step-function models with the perceptron rule instead"
        )


def heaviside(x, values=0.0):
    """Step function: 0 for x < 0, ``values`` at 0, 1 for x > 0 (``torch.heaviside``).

    Forward only: backward through it raises an error.
    """
    _tensor(x, "heaviside: input")
    if isinstance(values, Tensor):
        values = values.data
    return HeavisideFunction.apply(x, values)


# ----------------------------------------------------------------------------- pooling


class MaxPool2dFunction(_KernelFunction):
    def forward(self, x, kernel, stride, padding, dilation):
        self.args = (kernel, stride, padding, dilation)
        y, argmax = _kern("pool", x).max_pool2d_forward(x, *self.args)
        self.save_for_backward(argmax, x.shape)
        return y

    def backward(self, g):
        argmax, shape = self.saved
        return (_kern("pool", g).max_pool2d_backward(g, argmax, shape, *self.args),)


class AvgPool2dFunction(_KernelFunction):
    def forward(self, x, kernel, stride, padding, count_include_pad):
        self.args = (kernel, stride, padding, count_include_pad)
        self.shape = x.shape
        return _kern("pool", x).avg_pool2d_forward(x, *self.args)

    def backward(self, g):
        return (_kern("pool", g).avg_pool2d_backward(g, self.shape, *self.args),)


def _pool_args(op, x, kernel_size, stride, padding, dilation=1):
    _tensor(x, f"{op}: input", 4)
    kernel = _pair(kernel_size, "kernel_size", 1)
    stride = kernel if stride is None else _pair(stride, "stride", 1)
    padding = _pair(padding, "padding", 0)
    dilation = _pair(dilation, "dilation", 1)
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


# ----------------------------------------------------------------------------- batch norm


class BatchNormFunction(_KernelFunction):
    def forward(self, x, weight, bias, running_mean, running_var, training, momentum, eps):
        y, mean, inv_std = _kern("batchnorm", x).batch_norm_forward(
            x, running_mean, running_var, weight, bias, training, momentum, eps
        )
        self.training = training
        self.save_for_backward(x, mean, inv_std, weight)
        return y

    def backward(self, g):
        x, mean, inv_std, weight = self.saved
        return _kern("batchnorm", g).batch_norm_backward(
            g, x, mean, inv_std, weight, self.training, needs=self.needs_input_grad[:3]
        )


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, per channel (axis 1).

    Training uses the batch statistics and moves ``running_mean`` / ``running_var`` (updated
    in place) by ``momentum`` towards them (unbiased variance); eval uses the running ones.

    Args:
        x: (N, C) or (N, C, H, W).
        running_mean, running_var: (C,) tensors or None (then batch statistics always).
        weight, bias: (C,) affine parameters or None.
    """
    _tensor(x, "batch_norm: input", (2, 3, 4))
    c = x.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if t is not None and _tensor(t, f"batch_norm: {name}", 1).shape != (c,):
            raise ValueError(f"batch_norm: {name} must have shape ({c},), got {t.shape}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm: give both running_mean and running_var, or neither")
    if not training and running_mean is None:
        training = True  # no running statistics: normalise with the batch's, as PyTorch
    if training and x.shape[0] * int(np.prod(x.shape[2:])) < 2:
        raise ValueError(f"batch_norm: expected more than 1 value per channel when training, got input of shape {x.shape}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    rm = running_mean.data if running_mean is not None else None
    rv = running_var.data if running_var is not None else None
    return BatchNormFunction.apply(x, weight, bias, rm, rv, bool(training), float(momentum), float(eps))


# ----------------------------------------------------------------------------- softmax and losses


def _dim(dim, ndim, name="dim"):
    if not isinstance(dim, numbers.Integral) or not -ndim <= dim < max(ndim, 1):
        raise ValueError(f"{name} must be an int in [{-ndim}, {ndim}), got {dim!r}")
    return int(dim) % max(ndim, 1)


class SoftmaxFunction(_KernelFunction):
    def forward(self, x, dim):
        self.dim = dim
        y = _kern("cross_entropy", x).softmax_forward(x, dim)
        self.save_for_backward(y)
        return y

    def backward(self, g):
        return _kern("cross_entropy", g).softmax_backward(g, self.saved[0], self.dim), None


class LogSoftmaxFunction(_KernelFunction):
    def forward(self, x, dim):
        self.dim = dim
        y = _kern("cross_entropy", x).log_softmax_forward(x, dim)
        self.save_for_backward(y)
        return y

    def backward(self, g):
        return _kern("cross_entropy", g).log_softmax_backward(g, self.saved[0], self.dim), None


def softmax(x, dim=-1):
    """y_i = exp(x_i - max x) / sum_j exp(x_j - max x) along ``dim``."""
    _tensor(x, "softmax: input")
    (x,) = full_precision(x)
    return SoftmaxFunction.apply(x, _dim(dim, x.ndim))


def log_softmax(x, dim=-1):
    """y_i = x_i - max x - log sum_j exp(x_j - max x) along ``dim``."""
    _tensor(x, "log_softmax: input")
    (x,) = full_precision(x)
    return LogSoftmaxFunction.apply(x, _dim(dim, x.ndim))


class CrossEntropyFunction(_KernelFunction):
    def forward(self, logits, target, reduction, ignore_index, label_smoothing):
        self.reduction = reduction
        loss, grad_logits = _kern("cross_entropy", logits).cross_entropy_forward(
            logits, target, reduction, ignore_index, label_smoothing
        )
        # saved, so backward(retain_graph=True) can run twice and the tape frees it otherwise
        self.save_for_backward(grad_logits)
        return loss

    def backward(self, g):
        (grad_logits,) = self.saved
        grad = _kern("cross_entropy", g).cross_entropy_backward(g, grad_logits, self.reduction)
        return grad, None


def cross_entropy(logits, target, reduction="mean", ignore_index=-100, label_smoothing=0.0):
    """Softmax cross-entropy with class-index targets, in log-sum-exp form.

    loss_n = -(1 - eps) log p[n, t_n] - eps/C sum_c log p[n, c],  p = softmax(logits[n])

    Args:
        logits: (N, C) unnormalised scores.
        target: (N,) integer class indices (int32/int64) in [0, C) or ``ignore_index``.
        reduction: "mean" (over non-ignored rows), "sum" or "none" (shape (N,)).
        ignore_index: target value whose rows add nothing to the loss or the gradient.
        label_smoothing: eps in [0, 1].
    """
    _tensor(logits, "cross_entropy: input", 2)
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a Tensor of class indices, got {type(target).__name__}")
    if target.dtype.kind not in "iu":
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    if target.shape != (logits.shape[0],):
        raise ValueError(
            f"cross_entropy: target must have shape ({logits.shape[0]},) for input of shape "
            f"{logits.shape}, got {target.shape}"
        )
    _check_reduction(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    if target.device != logits.device:
        raise RuntimeError(f"cross_entropy: input is on {logits.device}, target on {target.device}")
    (logits,) = full_precision(logits)
    # out-of-range class indices are checked by the kernels themselves (ValueError naming
    # the first): one pass over the targets, and on a GPU one host sync, not two
    return CrossEntropyFunction.apply(logits, target.data, reduction, int(ignore_index), float(label_smoothing))


class MSELossFunction(_KernelFunction):
    def forward(self, input, target, reduction):
        self.reduction = reduction
        loss, diff = _kern("loss", input).mse_loss_forward(input, target, reduction)
        self.save_for_backward(diff)
        return loss

    def backward(self, g):
        gi = _kern("loss", g).mse_loss_backward(g, self.saved[0], self.reduction)
        return (gi if self.needs_input_grad[0] else None), (-gi if self.needs_input_grad[1] else None)


def mse_loss(input, target, reduction="mean"):
    """loss = reduce((input - target)^2) with reduction "mean", "sum" or "none"."""
    _tensor(input, "mse_loss: input")
    _tensor(target, "mse_loss: target")
    if input.shape != target.shape:
        raise ValueError(f"mse_loss: input shape {input.shape} differs from target shape {target.shape}")
    input, target = full_precision(input, target)
    _same_dtype("mse_loss", input=input, target=target)
    _check_reduction(reduction)
    return MSELossFunction.apply(input, target, reduction)


# ----------------------------------------------------------------------------- shape and dropout


def flatten(x, start_dim=0, end_dim=-1):
    """Merge dimensions start_dim..end_dim into one (``torch.flatten``)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"input must be a Tensor, got {type(x).__name__}")
    return x.flatten(start_dim, end_dim)


class DropoutFunction(_KernelFunction):
    def forward(self, x, p):
        y, mask = _kern("dropout", x).dropout_forward(x, p)
        self.save_for_backward(mask)
        return y

    def backward(self, g):
        return _kern("dropout", g).dropout_backward(g, self.saved[0]), None


def dropout(x, p=0.5, training=True):
    """Zero each element with probability p and scale the rest by 1/(1-p) (training only).

    The mask comes from the library generator (``gk.manual_seed``).
    """
    _tensor(x, "dropout: input")
    if not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, got {p!r}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    return DropoutFunction.apply(x, float(p))

