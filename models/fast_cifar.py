"""A fast CIFAR-10 network in the style of the public CIFAR-10 speed-training records
(David Page's ResNet-9 "DAWNBench" net, hlb-cifar10, Keller Jordan's airbench): few,
wide 3x3 convs, a max pool right after the first conv of each block (so the second conv
runs at the lower resolution), batch norm + ReLU after every conv, and a global max pool
into a bias-free linear classifier. No residual connections: at this depth plain blocks
train as well and cost less.

Layout of ``fast_cifar(widths=(w1, w2, w3))`` for (N, C, 32, 32) inputs, with the
children's names (so parameter keys read ``block2.conv1.weight``, ``stem.bn.bias``, ...)::

    stem    conv3x3(C -> w1//2) - BN - ReLU                              (N, w1//2, 32, 32)
    block1  conv1 3x3(w1//2 -> w1) - pool 2 - bn1 - relu1
            - conv2 3x3(w1 -> w1) - bn2 - relu2                         (N, w1, 16, 16)
    block2  the same, w1 -> w2                                         (N, w2, 8, 8)
    block3  the same, w2 -> w3                                         (N, w3, 4, 4)
    pool    MaxPool2d(4): global max over the 4x4 map                  (N, w3, 1, 1)
    flatten                                                            (N, w3)
    fc      Linear(w3 -> num_classes, bias=False)                      (N, num_classes)

Every conv is 3x3, padding 1, without a bias (the BN that follows has its own shift).
Initialisation is the library's default (PyTorch's): Kaiming-uniform convs and linear,
BN weight 1 and bias 0.

Size with the defaults (C=3, widths (64, 256, 256), 10 classes): 1,978,016 parameters
(convs 1,973,088 + BN 2,368 + fc 2,560). In general::

    params = 9 * (C*h + h*w1 + w1*w1 + w1*w2 + w2*w2 + w2*w3 + w3*w3)
             + 2 * (h + 2*w1 + 2*w2 + 2*w3) + w3 * num_classes,     h = w1 // 2

FLOPs per image, forward, counted as 2 * multiply-adds of the convs and the linear (BN,
ReLU and pooling not counted): 303,764,480 (about 0.304 GFLOP) with the defaults::

    stem    3 x 32 x 9 x 32*32   =    884,736 MACs
    block1  32 x 64 x 9 x 32*32  = 18,874,368   64 x 64 x 9 x 16*16   =  9,437,184
    block2  64 x 256 x 9 x 16*16 = 37,748,736   256 x 256 x 9 x 8*8   = 37,748,736
    block3  256 x 256 x 9 x 8*8  = 37,748,736   256 x 256 x 9 x 4*4   =  9,437,184
    fc      256 x 10             =      2,560
    total                          151,882,240 MACs = 303,764,480 FLOPs

A training step (forward + backward: grad-input and grad-weight GEMMs of the same size)
is about 3x that, 0.91 GFLOP per image (a little less: the stem needs no grad-input).
``fast_cifar_flops`` computes the forward count for any widths.
"""

from __future__ import annotations

from collections import OrderedDict

from gpukernels import Tensor, nn

#: the only input size: three 2x pools then the 4x4 global max pool need 32x32
INPUT_SIZE = 32


def _check_args(num_classes, in_channels, widths) -> tuple[int, int, tuple[int, int, int]]:
    def positive_int(name, value):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"fast_cifar: {name} must be a positive int, got {value!r}")
        return value

    positive_int("num_classes", num_classes)
    positive_int("in_channels", in_channels)
    try:
        widths = tuple(widths)
    except TypeError:
        raise ValueError(f"fast_cifar: widths must be 3 positive ints, got {widths!r}") from None
    if len(widths) != 3 or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(f"fast_cifar: widths must be 3 positive ints, got {widths!r}")
    if widths[0] < 2:
        raise ValueError(f"fast_cifar: widths[0] must be >= 2 (the stem has widths[0] // 2 channels), "
                         f"got {widths!r}")
    return num_classes, in_channels, widths


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    """conv3x3 - maxpool2 - BN - ReLU - conv3x3 - BN - ReLU: halves H and W."""
    return nn.Sequential(OrderedDict(
        conv1=_conv3x3(in_channels, out_channels),
        pool=nn.MaxPool2d(2),
        bn1=nn.BatchNorm2d(out_channels),
        relu1=nn.ReLU(),
        conv2=_conv3x3(out_channels, out_channels),
        bn2=nn.BatchNorm2d(out_channels),
        relu2=nn.ReLU(),
    ))


