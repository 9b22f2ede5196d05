"""The doctor's checks, one entry per op (``python -m gpukernels.doctor`` runs them).

Each entry names the op family, builds float64 inputs, and gives three ways to compute
the op: ours (the public ``gk`` path on the active backend), the naive oracle
(``gpukernels/reference/``, called directly on float64 arrays) and torch's, where there
is one. Adding an op family means adding its entry here (docs/adding-an-op.md).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable

import numpy as np

import gpukernels as gk
from gpukernels import functional as F

@dataclasses.dataclass(frozen=True)
class OpCheck:
    """One functional op, forward and backward.

    inputs: rng -> {name: float64 array}; float arrays are differentiable inputs (rounded
        to float32 values first, then to the backend dtype), integer ones constants.
    ours: the gk path, tensors -> Tensor, or (Tensor, [extra tensors]) for state the op
        updates (batch norm's running statistics).
    reference: float64 arrays -> (y, backward) or (y, backward, [extra arrays]), where
        ``backward(g)`` returns the gradients of the float inputs (reference modules
        called directly).
    torch: (torch, float64 torch tensors) -> tensor or (tensor, [extras]); None: no
        torch counterpart (dropout's mask is the library's own).
    grads: compare the backward too.  matmul: TF32 tolerance on cuda float32.
    precision: a fixed TOLERANCES key (``"exact"``) instead of the backend dtype's.
    needs_bf16: skipped where the backend has no bfloat16.
    """

    name: str
    family: str
    inputs: Callable
    ours: Callable
    reference: Callable
    torch: Callable | None = None
    grads: bool = True
    matmul: bool = False
    precision: str | None = None
    needs_bf16: bool = False


@dataclasses.dataclass(frozen=True)
class OptimCheck:
    """Two steps of an optimizer on a few parameters: ours (``gk.optim``) against the
    reference update functions and ``torch.optim``; the final parameters are compared.

    ours: params -> gk optimizer.  reference: (params, [grads per step]) -> None,
    updating the float64 arrays in place.  torch: (torch, params) -> torch optimizer."""

    name: str
    ours: Callable
    reference: Callable
    torch: Callable | None = None
    family: str = "optim"
    shapes: tuple = ((7,), (3, 5), (13,))
    steps: int = 2
    matmul: bool = False
    precision: str | None = None
    needs_bf16: bool = False


def _randn(*shape, scale=1.0):
    return lambda rng: {"x": rng.standard_normal(shape) * scale}


def _ref(name):
    return importlib.import_module(f"gpukernels.reference.{name}")


def _ref_activation(name, *params):
    """Reference forward/backward of an elementwise activation ``name``."""
    def run(x):
        act = _ref("activation")
        y = getattr(act, f"{name}_forward")(x, *params)
        return y, lambda g: [getattr(act, f"{name}_backward")(g, y, *params)]
    return run


def _ref_add_relu(a, b):
    act = _ref("activation")
    y = act.add_relu_forward(a, b)
    return y, lambda g: [act.relu_backward(g, y)] * 2


_CONV = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)


def _ref_conv(x, w, b):
    conv, args = _ref("conv"), (*_CONV.values(), "relu", 0.01)
    y = conv.conv2d_forward(x, w, b, *args)
    return y, lambda g: list(conv.conv2d_backward(g, x, w, y, *args))


def _ref_linear(x, w, b):
    lin = _ref("linear")
    return lin.linear_forward(x, w, b), lambda g: list(lin.linear_backward(g, x, w))


_POOL = dict(kernel=(3, 3), stride=(2, 2), padding=(1, 1))


def _ref_max_pool(x):
    pool = _ref("pool")
    y, argmax = pool.max_pool2d_forward(x, *_POOL.values(), (1, 1))
    return y, lambda g: [pool.max_pool2d_backward(g, argmax, x.shape, *_POOL.values(), (1, 1))]


def _ref_avg_pool(x):
    pool = _ref("pool")
    y = pool.avg_pool2d_forward(x, *_POOL.values(), False)
    return y, lambda g: [pool.avg_pool2d_backward(g, x.shape, *_POOL.values(), False)]


def _bn_inputs(rng):
    return {"x": rng.standard_normal((4, 6, 5, 3)) * 2 + 0.5,
            "weight": 1 + rng.standard_normal(6) / 4, "bias": rng.standard_normal(6)}


def _ours_bn(x, w, b):
    rm, rv = gk.zeros(x.shape[1], dtype=x.dtype), gk.ones(x.shape[1], dtype=x.dtype)
    return F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5), [rm, rv]


def _ref_bn(x, w, b):
    bn, rm, rv = _ref("batchnorm"), np.zeros(x.shape[1]), np.ones(x.shape[1])
    y, mean, inv_std = bn.batch_norm_forward(x, rm, rv, w, b, True, 0.1, 1e-5)
    return y, lambda g: list(bn.batch_norm_backward(g, x, mean, inv_std, w, True)), [rm, rv]


def _torch_bn(torch, x, w, b):
    rm = torch.zeros(x.shape[1], dtype=x.dtype)
    rv = torch.ones(x.shape[1], dtype=x.dtype)
    return torch.nn.functional.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5), [rm, rv]


def _ref_softmax(name, dim):
    def run(x):
        ce = _ref("cross_entropy")
        y = getattr(ce, f"{name}_forward")(x, dim)
        return y, lambda g: [getattr(ce, f"{name}_backward")(g, y, dim)]
    return run


def _ce_inputs(rng):
    target = rng.integers(0, 13, 7)
    target[2] = -100  # one ignored row
    return {"logits": rng.standard_normal((7, 13)) * 2, "target": target}


def _ref_ce(logits, target):
    ce = _ref("cross_entropy")
    loss, grad = ce.cross_entropy_forward(logits, target, "mean", -100, 0.1)
    return loss, lambda g: [ce.cross_entropy_backward(g, grad, "mean")]


def _ref_mse(x, t):
    loss_module = _ref("loss")
    loss, diff = loss_module.mse_loss_forward(x, t, "mean")
    def backward(g):
        gi = loss_module.mse_loss_backward(g, diff, "mean")
        return [gi, -gi]
    return loss, backward


def _ref_dropout(x):
    drop = _ref("dropout")
    y, mask = drop.dropout_forward(x, 0.3)  # the library generator, seeded as for ours
    return y, lambda g: [drop.dropout_backward(g, mask)]


def _ref_bf16_round_trip(x):
    cast = _ref("cast")
    def trip(a, dtype):
        return cast.cast(cast.cast(a.astype(np.float32), gk.bfloat16), dtype)
    return trip(x, np.float32), lambda g: [trip(g, np.float64)]


_ADAM = dict(lr=0.05, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)
_SGD = dict(lr=0.1, momentum=0.9, weight_decay=0.01)


def _ref_adam(params, steps):
    moments = [(np.zeros_like(p), np.zeros_like(p)) for p in params]
    hyper = dict(_ADAM, beta1=_ADAM["betas"][0], beta2=_ADAM["betas"][1])
    del hyper["betas"]
    for t, grads in enumerate(steps, 1):
        for p, g, (m, v) in zip(params, grads, moments):
            _ref("optim").adam_update(p, g, m, v, None, step=t, **hyper)


def _ref_sgd(params, steps):
    buffers = [np.zeros_like(p) for p in params]
    for t, grads in enumerate(steps, 1):
        for p, g, b in zip(params, grads, buffers):
            _ref("optim").sgd_update(p, g, b, first_step=t == 1, **_SGD)


def _tf(torch):
    return torch.nn.functional


CHECKS: list = [
    OpCheck("conv2d+bias+relu", "conv",
            lambda r: {"x": r.standard_normal((2, 3, 7, 9)), "weight": r.standard_normal((5, 3, 3, 3)) / 3,
                       "bias": r.standard_normal(5) / 2},
            lambda x, w, b: F.conv2d(x, w, b, padding=1, activation="relu"), _ref_conv,
            lambda t, x, w, b: t.relu(_tf(t).conv2d(x, w, b, padding=1)), matmul=True),
    OpCheck("linear", "linear",
            lambda r: {"x": r.standard_normal((7, 13)), "weight": r.standard_normal((5, 13)) / 4,
                       "bias": r.standard_normal(5)},
            F.linear, _ref_linear, lambda t, x, w, b: _tf(t).linear(x, w, b), matmul=True),
    OpCheck("relu", "activation", _randn(3, 5, 7), F.relu, _ref_activation("relu"), lambda t, x: t.relu(x)),
    OpCheck("leaky_relu", "activation", _randn(3, 5, 7), lambda x: F.leaky_relu(x, 0.1),
            _ref_activation("leaky_relu", 0.1), lambda t, x: _tf(t).leaky_relu(x, 0.1)),
    OpCheck("sigmoid", "activation", _randn(3, 5, 7, scale=3), F.sigmoid, _ref_activation("sigmoid"),
            lambda t, x: t.sigmoid(x)),
    OpCheck("tanh", "activation", _randn(3, 5, 7, scale=2), F.tanh, _ref_activation("tanh"),
            lambda t, x: t.tanh(x)),
    OpCheck("add_relu", "activation", lambda r: {"a": r.standard_normal((3, 5, 7)), "b": r.standard_normal((3, 5, 7))},
            F.add_relu, _ref_add_relu, lambda t, a, b: t.relu(a + b)),
    OpCheck("heaviside (forward)", "activation", lambda r: {"x": np.round(r.standard_normal((3, 5, 7)))},
            lambda x: F.heaviside(x, 0.5), lambda x: (_ref("activation").heaviside_forward(x, 0.5), None),
            lambda t, x: t.heaviside(x, t.tensor(0.5, dtype=x.dtype)), grads=False),
    OpCheck("max_pool2d 3/2/1", "pool", _randn(2, 5, 7, 9), lambda x: F.max_pool2d(x, 3, 2, 1), _ref_max_pool,
            lambda t, x: _tf(t).max_pool2d(x, 3, 2, 1)),
    OpCheck("avg_pool2d 3/2/1", "pool", _randn(2, 5, 7, 9),
            lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False), _ref_avg_pool,
            lambda t, x: _tf(t).avg_pool2d(x, 3, 2, 1, count_include_pad=False)),
    OpCheck("batch_norm train", "batchnorm", _bn_inputs, _ours_bn, _ref_bn, _torch_bn),
    OpCheck("softmax", "cross_entropy", _randn(7, 13, scale=2), lambda x: F.softmax(x, 1),
            _ref_softmax("softmax", 1), lambda t, x: t.softmax(x, 1)),
    OpCheck("log_softmax", "cross_entropy", _randn(7, 13, scale=2), lambda x: F.log_softmax(x, -1),
            _ref_softmax("log_softmax", 1), lambda t, x: t.log_softmax(x, -1)),
    OpCheck("cross_entropy", "cross_entropy", _ce_inputs,
            lambda x, t: F.cross_entropy(x, t, label_smoothing=0.1), _ref_ce,
            lambda t, x, y: _tf(t).cross_entropy(x, y, label_smoothing=0.1)),
    OpCheck("mse_loss", "loss", lambda r: {"input": r.standard_normal((7, 13)), "target": r.standard_normal((7, 13))},
            F.mse_loss, _ref_mse, lambda t, x, y: _tf(t).mse_loss(x, y)),
    OpCheck("dropout p=0.3", "dropout", _randn(3, 5, 7), lambda x: F.dropout(x, 0.3), _ref_dropout),
    OpCheck("cast bf16 round trip", "cast", _randn(3, 5, 7, scale=3),
            lambda x: x.to(gk.bfloat16).to(gk.float32), _ref_bf16_round_trip,
            lambda t, x: x.to(t.bfloat16).to(t.float32), precision="exact", needs_bf16=True),
    OptimCheck("adam (2 steps)", lambda ps: gk.optim.Adam(ps, **_ADAM), _ref_adam,
               lambda t, ps: t.optim.Adam(ps, **_ADAM)),
    OptimCheck("sgd momentum (2 steps)", lambda ps: gk.optim.SGD(ps, **_SGD), _ref_sgd,
               lambda t, ps: t.optim.SGD(ps, **_SGD)),
]

