"""Under the `interpret` backend every functional op of DESIGN.md runs on a Triton kernel
(no silent fallback to NumPy: `backend.last_dispatch` names the module that ran) and
matches the NumPy backend, forward and backward."""

from __future__ import annotations

import numpy as np
import pytest

import gpukernels as gk
from gpukernels import backend
from gpukernels import functional as F
from tests.helpers import assert_close

pytestmark = pytest.mark.skipif(not backend.interpreting(), reason="needs TRITON_INTERPRET=1")

rng = np.random.default_rng(0)
X4 = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
W4 = (rng.standard_normal((4, 3, 3, 3)) / 5).astype(np.float32)
B4 = rng.standard_normal(4).astype(np.float32)
X2 = rng.standard_normal((5, 7)).astype(np.float32)
WL = (rng.standard_normal((3, 7)) / 3).astype(np.float32)
BL = rng.standard_normal(3).astype(np.float32)
T5 = np.array([0, 2, 1, 6, 3])
GAMMA, BETA = (1 + rng.standard_normal(3) / 4).astype(np.float32), rng.standard_normal(3).astype(np.float32)

# (op, family, function of gk tensors -> output, inputs)
OPS = [
    ("conv2d", "conv", lambda x, w, b: F.conv2d(x, w, b, padding=1, activation="relu"), (X4, W4, B4)),
    ("linear", "linear", F.linear, (X2, WL, BL)),
    ("relu", "activation", F.relu, (X4,)),
    ("add_relu", "activation", F.add_relu, (X4, X4[:, ::-1].copy())),
    ("leaky_relu", "activation", lambda x: F.leaky_relu(x, 0.1), (X4,)),
    ("sigmoid", "activation", F.sigmoid, (X4,)),
    ("tanh", "activation", F.tanh, (X4,)),
    ("heaviside", "activation", lambda x: F.heaviside(x, 0.5), (X4,)),
    ("max_pool2d", "pool", lambda x: F.max_pool2d(x, 2), (X4,)),
    ("avg_pool2d", "pool", lambda x: F.avg_pool2d(x, 3, 2, 1), (X4,)),
    ("batch_norm", "batchnorm",
     lambda x, w, b: F.batch_norm(x, gk.zeros(3), gk.ones(3), w, b, training=True), (X4, GAMMA, BETA)),
    ("softmax", "cross_entropy", lambda x: F.softmax(x, 1), (X2,)),
    ("log_softmax", "cross_entropy", lambda x: F.log_softmax(x, -1), (X2,)),
    ("cross_entropy", "cross_entropy", lambda x: F.cross_entropy(x, gk.tensor(T5), label_smoothing=0.1), (X2,)),
    ("mse_loss", "loss", lambda x: F.mse_loss(x, gk.tensor(X2[::-1].copy())), (X2,)),
    ("dropout", "dropout", lambda x: F.dropout(x, 0.3, training=True), (X4,)),
]


def _run(fn, arrays, backend_name, differentiable=True):
    gk.set_backend(backend_name)
    gk.manual_seed(3)  # dropout draws the same mask on both backends
    inputs = [gk.tensor(a, requires_grad=differentiable) for a in arrays]
    out = fn(*inputs)
    if not differentiable:
        return out.numpy(), []
    upstream = np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)
    out.backward(gk.tensor(upstream))
    return out.numpy(), [t.grad.numpy() for t in inputs]


@pytest.mark.parametrize("name, family, fn, arrays", OPS, ids=[o[0] for o in OPS])
def test_op_runs_its_triton_kernel_and_matches_numpy(name, family, fn, arrays):
    differentiable = name != "heaviside"  # a step function: no gradient to compare
    out, grads = _run(fn, arrays, "interpret", differentiable)
    assert backend.last_dispatch[family] == f"gpukernels.triton.{family}", f"{name} did not run Triton"
    ref_out, ref_grads = _run(fn, arrays, "numpy", differentiable)
    assert backend.last_dispatch[family] == f"gpukernels.cpu.{family}"
    assert_close(out, ref_out, atol=1e-5, rtol=1e-4, name=f"{name} forward")
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        assert_close(g, r, atol=1e-5, rtol=1e-4, name=f"{name} grad {i}")


def test_every_family_of_the_reference_has_a_triton_module():
    import pkgutil

    import gpukernels.cpu as ref

    families = {m.name for m in pkgutil.iter_modules(ref.__path__) if not m.name.startswith("_")}
    from gpukernels import kernels

    missing = sorted(families - set(kernels.FAMILIES))
    assert not missing, f"reference families without a Triton module: {missing}"