class FastCifar(nn.Sequential):
    """The ``nn.Sequential`` that ``fast_cifar`` returns: the layers of the module
    docstring, plus a check that the input is (N, in_channels, 32, 32) (anything else
    would fail deep inside, or, for larger inputs, silently change what the global pool
    sees). ``benchmarks.torch_twin`` mirrors it as a plain ``torch.nn.Sequential``."""

    def __init__(self, layers: OrderedDict, in_channels: int):
        super().__init__(layers)
        self.in_channels = in_channels

    def forward(self, x):
        shape = tuple(x.shape) if isinstance(x, Tensor) else None
        if shape is None or len(shape) != 4 or shape[1] != self.in_channels \
                or shape[2:] != (INPUT_SIZE, INPUT_SIZE):
            got = shape if shape is not None else type(x).__name__
            raise ValueError(
                f"fast_cifar: expected an input of shape (N, {self.in_channels}, {INPUT_SIZE}, "
                f"{INPUT_SIZE}), got {got}")
        return super().forward(x)


def fast_cifar(num_classes: int = 10, in_channels: int = 3, widths=(64, 256, 256)) -> FastCifar:
    """The fast CIFAR-10 network (see the module docstring for the layout, size and FLOPs).

    Args:
        num_classes: outputs of the bias-free final Linear.
        in_channels: channels of the 32x32 input images (3 for CIFAR-10).
        widths: channels of the three blocks; the stem has ``widths[0] // 2``.

    Returns a ``FastCifar`` (an ``nn.Sequential``) with children stem, block1, block2,
    block3, pool, flatten, fc: (N, in_channels, 32, 32) -> (N, num_classes).
    """
    num_classes, in_channels, (w1, w2, w3) = _check_args(num_classes, in_channels, widths)
    stem = w1 // 2
    layers = OrderedDict(
        stem=nn.Sequential(OrderedDict(conv=_conv3x3(in_channels, stem), bn=nn.BatchNorm2d(stem),
                                       relu=nn.ReLU())),
        block1=_block(stem, w1),
        block2=_block(w1, w2),
        block3=_block(w2, w3),
        pool=nn.MaxPool2d(4),
        flatten=nn.Flatten(),
        fc=nn.Linear(w3, num_classes, bias=False),
    )
    return FastCifar(layers, in_channels)


def fast_cifar_num_parameters(num_classes: int = 10, in_channels: int = 3, widths=(64, 256, 256)) -> int:
    """The parameter count of ``fast_cifar(num_classes, in_channels, widths)``, by the
    formula of the module docstring (1,978,016 with the defaults)."""
    num_classes, c, (w1, w2, w3) = _check_args(num_classes, in_channels, widths)
    h = w1 // 2
    convs = 9 * (c * h + h * w1 + w1 * w1 + w1 * w2 + w2 * w2 + w2 * w3 + w3 * w3)
    bns = 2 * (h + 2 * w1 + 2 * w2 + 2 * w3)
    return convs + bns + w3 * num_classes


def fast_cifar_flops(num_classes: int = 10, in_channels: int = 3, widths=(64, 256, 256)) -> int:
    """Forward FLOPs per image (2 x multiply-adds of the convs and the linear; BN, ReLU,
    pooling not counted) of ``fast_cifar(num_classes, in_channels, widths)``: 303,764,480
    with the defaults."""
    num_classes, c, (w1, w2, w3) = _check_args(num_classes, in_channels, widths)
    h = w1 // 2
    s = INPUT_SIZE * INPUT_SIZE  # pixels at full resolution; each block's conv2 runs at 1/4
    macs = 9 * (c * h * s
                + h * w1 * s + w1 * w1 * s // 4
                + w1 * w2 * s // 4 + w2 * w2 * s // 16
                + w2 * w3 * s // 16 + w3 * w3 * s // 64)
    return 2 * (macs + w3 * num_classes)
