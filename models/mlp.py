"""Perceptrons and multi-layer perceptrons: from Rosenblatt's step unit to MLP classifiers.

- ``Perceptron``: Rosenblatt's (1958) single threshold unit, trained with the perceptron
  rule. It learns any linearly separable problem (AND, OR) and cannot learn XOR.
- ``xor_mlp`` / ``train_xor``: one hidden layer is enough for XOR, trained by backprop.
- ``mlp``: a plain fully connected classifier for any input shape (``--model mlp``).
"""

from __future__ import annotations

import math

import numpy as np

import gpukernels as gk
from gpukernels import functional as F
from gpukernels import nn

#: the four XOR inputs, (4, 2) float32, and their labels x0 xor x1, (4,) int64
XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
XOR_Y = np.array([0, 1, 1, 0], dtype=np.int64)


def _host(x, dtype=None) -> np.ndarray:
    arr = x.numpy() if isinstance(x, gk.Tensor) else np.asarray(x)
    return arr if dtype is None else arr.astype(dtype)


class Perceptron:
    """Rosenblatt's perceptron: ``y_hat = heaviside(x @ w + b)``, one output in {0, 1}.

    Training is the perceptron learning rule, applied online, one sample at a time::

        w += lr * (y - y_hat) * x        b += lr * (y - y_hat)

    It changes the weights only on a mistake, and needs no gradient (the step function
    has none: its derivative is 0 almost everywhere), so it does not use autograd.

    By the perceptron convergence theorem the rule stops making mistakes after finitely
    many updates on any *linearly separable* data set, e.g. AND and OR. XOR is not
    linearly separable (no line puts (0,1), (1,0) on one side and (0,0), (1,1) on the
    other), so on XOR the rule never converges: the weights cycle, every epoch makes
    mistakes, and at best 3 of the 4 points are classified correctly. That limit
    (Minsky & Papert, 1969) is what a hidden layer removes; see ``xor_mlp``.

    Args:
        in_features: length of each input vector.
        seed: seeds the small random initial weights (N(0, 0.01^2)); the bias starts at 0.

    Shapes: ``x`` is (N, in_features); ``predict`` returns (N,) of 0.0 / 1.0.
    """

    def __init__(self, in_features: int, seed: int = 0):
        if not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"Perceptron: in_features must be a positive int, got {in_features!r}")
        self.in_features = in_features
        rng = np.random.default_rng(seed)
        # plain (non-Parameter) tensors: nothing here is differentiated
        self.weight = gk.tensor(rng.normal(0.0, 0.01, in_features).astype(np.float32))
        self.bias = gk.tensor(np.zeros((), np.float32))

    def _check(self, x) -> gk.Tensor:
        x = gk.tensor(_host(x, np.float32))
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"Perceptron({self.in_features}): expected inputs of shape (N, {self.in_features}), "
                f"got {x.shape}"
            )
        return x

    def predict(self, x) -> gk.Tensor:
        """heaviside(x @ w + b): 1.0 where the weighted sum is positive, else 0.0 (at
        exactly 0 the unit does not fire)."""
        x = self._check(x)
        return F.heaviside(x @ self.weight + self.bias, 0.0)

    def score(self, x, y) -> float:
        """Fraction of the samples whose prediction equals the label."""
        return float((self.predict(x).numpy() == _host(y)).mean())

    def fit(self, x, y, epochs: int = 100, lr: float = 1.0) -> list[int]:
        """Run the perceptron rule over the samples in order, ``epochs`` times at most.

        Returns the number of mistakes in each epoch that ran; it stops after the first
        epoch without a mistake (the data are then separated), so on separable data the
        last entry is 0 and on XOR the list has ``epochs`` non-zero entries.
        """
        x = self._check(x)
        y = _host(y).astype(np.float32).reshape(-1)
        if y.shape[0] != x.shape[0] or not np.isin(y, (0, 1)).all():
            raise ValueError(f"Perceptron.fit: y must hold {x.shape[0]} labels in {{0, 1}}, got {y!r}")
        if epochs < 1 or not lr > 0:
            raise ValueError(f"Perceptron.fit: epochs must be >= 1 and lr > 0, got epochs={epochs}, lr={lr}")
        errors = []
        for _ in range(epochs):
            mistakes = 0
            for i in range(x.shape[0]):
                xi = x[i : i + 1]
                err = float(y[i] - self.predict(xi).item())
                if err != 0.0:
                    # in place on the arrays: a learning rule, not an autograd step
                    self.weight.data += np.float32(lr * err) * xi.data[0]
                    self.bias.data += np.float32(lr * err)
                    mistakes += 1
            errors.append(mistakes)
            if mistakes == 0:
                break
        return errors


def xor_mlp(hidden: int = 8, seed: int | None = 0) -> nn.Sequential:
    """A 2-hidden-2 MLP for XOR: Linear(2, hidden) - Tanh - Linear(hidden, 2).

    (N, 2) inputs -> (N, 2) logits (class 0/1, for cross-entropy). The hidden layer bends
    the input space so that XOR becomes linearly separable for the output layer.
    ``seed`` seeds the library generator before the default (PyTorch) initialisation;
    ``None`` leaves the generator as it is.
    """
    if seed is not None:
        gk.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 2))


def train_xor(model: nn.Module | None = None, epochs: int = 300, lr: float = 0.05, seed: int = 0):
    """Train ``model`` (default ``xor_mlp(seed=seed)``) on the 4 XOR points with Adam and
    cross-entropy, full batch.

    Returns ``(model, accuracy, losses)``: the trained model, its accuracy on the four
    points (1.0 once solved) and the loss of every step. It stops early once all four
    points are right and the loss is below 0.05.
    """
    if model is None:
        model = xor_mlp(seed=seed)
    opt = gk.optim.Adam(model.parameters(), lr=lr)
    x, y = gk.tensor(XOR_X), gk.tensor(XOR_Y)
    losses = []
    for _ in range(epochs):
        opt.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if losses[-1] < 0.05 and (logits.argmax(1).numpy() == XOR_Y).all():
            break
    with gk.no_grad():
        accuracy = float((model(x).argmax(1).numpy() == XOR_Y).mean())
    return model, accuracy, losses


def mlp(in_shape, num_classes: int = 10, hidden=(128,)) -> nn.Sequential:
    """Flatten - [Linear - ReLU] per hidden width - Linear, for inputs of any shape.

    ``in_shape`` is one sample's shape without the batch, e.g. (1, 8, 8) digits,
    (1, 28, 28) MNIST, (3, 32, 32) CIFAR-10, or an int feature count. Input
    (N, *in_shape) -> (N, num_classes) logits. ``hidden=()`` gives a linear classifier.
    """
    shape = (in_shape,) if isinstance(in_shape, int) else tuple(in_shape)
    if not shape or any(not isinstance(d, (int, np.integer)) or d < 1 for d in shape):
        raise ValueError(f"mlp: in_shape must be positive sizes, got {in_shape!r}")
    widths = [math.prod(shape), *hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], num_classes))
    return nn.Sequential(*layers)
