"""gpukernels.reference.cross_entropy against torch in float64: softmax and log-softmax
along every dim of a 3-D input, and softmax cross-entropy (every reduction, ignored
rows, label smoothing, one class, logits of 1e4, every row ignored) with the gradient
the forward returns scaled by one random upstream gradient; and the bad-index error."""

from __future__ import annotations

import numpy as np
import pytest

from gpukernels.reference import cross_entropy as ce
from tests.helpers import assert_close
from tests.reference.common import ATOL, RTOL, torch, torch_run

F = torch.nn.functional


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_and_log_softmax_match_torch(name, dim):
    x = np.random.default_rng(0).standard_normal((3, 5, 7)) * 4
    y_ref, g, (gx_ref,) = torch_run(lambda t: getattr(F, name)(t, dim=dim), x)
    y = getattr(ce, f"{name}_forward")(x, dim)
    assert_close(y, y_ref, atol=ATOL, rtol=RTOL, name=f"{name} y")
    assert_close(getattr(ce, f"{name}_backward")(g, y, dim), gx_ref, atol=ATOL, rtol=RTOL, name=f"{name} dx")


CASES = [  # (N, C, targets or None for random, ignore_index, label_smoothing, scale)
    (7, 5, None, -100, 0.0, 1.0),
    (6, 4, [0, 3, -100, 2, -100, 1], -100, 0.1, 1.0),
    (5, 3, [2, 2, 1, 0, 2], 2, 0.25, 3.0),  # ignore_index is a class
    (4, 1, [0, 0, 0, 0], -100, 0.2, 1.0),  # one class
    (3, 6, [5, 0, 3], -100, 0.0, 1e4),  # logits of 1e4: no overflow
    (1, 9, [4], -100, 1.0, 1.0),
]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", CASES, ids=[f"n{c[0]}c{c[1]}eps{c[4]}x{c[5]:g}" for c in CASES])
def test_cross_entropy_matches_torch(case, reduction):
    n, c, targets, ignore, eps, scale = case
    rng = np.random.default_rng(1)
    z = rng.standard_normal((n, c)) * scale
    t = rng.integers(0, c, n) if targets is None else np.array(targets)
    tt = torch.tensor(t)
    loss_ref, g, (gz_ref,) = torch_run(
        lambda tz: F.cross_entropy(tz, tt, reduction=reduction, ignore_index=ignore, label_smoothing=eps), z)
    loss, grad = ce.cross_entropy_forward(z, t, reduction, ignore, eps)
    assert np.shape(loss) == np.shape(loss_ref) and np.asarray(loss).dtype == np.float64
    assert_close(loss, loss_ref, atol=ATOL, rtol=RTOL, name="loss")
    gz = ce.cross_entropy_backward(np.asarray(g), grad, reduction)
    assert_close(gz, gz_ref, atol=ATOL, rtol=RTOL, name="grad_logits")


def test_every_row_ignored_gives_nan_mean_and_zero_gradient():
    z = np.random.default_rng(2).standard_normal((3, 4))
    loss, grad = ce.cross_entropy_forward(z, np.full(3, -100), "mean", -100, 0.1)
    assert np.isnan(loss) and not grad.any()
    ref = F.cross_entropy(torch.tensor(z), torch.full((3,), -100), ignore_index=-100, label_smoothing=0.1)
    assert torch.isnan(ref)


@pytest.mark.parametrize("bad", [-1, 4, 7])
def test_a_target_that_is_no_class_is_refused_by_name(bad):
    z = np.zeros((3, 4))
    with pytest.raises(ValueError, match=rf"cross_entropy: target\[1\] = {bad} is not a class index in \[0, 4\) "
                                         r"nor ignore_index=-100"):
        ce.cross_entropy_forward(z, np.array([0, bad, 1]), "mean", -100, 0.0)


def test_float32_in_float32_out():
    z = np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32)
    for reduction in ("mean", "sum", "none"):
        loss, grad = ce.cross_entropy_forward(z, np.array([0, 1, 2, 0]), reduction, -100, 0.1)
        assert np.asarray(loss).dtype == np.float32 and grad.dtype == np.float32


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_masked_classes_of_minus_infinity(reduction):
    z = np.random.default_rng(4).standard_normal((4, 9))
    z[:, :5] = -np.inf  # a masked vocabulary: q = 0 there, and no 0 * -inf
    t = np.array([5, 8, 6, 7])
    tt = torch.tensor(t)
    loss_ref, g, (gz_ref,) = torch_run(lambda tz: F.cross_entropy(tz, tt, reduction=reduction), z)
    loss, grad = ce.cross_entropy_forward(z, t, reduction, -100, 0.0)
    assert np.isfinite(loss).all() and not grad[:, :5].any()
    assert_close(loss, loss_ref, atol=ATOL, rtol=RTOL, name="loss")
    assert_close(ce.cross_entropy_backward(np.asarray(g), grad, reduction), gz_ref, atol=ATOL, rtol=RTOL,
                 name="grad_logits")
