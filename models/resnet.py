"""CIFAR-style ResNets (He, Zhang, Ren & Sun, "Deep Residual Learning for Image
Recognition", CVPR 2016, section 4.2), built from ``nn.Residual`` so that the skip
connections are ordinary modules: visible in ``repr``/``state_dict`` and mirrored by
``benchmarks.torch_twin``.

Architecture of ``resnet(depth)``, depth = 6n + 2 (n blocks per stage, 2 convs per
block, plus the stem conv and the classifier), for (N, C, H, W) inputs::

    conv1  conv3x3(C -> 16) - BN - ReLU                    (N, 16, H, W)
    layer1 n x BasicBlock(16 -> 16, stride 1)              (N, 16, H, W)
    layer2 n x BasicBlock(32, first with stride 2)         (N, 32, H/2, W/2)
    layer3 n x BasicBlock(64, first with stride 2)         (N, 64, H/4, W/4)
    avgpool AdaptiveAvgPool2d(1) - flatten                 (N, 64)
    fc     Linear(64, num_classes)                         (N, num_classes)

(H/2 means ceil(H/2): the stride-2 3x3 convs pad by 1.) The global average pool adapts
to any input size, so the same network takes 32x32 CIFAR, 28x28 MNIST (28 -> 14 -> 7)
and 8x8 digits (8 -> 4 -> 2) with ``in_channels=1``.

Shortcuts are "option B" of the paper: the identity where the shape is unchanged, a
1x1 conv with stride (no bias) + BN projection where the block changes the channels or
the resolution. With widths (16, 32, 64) and 10 classes: resnet8 has 78,042 parameters,
resnet20 272,474 (the paper's "0.27M").

Initialisation: as torchvision's ResNets: conv weights Kaiming-normal with
``mode="fan_out"``, ``nonlinearity="relu"`` (std = sqrt(2 / (out_channels * 9)));
BN weight 1 and bias 0; the final Linear keeps PyTorch's default
(U(+-1/sqrt(fan_in)) for weight and bias).
"""

from __future__ import annotations

from collections import OrderedDict

from gpukernels import nn


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 conv, padding 1, no bias: a BN follows, whose shift makes a bias redundant."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Sequential):
    """relu(F(x) + shortcut(x)), F = conv3x3(stride) - BN - ReLU - conv3x3 - BN.

    A ``Sequential`` of one ``residual = nn.Residual(body, shortcut, activation="relu")``,
    so that it is a plain composition of library modules (``torch_twin`` mirrors it) and
    the parameter names stay ``layerK.i.residual.body.conv1.weight`` etc. The sum and
    the block's ReLU run fused (``F.add_relu``): one pass reading both branches and
    writing the output, instead of an add pass plus a ReLU pass; so do BN - ReLU
    (``nn.BatchNorm2d(..., activation="relu")``, the ReLU applied in batch norm's own
    output pass).
    (N, in_channels, H, W) -> (N, out_channels, ceil(H / stride), ceil(W / stride)).
    The shortcut is the identity (``None``) when the shape is kept, else a 1x1 conv with
    ``stride`` (no bias) + BN projection (option B).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        body = nn.Sequential(OrderedDict(
            conv1=conv3x3(in_channels, out_channels, stride),
            bn1=nn.BatchNorm2d(out_channels, activation="relu"),  # BN - ReLU in one pass
            conv2=conv3x3(out_channels, out_channels),
            bn2=nn.BatchNorm2d(out_channels),
        ))
        shortcut = None
        if stride != 1 or in_channels != out_channels:
            shortcut = nn.Sequential(OrderedDict(
                conv=nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                bn=nn.BatchNorm2d(out_channels),
            ))
        super().__init__(OrderedDict(residual=nn.Residual(body, shortcut, activation="relu")))
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


def _init_weights(model: nn.Module) -> None:
    # torchvision's ResNet init: Kaiming normal (fan_out) for convs; BN already 1 / 0
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


def resnet(depth: int, num_classes: int = 10, in_channels: int = 3, widths=(16, 32, 64)) -> nn.Sequential:
    """The CIFAR ResNet of ``depth`` = 6n + 2 layers (see the module docstring).

    Args:
        depth: 8, 14, 20, 32, 44, 56, 110, ... (n = (depth - 2) / 6 blocks per stage).
        num_classes: outputs of the final Linear.
        in_channels: 3 for CIFAR-10, 1 for MNIST / digits.
        widths: channels of the three stages (the paper's 16, 32, 64); the stem has
            ``widths[0]`` channels.

    Returns an ``nn.Sequential`` with torchvision's top-level names (conv1, bn1, relu,
    layer1..3, avgpool, flatten, fc): (N, in_channels, H, W) -> (N, num_classes).
    """
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"resnet: depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, ...), got {depth!r}")
    if len(widths) != 3:
        raise ValueError(f"resnet: widths must give the channels of 3 stages, got {widths!r}")
    n = (depth - 2) // 6
    stages = OrderedDict()
    channels = widths[0]
    for i, (width, stride) in enumerate(zip(widths, (1, 2, 2)), start=1):
        # only the first block of a stage changes the resolution / channels
        blocks = [BasicBlock(channels, width, stride)] + [BasicBlock(width, width) for _ in range(n - 1)]
        stages[f"layer{i}"] = nn.Sequential(*blocks)
        channels = width
    model = nn.Sequential(OrderedDict(
        conv1=conv3x3(in_channels, widths[0]),
        bn1=nn.BatchNorm2d(widths[0], activation="relu"),
        **stages,
        avgpool=nn.AdaptiveAvgPool2d(1),
        flatten=nn.Flatten(),
        fc=nn.Linear(widths[2], num_classes),
    ))
    _init_weights(model)
    return model


def resnet8(num_classes: int = 10, in_channels: int = 3, widths=(16, 32, 64)) -> nn.Sequential:
    """ResNet-8 (n = 1 block per stage); 78,042 parameters with the default sizes."""
    return resnet(8, num_classes, in_channels, widths)


def resnet20(num_classes: int = 10, in_channels: int = 3, widths=(16, 32, 64)) -> nn.Sequential:
    """ResNet-20 (n = 3 blocks per stage); 272,474 parameters with the default sizes."""
    return resnet(20, num_classes, in_channels, widths)
