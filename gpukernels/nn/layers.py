"""Layers with PyTorch's names, arguments and default initialisations."""

from __future__ import annotations

import math
import numbers

from .. import functional as F
from .. import backend
from ..shapes import check_pair, is_int
from ..dtypes import as_dtype as _as_dtype
from ..dtypes import bfloat16, float32
from ..ops.sync_batchnorm import sync_batch_norm
from ..tensor import Tensor
from . import init
from .module import Module
from .parameter import Parameter


def _empty(shape, dtype, device):
    xp = backend.xp_for_device(backend.normalize_device(device) if device else backend.device_of_backend())
    return xp.zeros(shape, dtype=_as_dtype(dtype or float32))


# ----------------------------------------------------------------------------- validation
# Constructors check their arguments up front: a ValueError naming the layer, the
# argument and the value received, never a ZeroDivisionError from the initialisation
# or a NumPy error at the first forward.


_is_int = is_int


def _int_arg(layer, name, value, minimum=1) -> int:
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{layer}: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _pair_arg(layer, name, value, minimum) -> tuple:
    """An int or a pair of ints, each >= ``minimum``, as a pair."""
    return check_pair(value, name, minimum, layer=layer)


def _real_arg(layer, name, value, low=None, high=None, low_open=False) -> float:
    """A real number in [low, high] (``(low, high]`` with ``low_open``)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        if high is not None:
            bounds = f" in {'(' if low_open else '['}{low}, {high}]"
        elif low is not None:
            bounds = f" > {low}" if low_open else f" >= {low}"
        else:
            bounds = ""
        raise ValueError(f"{layer}: {name} must be a finite number{bounds}, got {value!r}")
    return float(value)


def _bool_arg(layer, name, value) -> bool:
    if not isinstance(value, (bool, numbers.Integral)) or value not in (0, 1):
        raise ValueError(f"{layer}: {name} must be True or False, got {value!r}")
    return bool(value)


def _choice_arg(layer, name, value, choices):
    if value not in choices:
        raise ValueError(f"{layer}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


class Linear(Module):
    """y = x W^T + b. W: (out_features, in_features), U(+-1/sqrt(in_features)) as PyTorch."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=None, device=None):
        super().__init__()
        in_features = _int_arg("Linear", "in_features", in_features)
        out_features = _int_arg("Linear", "out_features", out_features)
        bias = _bool_arg("Linear", "bias", bias)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(_empty((out_features, in_features), dtype, device))
        self.bias = Parameter(_empty((out_features,), dtype, device)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Conv2d(Module):
    """2-d convolution (cross-correlation), optionally with a fused activation.

    ``activation="relu"|"leaky_relu"`` fuses the activation into the conv's kernel;
    the rest are PyTorch's ``nn.Conv2d`` arguments (padding_mode 'zeros' only).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, activation=None,
                 negative_slope: float = 0.01, dtype=None, device=None):
        super().__init__()
        in_channels = _int_arg("Conv2d", "in_channels", in_channels)
        out_channels = _int_arg("Conv2d", "out_channels", out_channels)
        kernel_size = _pair_arg("Conv2d", "kernel_size", kernel_size, 1)
        if isinstance(padding, str):
            raise ValueError(f"Conv2d: padding must be an int or a pair of ints (each >= 0), got {padding!r} "
                             "(string paddings such as 'same' are not supported)")
        stride = _pair_arg("Conv2d", "stride", stride, 1)
        padding = _pair_arg("Conv2d", "padding", padding, 0)
        dilation = _pair_arg("Conv2d", "dilation", dilation, 1)
        groups = _int_arg("Conv2d", "groups", groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"Conv2d: in_channels={in_channels} and out_channels={out_channels} must be "
                f"divisible by groups={groups}"
            )
        bias = _bool_arg("Conv2d", "bias", bias)
        _choice_arg("Conv2d", "activation", activation, (None, "relu", "leaky_relu"))
        _real_arg("Conv2d", "negative_slope", negative_slope, low=0)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = kernel_size, stride
        self.padding, self.dilation, self.groups = padding, dilation, groups
        self.activation, self.negative_slope = activation, negative_slope
        shape = (out_channels, in_channels // groups) + self.kernel_size
        self.weight = Parameter(_empty(shape, dtype, device))
        self.bias = Parameter(_empty((out_channels,), dtype, device)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.kernel_size[0] * self.kernel_size[1]
            bound = 1 / math.sqrt(fan_in)
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups, self.activation, self.negative_slope)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.activation:
            s += f", activation={self.activation!r}"
        return s


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class LeakyReLU(Module):
    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = _real_arg("LeakyReLU", "negative_slope", negative_slope, low=0)

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class Sigmoid(Module):
    def forward(self, x):
        return F.sigmoid(x)


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)


def _pool_args(layer, kernel_size, stride, padding, dilation) -> None:
    kernel = _pair_arg(layer, "kernel_size", kernel_size, 1)
    if stride is not None:
        _pair_arg(layer, "stride", stride, 1)
    pad = _pair_arg(layer, "padding", padding, 0)
    _pair_arg(layer, "dilation", dilation, 1)
    if pad[0] > kernel[0] // 2 or pad[1] > kernel[1] // 2:
        raise ValueError(f"{layer}: padding must be at most half of kernel_size {kernel_size!r}, got {padding!r}")


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1):
        super().__init__()
        _pool_args("MaxPool2d", kernel_size, stride, padding, dilation)
        self.kernel_size, self.stride = kernel_size, kernel_size if stride is None else stride
        self.padding, self.dilation = padding, dilation

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, dilation={self.dilation}"


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, count_include_pad=True):
        super().__init__()
        _pool_args("AvgPool2d", kernel_size, stride, padding, 1)
        self.kernel_size, self.stride = kernel_size, kernel_size if stride is None else stride
        self.padding = padding
        self.count_include_pad = _bool_arg("AvgPool2d", "count_include_pad", count_include_pad)

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.count_include_pad)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    """Average pool to a fixed output size (PyTorch's ``nn.AdaptiveAvgPool2d``).

    ``output_size``: an int ``s`` (for ``(s, s)``) or ``(oh, ow)``; ``None`` in the
    tuple keeps that input size. Input ``(N, C, H, W)`` -> ``(N, C, oh, ow)``.

    Supported: output ``(1, 1)`` (global average pooling, the head of a ResNet: a mean
    over H and W, any input size) and any size that divides the input evenly, where
    adaptive pooling is exactly ``avg_pool2d`` with kernel = stride = ``(H // oh,
    W // ow)``. Other sizes (PyTorch's overlapping, uneven windows) raise a
    ``ValueError`` rather than compute something else.
    """

    def __init__(self, output_size):
        super().__init__()
        single = output_size is None or isinstance(output_size, int)
        size = (output_size, output_size) if single else tuple(output_size)
        if len(size) != 2 or any(s is not None and (not _is_int(s) or s < 1) for s in size):
            raise ValueError(
                f"AdaptiveAvgPool2d: output_size must be a positive int or a pair of them, got {output_size!r}"
            )
        self.output_size = output_size
        self._size = size

    def forward(self, x):
        if not isinstance(x, Tensor) or x.ndim != 4:
            got = x.shape if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"AdaptiveAvgPool2d: expected an (N, C, H, W) input, got {got}")
        h, w = x.shape[2:]
        oh = h if self._size[0] is None else self._size[0]
        ow = w if self._size[1] is None else self._size[1]
        if (oh, ow) == (1, 1) and x.device == "cpu" and x.dtype != bfloat16:
            # global average pool on the host: one NumPy reduction, no window bookkeeping.
            # On the GPU (and for bf16 bits, which cannot be averaged as integers) it is
            # the pooling kernel with one window per channel, below.
            return x.mean(dim=(2, 3), keepdim=True)
        if (oh, ow) == (h, w):
            return x  # one window per pixel: the input itself
        if oh > h or ow > w or h % oh or w % ow:
            raise ValueError(
                f"AdaptiveAvgPool2d: output size {(oh, ow)} must divide the input size {(h, w)} "
                "evenly (uneven adaptive windows are not supported)"
            )
        kernel = (h // oh, w // ow)
        return F.avg_pool2d(x, kernel, kernel)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class Flatten(Module):
    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        for name, value in (("start_dim", start_dim), ("end_dim", end_dim)):
            if not _is_int(value):
                raise ValueError(f"Flatten: {name} must be an int, got {value!r}")
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return F.flatten(x, self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Dropout(Module):
    def __init__(self, p: float = 0.5):
        super().__init__()
        _real_arg("Dropout", "p (the dropout probability)", p, low=0, high=1)
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class _BatchNorm(Module):
    _ndims: tuple = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 track_running_stats: bool = True, dtype=None, device=None, activation=None):
        super().__init__()
        layer = type(self).__name__
        _choice_arg(layer, "activation", activation, (None, "relu"))
        self.activation = activation
        num_features = _int_arg(layer, "num_features", num_features)
        _real_arg(layer, "eps", eps, low=0, low_open=True)
        if momentum is None:
            raise ValueError(f"{layer}: momentum=None (a cumulative moving average) is not supported; "
                             "give a number in [0, 1]")
        _real_arg(layer, "momentum", momentum, low=0, high=1)
        affine = _bool_arg(layer, "affine", affine)
        track_running_stats = _bool_arg(layer, "track_running_stats", track_running_stats)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = Parameter(_empty((num_features,), dtype, device)) if affine else None
        self.bias = Parameter(_empty((num_features,), dtype, device)) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", Tensor(_empty((num_features,), dtype, device)))
            self.register_buffer("running_var", Tensor(_empty((num_features,), dtype, device)))
            self.register_buffer("num_batches_tracked", Tensor(_empty((), "int64", device)))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None
        self.reset_parameters()

    def reset_parameters(self):
        if self.track_running_stats:
            init.zeros_(self.running_mean)
            init.ones_(self.running_var)
            self.num_batches_tracked.data[...] = 0
        if self.affine:
            init.ones_(self.weight)
            init.zeros_(self.bias)

    def forward(self, x):
        if not isinstance(x, Tensor) or x.ndim not in self._ndims:
            got = x.shape if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__}: expected input with {' or '.join(map(str, self._ndims))} dimensions, got {got}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}): input has {x.shape[1]} channels (shape {x.shape})")
        use_batch = self.training or not self.track_running_stats
        if self.training and self.track_running_stats:
            self.num_batches_tracked.data += 1
        return self._norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                          use_batch, self.momentum, self.eps, activation=self.activation)

    #: the function normalising the batch (SyncBatchNorm: over every rank's batch)
    _norm = staticmethod(F.batch_norm)

    def extra_repr(self):
        s = (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
             f"track_running_stats={self.track_running_stats}")
        return s + (f", activation={self.activation!r}" if self.activation else "")


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) or (N, C, L) inputs."""

    _ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W) inputs, per channel."""

    _ndims = (4,)


class SyncBatchNorm(_BatchNorm):
    """Batch norm whose training statistics are those of the whole global batch: every
    rank's (N, C, ...) batch together, in one all-reduce of per-channel (sum, sum of
    squares, count) forward and one of (sum g, sum g * xhat) backward
    (``gpukernels.ops.sync_batchnorm``). Equal to ``BatchNorm2d`` on the concatenated
    batch, running statistics included; in eval mode, or without a process group of
    more than one rank, it is plain batch norm."""

    _ndims = (2, 3, 4)
    _norm = staticmethod(sync_batch_norm)

    @classmethod
    def convert_sync_batchnorm(cls, module: Module, process_group=None) -> Module:
        """``module`` with every ``BatchNorm1d`` / ``BatchNorm2d`` replaced by a
        ``SyncBatchNorm`` holding the same Parameter objects and buffers (an optimizer
        made before the conversion still owns them), as PyTorch's; returns the new
        root when ``module`` itself is a batch norm."""
        if process_group is not None:
            raise ValueError("convert_sync_batchnorm: only the default process group is supported")
        if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
            new = cls.__new__(cls)
            Module.__init__(new)
            for name in ("num_features", "eps", "momentum", "affine", "track_running_stats", "activation"):
                object.__setattr__(new, name, getattr(module, name))
            new.weight, new.bias = module.weight, module.bias
            if module.track_running_stats:
                for name in ("running_mean", "running_var", "num_batches_tracked"):
                    new.register_buffer(name, getattr(module, name))
            else:
                new.running_mean = new.running_var = new.num_batches_tracked = None
            new.training = module.training
            return new
        for name, child in list(module._modules.items()):
            if child is not None:
                converted = cls.convert_sync_batchnorm(child)
                if converted is not child:
                    module._modules[name] = converted
        return module


class Residual(Module):
    """y = body(x) + shortcut(x), or relu(body(x) + shortcut(x)) with ``activation="relu"``;
    the shortcut is the identity unless given (e.g. a 1x1 projection when the body
    changes the shape).

    PyTorch has no Residual module (torchvision writes the sum inside each block's
    ``forward``); ``benchmarks.torch_twin`` mirrors it as ``body(x) + shortcut(x)``,
    then ``relu`` with ``activation="relu"``.

    Args:
        body: the residual branch.
        shortcut: the skip branch, or None for the identity.
        activation: None, or "relu": the sum and the ReLU then run as one fused pass
            (``F.add_relu``: reads both branches once and writes the output once, where a
            separate add and ReLU cost two passes and an extra tensor). No parameters,
            so the ``state_dict`` is the same either way.
    """

    def __init__(self, body: Module, shortcut: Module | None = None, activation: str | None = None):
        super().__init__()
        if not isinstance(body, Module):
            raise ValueError(f"Residual: body must be a Module, got {type(body).__name__}")
        if shortcut is not None and not isinstance(shortcut, Module):
            raise ValueError(f"Residual: shortcut must be a Module or None, got {type(shortcut).__name__}")
        if activation not in (None, "relu"):
            raise ValueError(f"Residual: activation must be None or 'relu', got {activation!r}")
        self.body = body
        self.shortcut = shortcut
        self.activation = activation

    def forward(self, x):
        y = self.body(x)
        skip = x if self.shortcut is None else self.shortcut(x)
        if y.shape != skip.shape:
            raise ValueError(
                f"Residual: body output {y.shape} and shortcut output {skip.shape} differ; "
                "give a shortcut module that projects the input"
            )
        if self.activation == "relu":
            return F.add_relu(y, skip)
        return y + skip

    def extra_repr(self):
        return f"activation={self.activation!r}" if self.activation else ""


class CrossEntropyLoss(Module):
    def __init__(self, reduction: str = "mean", ignore_index: int = -100, label_smoothing: float = 0.0):
        super().__init__()
        _choice_arg("CrossEntropyLoss", "reduction", reduction, ("mean", "sum", "none"))
        if not _is_int(ignore_index):
            raise ValueError(f"CrossEntropyLoss: ignore_index must be an int, got {ignore_index!r}")
        _real_arg("CrossEntropyLoss", "label_smoothing", label_smoothing, low=0, high=1)
        self.reduction, self.ignore_index, self.label_smoothing = reduction, ignore_index, label_smoothing

    def forward(self, logits, target):
        return F.cross_entropy(logits, target, self.reduction, self.ignore_index, self.label_smoothing)


class MSELoss(Module):
    def __init__(self, reduction: str = "mean"):
        super().__init__()
        _choice_arg("MSELoss", "reduction", reduction, ("mean", "sum", "none"))
        self.reduction = reduction

    def forward(self, input, target):
        return F.mse_loss(input, target, self.reduction)


class Softmax(Module):
    def __init__(self, dim: int = -1):
        super().__init__()
        if not _is_int(dim):
            raise ValueError(f"{type(self).__name__}: dim must be an int, got {dim!r}")
        self.dim = dim

    def forward(self, x):
        return F.softmax(x, self.dim)


class LogSoftmax(Softmax):
    def forward(self, x):
        return F.log_softmax(x, self.dim)
