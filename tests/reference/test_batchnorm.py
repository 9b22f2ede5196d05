"""gpukernels.reference.batchnorm against torch.nn.functional.batch_norm in float64:
output, running statistics (updated in place) and the three gradients for one random
upstream gradient; training and eval, with and without the affine parameters and the
running statistics, (N, C), (N, C, L) and (N, C, H, W) inputs, a channel mean far from
zero, and the ``needs`` flags; float32 in, float32 out."""

from __future__ import annotations

import numpy as np
import pytest

from gpukernels.reference import batchnorm
from tests.helpers import assert_close
from tests.reference.common import ATOL, RTOL, torch, torch_run

F = torch.nn.functional

SHAPES = [(7, 3), (4, 2, 5), (3, 4, 5, 7), (1, 3, 1, 2), (5, 1, 3, 3)]


def _problem(shape, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = rng.standard_normal(shape) * 2.5 + offset
    return x, rng.standard_normal(c), rng.standard_normal(c), rng.standard_normal(c), rng.random(c) + 0.5


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_matches_torch(shape, training, affine):
    x, w, b, rm, rv = _problem(shape)
    if not affine:
        w = b = None
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    y_ref, g, (gx_ref, gw_ref, gb_ref) = torch_run(
        lambda tx, tw, tb: F.batch_norm(tx, trm, trv, tw, tb, training, 0.1, 1e-5), x, w, b)
    y, mean, inv_std = batchnorm.batch_norm_forward(x, rm, rv, w, b, training, 0.1, 1e-5)
    assert_close(y, y_ref, atol=ATOL, rtol=RTOL, name="y")
    assert_close(rm, trm, atol=1e-12, rtol=1e-12, name="running_mean")
    assert_close(rv, trv, atol=1e-12, rtol=1e-12, name="running_var")
    gx, gw, gb = batchnorm.batch_norm_backward(g, x, mean, inv_std, w, training)
    assert_close(gx, gx_ref, atol=ATOL, rtol=RTOL, name="grad_x")
    if affine:
        assert_close(gw, gw_ref, atol=ATOL, rtol=RTOL, name="grad_weight")
        assert_close(gb, gb_ref, atol=ATOL, rtol=RTOL, name="grad_bias")


def test_without_running_statistics_and_far_from_zero():
    x, w, b, _, _ = _problem((6, 3, 4, 5), seed=1, offset=1000.0)
    y_ref, g, grads_ref = torch_run(lambda tx, tw, tb: F.batch_norm(tx, None, None, tw, tb, True, 0.1, 1e-5), x, w, b)
    y, mean, inv_std = batchnorm.batch_norm_forward(x, None, None, w, b, True, 0.1, 1e-5)
    assert_close(y, y_ref, atol=ATOL, rtol=RTOL, name="y")
    for name, got, want in zip(("grad_x", "grad_weight", "grad_bias"),
                               batchnorm.batch_norm_backward(g, x, mean, inv_std, w, True), grads_ref):
        assert_close(got, want, atol=ATOL, rtol=RTOL, name=name)


def test_running_statistics_views_are_updated_in_place():
    x, w, b, _, _ = _problem((4, 3, 5), seed=2)
    store = np.stack([np.zeros(6), np.ones(6)])
    rm, rv = store[0, ::2], store[1, ::2]
    batchnorm.batch_norm_forward(x, rm, rv, w, b, True, 0.3, 1e-5)
    trm, trv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    F.batch_norm(torch.tensor(x), trm, trv, None, None, True, 0.3, 1e-5)
    assert_close(store[0, ::2], trm, atol=1e-12, rtol=1e-12, name="running_mean view")
    assert_close(store[1, ::2], trv, atol=1e-12, rtol=1e-12, name="running_var view")
    assert np.all(store[0, 1::2] == 0) and np.all(store[1, 1::2] == 1)


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, True), (False, False, False)])
def test_needs_flags(needs):
    x, w, b, rm, rv = _problem((3, 2, 4), seed=3)
    _, mean, inv_std = batchnorm.batch_norm_forward(x, rm, rv, w, b, True, 0.1, 1e-5)
    g = np.random.default_rng(4).standard_normal(x.shape)
    full = batchnorm.batch_norm_backward(g, x, mean, inv_std, w, True)
    for want, got, ref in zip(needs, batchnorm.batch_norm_backward(g, x, mean, inv_std, w, True, needs), full):
        assert (got is None) == (not want)
        if want:
            np.testing.assert_array_equal(got, ref)


def test_float32_in_float32_out():
    x, w, b, rm, rv = (a.astype(np.float32) for a in _problem((4, 3, 2, 2), seed=5))
    y, mean, inv_std = batchnorm.batch_norm_forward(x, rm, rv, w, b, True, 0.1, 1e-5)
    grads = batchnorm.batch_norm_backward(np.ones_like(y), x, mean, inv_std, w, True)
    assert {a.dtype for a in (y, mean, inv_std, rm, rv, *grads)} == {np.dtype(np.float32)}
