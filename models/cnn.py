"""Convolutional networks sized for the bundled 8x8 digits."""

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
