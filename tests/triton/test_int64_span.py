"""int64 offsets decided by memory span, not element count: every Triton family on views
of a few dozen elements whose shape and strides reach past 2**31 elements (a row stride
of 2**30 in a lazily allocated ``np.zeros``: only the touched pages exist), forward and
backward through ``gk.functional``, against the same ops on a contiguous copy with the
NumPy backend. With int32 offsets the interpreter reads and writes out of bounds
(a segfault, or wrong values)."""

from __future__ import annotations

import numpy as np
import pytest

import gpukernels as gk
from gpukernels import backend
from gpukernels import functional as F
from tests.helpers import assert_close

pytestmark = pytest.mark.skipif(not backend.interpreting(), reason="needs TRITON_INTERPRET=1")

ROW = 2**30  # elements between rows: 3 rows span 2**31 + a few


def _wide_view(shape, seed):
    """A float32 view of ``shape`` (first axis 3) over rows 2**30 elements apart, filled."""
    base = np.zeros((3, ROW), np.float32)
    inner = int(np.prod(shape[1:]))
    v = base[:, :inner].reshape(shape)
    v[...] = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    assert v.strides[0] == ROW * 4 and not v.flags.c_contiguous
    return v


def _ops():
    w = np.random.default_rng(1).standard_normal((2, 2, 3, 3)).astype(np.float32)
    lw = np.random.default_rng(2).standard_normal((5, 16)).astype(np.float32)
    t16 = np.array([1, 0, 15])
    return {
        "conv2d": ((3, 2, 4, 4), lambda x: F.conv2d(x, gk.tensor(w), padding=1, activation="relu")),
        "max_pool2d": ((3, 2, 4, 4), lambda x: F.max_pool2d(x, 2)),
        "max_pool2d 3/2/1": ((3, 2, 4, 4), lambda x: F.max_pool2d(x, 3, 2, 1)),
        "avg_pool2d": ((3, 2, 4, 4), lambda x: F.avg_pool2d(x, 3, 1, 1)),
        "linear": ((3, 16), lambda x: F.linear(x, gk.tensor(lw))),
        "batch_norm": ((3, 2, 4, 4), lambda x: F.batch_norm(x, None, None, training=True)),
        "relu": ((3, 2, 4, 4), F.relu),
        "sigmoid": ((3, 16), F.sigmoid),
        "softmax": ((3, 16), lambda x: F.softmax(x, 1)),
        "log_softmax dim 0": ((3, 16), lambda x: F.log_softmax(x, 0)),
        "cross_entropy": ((3, 16), lambda x: F.cross_entropy(x, gk.tensor(t16), reduction="none")),
        "mse_loss": ((3, 16), lambda x: F.mse_loss(x, gk.tensor(np.ones((3, 16), np.float32)), reduction="none")),
        "add_relu": ((3, 2, 4, 4), lambda x: F.add_relu(x, x)),
    }


@pytest.mark.parametrize("name", list(_ops()))
def test_a_view_spanning_past_2_31_elements(name):
    shape, op = _ops()[name]
    view = _wide_view(shape, seed=len(name))
    g = np.random.default_rng(7).standard_normal(op(gk.tensor(np.ascontiguousarray(view))).shape).astype(np.float32)

    def run(x):
        y = op(x)
        y.backward(gk.tensor(g))
        return y.numpy(), x.grad.numpy()

    y_ref, dx_ref = run(gk.tensor(np.ascontiguousarray(view), requires_grad=True))  # numpy backend
    gk.set_backend("interpret")
    x = gk.Tensor(view, requires_grad=True)
    assert x.data.strides == view.strides  # the kernels see the wide view itself
    y, dx = run(x)
    assert_close(y, y_ref, atol=1e-5, rtol=1e-4, name=f"{name} forward on a wide view")
    assert_close(dx, dx_ref, atol=1e-5, rtol=1e-4, name=f"{name} backward on a wide view")
