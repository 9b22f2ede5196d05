"""Convolutional networks sized for the bundled 8x8 digits, MNIST and CIFAR-10.

Every conv is 3x3 with padding 1 (keeps H x W) and its ReLU fused into the conv kernel
(``activation="relu"``: one pass over the activations fewer); every 2x2 max pool halves
H and W. ``cnn_for(in_shape)`` picks the network for an input shape.
"""

from __future__ import annotations

from gpukernels import nn


def digits_cnn(channels=(16, 32), num_classes: int = 10) -> nn.Sequential:
    """conv3x3-ReLU-maxpool twice, then a linear classifier, for (N, 1, 8, 8) digits.

    The ReLU is fused into the convolution (``activation="relu"``): one pass fewer.
    8x8 -> pool -> 4x4 -> pool -> 2x2, so the classifier sees channels[1] * 4 features.
    """
    c1, c2 = channels
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1, activation="relu"),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1, activation="relu"),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * 4, num_classes),
    )


def mnist_cnn(num_classes: int = 10) -> nn.Sequential:
    """For (N, 1, 28, 28) MNIST; about 0.42M parameters (most in the first Linear).

    ::

        (N, 1, 28, 28)  conv3x3(1->32)+ReLU   (N, 32, 28, 28)  maxpool2 -> (N, 32, 14, 14)
                        conv3x3(32->64)+ReLU  (N, 64, 14, 14)  maxpool2 -> (N, 64, 7, 7)
        flatten (N, 3136) - Linear(3136, 128) - ReLU - Linear(128, num_classes)
    """
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, activation="relu"),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, activation="relu"),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def cifar_cnn(num_classes: int = 10) -> nn.Sequential:
    """For (N, 3, 32, 32) CIFAR-10: three conv-ReLU-pool stacks; about 0.36M parameters.

    ::

        (N, 3, 32, 32)  conv3x3(3->32)+ReLU    maxpool2 -> (N, 32, 16, 16)
                        conv3x3(32->64)+ReLU   maxpool2 -> (N, 64, 8, 8)
                        conv3x3(64->128)+ReLU  maxpool2 -> (N, 128, 4, 4)
        flatten (N, 2048) - Linear(2048, 128) - ReLU - Linear(128, num_classes)
    """
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, activation="relu"),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, activation="relu"),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1, activation="relu"),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128 * 4 * 4, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


#: one sample's shape (C, H, W) -> the CNN built for it
CNN_FOR_SHAPE = {
    (1, 8, 8): digits_cnn,
    (1, 28, 28): mnist_cnn,
    (3, 32, 32): cifar_cnn,
}


def cnn_for(in_shape, num_classes: int = 10) -> nn.Sequential:
    """The CNN for one sample's shape (C, H, W): (1, 8, 8) digits, (1, 28, 28) MNIST,
    (3, 32, 32) CIFAR-10. Any other shape is a ``ValueError`` naming it."""
    shape = tuple(int(d) for d in in_shape)
    if shape not in CNN_FOR_SHAPE:
        known = ", ".join(map(str, CNN_FOR_SHAPE))
        raise ValueError(f"cnn_for: no CNN for input shape {shape}; known shapes: {known}")
    return CNN_FOR_SHAPE[shape](num_classes=num_classes)
