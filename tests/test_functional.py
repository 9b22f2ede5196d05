"""gk.functional (all ops but conv2d, which has its own tests) against PyTorch.

Every op: forward AND backward against torch.nn.functional in float64 on the same data
(the gk input rounded to the dtype under test first), with the SAME random upstream
gradient on both sides; float64 tight, float32 loose (``TOLS``). Then the argument
errors, and finite-difference gradient checks of a few ops.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import gpukernels as gk
from tests.helpers import TOL_IDS, TOLS, assert_close, grad_check, pair, to_torch

F = gk.functional
F64 = dict(atol=1e-10, rtol=1e-8)


def rng(seed=0):
    return np.random.default_rng(seed)


def compare(fn, fn_t, arrays, dtype=np.float64, atol=1e-10, rtol=1e-8, seed=0, backward=True):
    """Run fn on gk leaves and fn_t on torch float64 leaves built from ``arrays`` (None
    entries stay None); compare the outputs and, with the same random upstream gradient,
    every input gradient. Returns the gk inputs and output."""
    pairs = [(None, None) if a is None else pair(a, dtype) for a in arrays]
    xs, ts = [p[0] for p in pairs], [p[1] for p in pairs]
    y = fn(*xs)
    yt = fn_t(*ts)
    assert y.dtype == np.dtype(dtype), f"output dtype {y.dtype}, expected {np.dtype(dtype)}"
    assert_close(y, yt, atol=atol, rtol=rtol, name="forward")
    if backward:
        g = rng(seed + 1000).standard_normal(tuple(yt.shape))
        y.backward(gk.tensor(g.astype(dtype)))
        yt.backward(torch.tensor(g.astype(dtype).astype(np.float64)))
        for i, (x, xt) in enumerate(zip(xs, ts)):
            if x is None:
                continue
            assert_close(x.grad, xt.grad, atol=atol, rtol=rtol, name=f"grad of input {i}")
            assert x.grad.dtype == x.dtype
    return xs, y


@pytest.fixture
def strict_fp():
    """Overflow / invalid / divide-by-zero (and any warning) fail the test."""
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        yield


# ----------------------------------------------------------------------------- linear


@pytest.mark.parametrize("dtype, atol, rtol", TOLS, ids=TOL_IDS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize(
    "x_shape, out_features",
    [((5,), 4), ((1, 5), 4), ((3, 5), 4), ((2, 3, 5), 4), ((2, 1, 3, 5), 1), ((7, 1), 3)],
    ids=str,
)
def test_linear(x_shape, out_features, bias, dtype, atol, rtol):
    r = rng(1)
    in_features = x_shape[-1]
    arrays = [r.standard_normal(x_shape), r.standard_normal((out_features, in_features)),
              r.standard_normal(out_features) if bias else None]
    compare(F.linear, TF.linear, arrays, dtype, atol, rtol)


def test_linear_only_weight_requires_grad():
    x = gk.tensor(rng(2).standard_normal((3, 4)))
    w = gk.tensor(rng(3).standard_normal((2, 4)), requires_grad=True)
    F.linear(x, w).sum().backward()
    assert x.grad is None
    assert_close(w.grad, np.tile(x.numpy().sum(0), (2, 1)), **F64, name="w.grad")


# ----------------------------------------------------------------------------- activations

ACTIVATIONS = {
    "relu": (F.relu, TF.relu),
    "sigmoid": (F.sigmoid, torch.sigmoid),
    "tanh": (F.tanh, torch.tanh),
}
ACT_SHAPES = [(7,), (2, 3, 5), (1, 1, 1, 1), (3, 4)]


def _act_input(shape, seed):
    x = rng(seed).standard_normal(shape) * 3
    x.reshape(-1)[:: 3] = 0.0  # exact zeros: the kink of relu / leaky relu
    return x


@pytest.mark.parametrize("dtype, atol, rtol", TOLS, ids=TOL_IDS)
@pytest.mark.parametrize("shape", ACT_SHAPES, ids=str)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation(name, shape, dtype, atol, rtol):
    fn, fn_t = ACTIVATIONS[name]
    compare(fn, fn_t, [_act_input(shape, 4)], dtype, atol, rtol)


@pytest.mark.parametrize("dtype, atol, rtol", TOLS, ids=TOL_IDS)
@pytest.mark.parametrize("slope", [0.0, 0.01, 0.2, 1.0, 2.5])
def test_leaky_relu(slope, dtype, atol, rtol):
    compare(lambda x: F.leaky_relu(x, slope), lambda x: TF.leaky_relu(x, slope),
            [_act_input((3, 5), 5)], dtype, atol, rtol)


def test_leaky_relu_default_slope_and_int_slope():
    compare(F.leaky_relu, TF.leaky_relu, [_act_input((4, 4), 6)])
    compare(lambda x: F.leaky_relu(x, 2), lambda x: TF.leaky_relu(x, 2), [_act_input((4,), 7)])


def test_tensor_relu_method():
    compare(lambda x: x.relu(), torch.relu, [_act_input((5,), 8)])


@pytest.mark.parametrize("dtype, atol, rtol", TOLS, ids=TOL_IDS)
def test_sigmoid_large_inputs_no_overflow(dtype, atol, rtol, strict_fp):
    x = np.concatenate([np.linspace(-1e3, 1e3, 41), [-1e3, -88.0, -50.0, 50.0, 88.0, 1e3]])
    xs, y = compare(F.sigmoid, torch.sigmoid, [x], dtype, atol, rtol)
    assert np.isfinite(y.numpy()).all() and np.isfinite(xs[0].grad.numpy()).all()


def test_tanh_large_inputs(strict_fp):
    compare(F.tanh, torch.tanh, [np.linspace(-1e3, 1e3, 21)])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("values", [0.0, 0.5, 1.0, "tensor"])
def test_heaviside_forward(values, dtype):
    x = np.array([[-2.0, 0.0, 3.0], [0.0, -1e-30, 1e-30]], dtype=dtype)
    if values == "tensor":
        v = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], dtype=dtype)
        y = F.heaviside(gk.tensor(x), gk.tensor(v))
        yt = torch.heaviside(torch.tensor(x), torch.tensor(v))
    else:
        y = F.heaviside(gk.tensor(x), values)
        yt = torch.heaviside(torch.tensor(x), torch.tensor(values, dtype=torch.tensor(x).dtype))
    assert y.dtype == np.dtype(dtype)
    assert_close(y, yt, atol=0, rtol=0, name="heaviside")


def test_heaviside_backward_raises():
    x = gk.tensor([-1.0, 0.0, 2.0], requires_grad=True)
    y = F.heaviside(x).sum()
    with pytest.raises(RuntimeError, match="not differentiable"):
        y.backward()


# ----------------------------------------------------------------------------- pooling

# (input shape, kernel, stride, padding, dilation)
MAX_POOL_CASES = [
    ((1, 1, 5, 5), 1, None, 0, 1),
    ((1, 3, 8, 8), 2, None, 0, 1),
    ((3, 1, 13, 13), 3, None, 0, 1),
    ((1, 3, 5, 8), 2, 1, 0, 1),            # overlapping windows
    ((3, 3, 8, 5), 3, 1, 1, 1),            # overlapping + padding
    ((1, 17, 13, 8), 3, 2, 1, 1),
    ((3, 1, 8, 13), (2, 3), (1, 2), (1, 1), 1),
    ((1, 3, 13, 5), (3, 2), 3, (1, 0), 1),
    ((1, 3, 13, 13), 3, 1, 1, 2),          # dilation
    ((3, 1, 8, 8), 2, 1, 1, 2),
    ((1, 1, 13, 8), (3, 2), (2, 1), 0, (2, 1)),
    ((1, 17, 5, 5), 2, 3, 1, 1),
    ((3, 3, 5, 13), 3, 3, 0, 1),
    ((1, 1, 5, 5), 5, 1, 2, 1),            # window as big as the image
    ((1, 3, 8, 13), (1, 3), (1, 2), (0, 1), 1),
    ((1, 1, 13, 13), 3, 2, 1, 3),
]
AVG_POOL_CASES = [c[:4] for c in MAX_POOL_CASES if c[4] == 1]


@pytest.mark.parametrize("dtype, atol, rtol", TOLS, ids=TOL_IDS)
@pytest.mark.parametrize("shape, kernel, stride, padding, dilation", MAX_POOL_CASES, ids=str)
def test_max_pool2d(shape, kernel, stride, padding, dilation, dtype, atol, rtol):
    compare(lambda x: F.max_pool2d(x, kernel, stride, padding, dilation),
            lambda x: TF.max_pool2d(x, kernel, stride, padding, dilation),
            [rng(10).standard_normal(shape)], dtype, atol, rtol)


@pytest.mark.parametrize(
    "shape, kernel, stride, padding, dilation",
    [((1, 1, 5, 5), 3, 1, 1, 1), ((3, 3, 8, 5), 2, 1, 0, 1), ((1, 3, 13, 8), 3, 2, 1, 2),
     ((1, 1, 5, 8), (3, 2), (1, 2), (1, 1), 1)],
    ids=str,
)
@pytest.mark.parametrize("data", ["constant", "few-values"])
def test_max_pool2d_ties_route_like_torch(shape, kernel, stride, padding, dilation, data):
    x = np.full(shape, 0.5) if data == "constant" else rng(11).integers(0, 3, shape).astype(np.float64)
    compare(lambda t: F.max_pool2d(t, kernel, stride, padding, dilation),
            lambda t: TF.max_pool2d(t, kernel, stride, padding, dilation), [x])


def test_max_pool2d_negative_input_with_padding():
    # padding counts as -inf, never as 0: an all-negative image keeps its own maxima
    x = -1.0 - rng(12).random((1, 2, 5, 5))
    compare(lambda t: F.max_pool2d(t, 3, 2, 1), lambda t: TF.max_pool2d(t, 3, 2, 1), [x])


@pytest.mark.parametrize("dtype, atol, rtol", TOLS, ids=TOL_IDS)
@pytest.mark.parametrize("count_include_pad", [True, False], ids=["cip", "nocip"])
@pytest.mark.parametrize("shape, kernel, stride, padding", AVG_POOL_CASES, ids=str)
def test_avg_pool2d(shape, kernel, stride, padding, count_include_pad, dtype, atol, rtol):
    compare(lambda x: F.avg_pool2d(x, kernel, stride, padding, count_include_pad),
            lambda x: TF.avg_pool2d(x, kernel, stride, padding, count_include_pad=count_include_pad),
            [rng(13).standard_normal(shape)], dtype, atol, rtol)


# ----------------------------------------------------------------------------- batch norm


def _bn_stats(c, seed, dtype):
    r = rng(seed)
    return r.standard_normal(c).astype(dtype), (r.random(c) + 0.5).astype(dtype)


@pytest.mark.parametrize("dtype, atol, rtol", TOLS, ids=TOL_IDS)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("activation", [None, "relu"], ids=["bn", "bn-relu"])
@pytest.mark.parametrize("shape", [(4, 3), (5, 1), (2, 3, 5), (2, 3, 4, 5), (1, 17, 2, 3)], ids=str)
def test_batch_norm(shape, training, affine, activation, dtype, atol, rtol):
    """Forward, running statistics and all three gradients; ``activation="relu"`` against
    torch's relu(batch_norm(x)) (about half of y clipped, so the mask shows)."""
    r = rng(20)
    c = shape[1]
    x = r.standard_normal(shape) * 2 + 1
    arrays = [x, r.standard_normal(c) if affine else None, r.standard_normal(c) if affine else None]
    rm, rv = _bn_stats(c, 21, dtype)
    gk_rm, gk_rv = gk.tensor(rm), gk.tensor(rv)
    t_rm, t_rv = to_torch(rm), to_torch(rv)
    act = TF.relu if activation else (lambda t: t)
    compare(lambda x, w, b: F.batch_norm(x, gk_rm, gk_rv, w, b, training, 0.1, 1e-5, activation=activation),
            lambda x, w, b: act(TF.batch_norm(x, t_rm, t_rv, w, b, training, 0.1, 1e-5)),
            arrays, dtype, atol, rtol)
    assert gk_rm.dtype == np.dtype(dtype) and gk_rv.dtype == np.dtype(dtype)
    assert_close(gk_rm, t_rm, atol=atol, rtol=rtol, name="running_mean")
    assert_close(gk_rv, t_rv, atol=atol, rtol=rtol, name="running_var")
    if not training:
        assert_close(gk_rm, rm, atol=0, rtol=0, name="running_mean unchanged in eval")


def test_batch_norm_activation_is_checked():
    x = gk.tensor(rng(25).standard_normal((4, 3)))
    with pytest.raises(ValueError, match="activation must be None or 'relu', got 'gelu'"):
        F.batch_norm(x, None, None, training=True, activation="gelu")
    with pytest.raises(ValueError, match="activation"):
        gk.nn.BatchNorm2d(3, activation="tanh")


def test_batch_norm2d_relu_module():
    """``nn.BatchNorm2d(activation="relu")``: relu(bn(x)) values, in repr, and kept by
    ``SyncBatchNorm.convert_sync_batchnorm``."""
    gk.manual_seed(0)
    fused, plain = gk.nn.BatchNorm2d(3, activation="relu"), gk.nn.BatchNorm2d(3)
    x = gk.tensor(rng(26).standard_normal((4, 3, 2, 5)))
    assert_close(fused(x), F.relu(plain(x)), atol=0, rtol=0, name="bn-relu")
    assert "activation='relu'" in repr(fused) and "activation" not in repr(plain)
    synced = gk.nn.SyncBatchNorm.convert_sync_batchnorm(fused)
    assert synced.activation == "relu"
    assert_close(synced(x), F.relu(plain(x)), atol=0, rtol=0, name="sync bn-relu, one process")


@pytest.mark.parametrize("momentum", [0.0, 0.3, 1.0])
def test_batch_norm_momentum_over_two_steps(momentum):
    rm, rv = _bn_stats(3, 22, np.float64)
    gk_rm, gk_rv, t_rm, t_rv = gk.tensor(rm), gk.tensor(rv), to_torch(rm), to_torch(rv)
    for step in range(2):
        x = rng(23 + step).standard_normal((4, 3, 2, 2)) * (step + 1)
        F.batch_norm(gk.tensor(x), gk_rm, gk_rv, training=True, momentum=momentum)
        TF.batch_norm(to_torch(x), t_rm, t_rv, training=True, momentum=momentum)
    assert_close(gk_rm, t_rm, **F64, name="running_mean")
    assert_close(gk_rv, t_rv, **F64, name="running_var")


def test_batch_norm_without_running_stats():
    x = rng(24).standard_normal((6, 2, 3))
    compare(lambda t: F.batch_norm(t, None, None, training=True),
            lambda t: TF.batch_norm(t, None, None, training=True), [x])
    # eval without running statistics normalises with the batch's, like training
    y_eval = F.batch_norm(gk.tensor(x), None, None, training=False)
    y_train = F.batch_norm(gk.tensor(x), None, None, training=True)
    assert_close(y_eval, y_train, atol=0, rtol=0, name="eval without stats")


def test_batch_norm_eps():
    x = rng(25).standard_normal((3, 2)) * 1e-3
    compare(lambda t: F.batch_norm(t, None, None, training=True, eps=1e-2),
            lambda t: TF.batch_norm(t, None, None, training=True, eps=1e-2), [x])


# ----------------------------------------------------------------------------- softmax


@pytest.mark.parametrize("dtype, atol, rtol", TOLS, ids=TOL_IDS)
@pytest.mark.parametrize(
    "shape, dim",
    [((4, 7), 0), ((4, 7), 1), ((4, 7), -1), ((2, 3, 4), 0), ((2, 3, 4), 1), ((2, 3, 4), 2),
     ((2, 3, 4), -2), ((5, 1), 1), ((6,), 0)],
    ids=str,
)
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax(op, shape, dim, dtype, atol, rtol):
    compare(lambda x: getattr(F, op)(x, dim), lambda x: getattr(TF, op)(x, dim),
            [rng(30).standard_normal(shape) * 3], dtype, atol, rtol)


@pytest.mark.parametrize("dtype, atol, rtol", TOLS, ids=TOL_IDS)
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_large_logits(op, dtype, atol, rtol, strict_fp):
    x = rng(31).standard_normal((3, 5)) * 1e4
    x[0] = [1e4, 1e4, -1e4, 0.0, 1e4]
    xs, y = compare(lambda t: getattr(F, op)(t, 1), lambda t: getattr(TF, op)(t, 1), [x], dtype, atol, rtol)
    assert np.isfinite(y.numpy()).all()


def test_softmax_default_dim_is_last():
    compare(F.softmax, lambda t: TF.softmax(t, -1), [rng(32).standard_normal((2, 3, 4))])


# ----------------------------------------------------------------------------- cross entropy


def _ce_data(n, c, seed, ignore_rows=(), ignore_index=-100, scale=2.0):
    r = rng(seed)
    logits = r.standard_normal((n, c)) * scale
    target = r.integers(0, c, n)
    target[list(ignore_rows)] = ignore_index
    return logits, target


def compare_ce(logits, target, dtype=np.float64, atol=1e-10, rtol=1e-8, **kw):
    tgt, tgt_t = gk.tensor(target), torch.tensor(target.astype(np.int64))
    return compare(lambda x: F.cross_entropy(x, tgt, **kw), lambda x: TF.cross_entropy(x, tgt_t, **kw),
                   [logits], dtype, atol, rtol)


@pytest.mark.parametrize("dtype, atol, rtol", TOLS, ids=TOL_IDS)
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("classes", [1, 3, 1000])
def test_cross_entropy(classes, reduction, smoothing, dtype, atol, rtol):
    logits, target = _ce_data(5, classes, 40)
    compare_ce(logits, target, dtype, atol, rtol, reduction=reduction, label_smoothing=smoothing)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore_index", [-100, -1, 2])
def test_cross_entropy_ignore_index(ignore_index, reduction, smoothing):
    logits, target = _ce_data(6, 4, 41, ignore_rows=(1, 4), ignore_index=ignore_index)
    xs, _ = compare_ce(logits, target, reduction=reduction, label_smoothing=smoothing,
                       ignore_index=ignore_index)
    assert not xs[0].grad.numpy()[[1, 4]].any(), "ignored rows get no gradient"


@pytest.mark.parametrize("dtype, atol, rtol", TOLS, ids=TOL_IDS)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_huge_logits(reduction, smoothing, dtype, atol, rtol, strict_fp):
    logits, target = _ce_data(4, 6, 42, scale=1e4)
    logits[0, :3] = 1e4  # ties at the top
    target[1] = int(np.argmin(logits[1]))  # a target with p ~ exp(-2e4)
    xs, y = compare_ce(logits, target, dtype, atol, rtol, reduction=reduction, label_smoothing=smoothing)
    assert np.isfinite(y.numpy()).all() and np.isfinite(xs[0].grad.numpy()).all()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_all_rows_ignored(reduction):
    logits, target = _ce_data(3, 4, 43, ignore_rows=(0, 1, 2))
    x, xt = pair(logits)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = F.cross_entropy(x, gk.tensor(target), reduction=reduction)
    yt = TF.cross_entropy(xt, torch.tensor(target), reduction=reduction)
    assert_close(y, yt, atol=0, rtol=0, name="loss")  # nan for mean, 0 otherwise
    if reduction == "mean":
        assert np.isnan(y.item())
    y.sum().backward() if reduction == "none" else y.backward()
    (yt.sum() if reduction == "none" else yt).backward()
    assert_close(x.grad, xt.grad, atol=0, rtol=0, name="logits.grad")


def test_cross_entropy_int32_target_and_default_args():
    logits, target = _ce_data(4, 3, 44)
    compare_ce(logits, target.astype(np.int32))


def test_cross_entropy_with_log_softmax_composition():
    """cross_entropy == nll of log_softmax built from our own ops."""
    logits, target = _ce_data(5, 4, 45)
    x = gk.tensor(logits, requires_grad=True)
    a = F.cross_entropy(x, gk.tensor(target))
    b = -F.log_softmax(x, 1)[np.arange(5), target].mean()
    assert_close(a, b, **F64, name="loss")


# ----------------------------------------------------------------------------- mse


@pytest.mark.parametrize("dtype, atol, rtol", TOLS, ids=TOL_IDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(4,), (2, 3, 4), (1, 1), ()], ids=str)
def test_mse_loss(shape, reduction, dtype, atol, rtol):
    r = rng(50)
    compare(lambda a, b: F.mse_loss(a, b, reduction), lambda a, b: TF.mse_loss(a, b, reduction=reduction),
            [r.standard_normal(shape), r.standard_normal(shape)], dtype, atol, rtol)


def test_mse_loss_target_without_grad():
    x = gk.tensor(np.array([1.0, 2.0]), requires_grad=True)
    t = gk.tensor(np.array([0.0, 4.0]))
    F.mse_loss(x, t).backward()
    assert t.grad is None
    assert_close(x.grad, [1.0, -2.0], atol=0, rtol=0, name="x.grad")


# ----------------------------------------------------------------------------- flatten


@pytest.mark.parametrize("start, end", [(0, -1), (1, -1), (0, 1), (1, 2), (2, 3), (-2, -1), (3, 3)])
def test_flatten(start, end):
    compare(lambda x: F.flatten(x, start, end), lambda x: torch.flatten(x, start, end),
            [rng(60).standard_normal((2, 3, 4, 5))])


def test_flatten_0d_and_errors():
    assert F.flatten(gk.tensor(3.0)).shape == (1,)
    with pytest.raises(ValueError, match="start_dim 2 comes after end_dim 1"):
        F.flatten(gk.tensor(np.zeros((2, 3, 4))), 2, 1)
    with pytest.raises(TypeError, match="Tensor, got list"):
        F.flatten([1.0, 2.0])


# ----------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_dropout_training_statistics_and_scaling(p):
    gk.manual_seed(1234)
    data = rng(70).random((200, 500)) + 1.0  # never 0: zeros in y come from the mask only
    x = gk.tensor(data, requires_grad=True)
    y = F.dropout(x, p, training=True)
    out = y.numpy()
    dropped = out == 0
    assert abs(dropped.mean() - p) < 0.01, f"dropped fraction {dropped.mean()} for p={p}"
    assert_close(out[~dropped], data[~dropped] / (1 - p), atol=0, rtol=1e-15, name="kept values")
    g = rng(71).standard_normal(data.shape)
    y.backward(gk.tensor(g))
    assert_close(x.grad, np.where(dropped, 0.0, g / (1 - p)), atol=0, rtol=1e-15, name="x.grad")


def test_dropout_float32_keeps_dtype():
    gk.manual_seed(5)
    x = gk.tensor(np.ones((50, 40), dtype=np.float32), requires_grad=True)
    y = F.dropout(x, 0.25)
    assert y.dtype == np.float32
    kept = y.numpy()[y.numpy() != 0]
    assert_close(kept, np.full(kept.shape, 1 / 0.75, dtype=np.float32), atol=0, rtol=1e-6, name="kept")


@pytest.mark.parametrize("p, training", [(0.5, False), (0.0, True), (0.0, False), (1.0, False)])
def test_dropout_identity(p, training):
    data = rng(72).standard_normal((3, 4))
    x = gk.tensor(data, requires_grad=True)
    y = F.dropout(x, p, training=training)
    assert_close(y, data, atol=0, rtol=0, name="y")
    g = rng(73).standard_normal((3, 4))
    (y * gk.tensor(g)).sum().backward()
    assert_close(x.grad, g, atol=0, rtol=0, name="x.grad")


def test_dropout_p_one_zeroes_everything():
    x = gk.tensor(rng(74).standard_normal((3, 4)), requires_grad=True)
    y = F.dropout(x, 1.0)
    assert not y.numpy().any()
    y.sum().backward()
    assert not x.grad.numpy().any()
    assert_close(TF.dropout(to_torch(x), 1.0), y, atol=0, rtol=0, name="torch agrees")


def test_dropout_seed_reproducible():
    x = gk.tensor(np.ones((20, 30)))
    gk.manual_seed(7)
    a = F.dropout(x, 0.5).numpy()
    b = F.dropout(x, 0.5).numpy()
    gk.manual_seed(7)
    c = F.dropout(x, 0.5).numpy()
    assert_close(a, c, atol=0, rtol=0, name="same seed, same mask")
    assert (a != b).any(), "the generator moves on between calls"
    gk.manual_seed(8)
    assert (F.dropout(x, 0.5).numpy() != a).any()


# ----------------------------------------------------------------------------- errors


def _x(*shape, dtype=np.float64):
    return gk.tensor(np.zeros(shape, dtype=dtype))


ERRORS = [
    # (call, exception, message pattern)
    (lambda: F.relu(np.zeros(3)), TypeError, r"input must be a Tensor, got ndarray"),
    (lambda: F.relu(gk.tensor([1, 2])), TypeError, r"floating-point.*int64"),
    (lambda: F.sigmoid(gk.tensor([True])), TypeError, r"floating-point.*bool"),
    (lambda: F.tanh(gk.tensor([1, 2], dtype=gk.int32)), TypeError, r"int32"),
    (lambda: F.softmax(gk.tensor([1, 2])), TypeError, r"int64"),
    (lambda: F.leaky_relu(_x(3), -0.1), ValueError, r"negative_slope must be a number >= 0, got -0.1"),
    (lambda: F.leaky_relu(_x(3), "a"), ValueError, r"negative_slope.*'a'"),
    (lambda: F.linear(_x(3, 5), _x(4, 6)), ValueError, r"input of shape \(3, 5\).*weight of shape \(4, 6\)"),
    (lambda: F.linear(_x(3, 5), _x(5)), ValueError, r"weight must have 2 dimensions, got shape \(5,\)"),
    (lambda: F.linear(_x(3, 5), _x(4, 5), _x(3)), ValueError, r"bias must have shape \(4,\), got \(3,\)"),
    (lambda: F.linear(_x(3, 5), _x(4, 5, dtype=np.float32)), TypeError, r"dtypes differ.*float64.*float32"),
    (lambda: F.linear(gk.tensor([[1, 2]]), _x(4, 2)), TypeError, r"input.*int64"),
    (lambda: F.max_pool2d(_x(1, 5, 5), 2), ValueError, r"input must have 4 dimensions, got shape \(1, 5, 5\)"),
    (lambda: F.avg_pool2d(_x(5, 5), 2), ValueError, r"4 dimensions, got shape \(5, 5\)"),
    (lambda: F.max_pool2d(gk.tensor(np.zeros((1, 1, 4, 4), dtype=np.int64)), 2), TypeError, r"int64"),
    (lambda: F.max_pool2d(_x(1, 1, 5, 5), 0), ValueError, r"kernel_size must be >= 1, got 0"),
    (lambda: F.max_pool2d(_x(1, 1, 5, 5), 2.5), TypeError, r"kernel_size must be an int or a pair of ints, got 2.5"),
    (lambda: F.avg_pool2d(_x(1, 1, 5, 5), (2, 2, 2)), TypeError, r"kernel_size.*\(2, 2, 2\)"),
    (lambda: F.max_pool2d(_x(1, 1, 5, 5), 2, stride=0), ValueError, r"stride must be >= 1, got 0"),
    (lambda: F.avg_pool2d(_x(1, 1, 5, 5), 2, stride=(1, -1)), ValueError, r"stride must be >= 1, got \(1, -1\)"),
    (lambda: F.max_pool2d(_x(1, 1, 5, 5), 2, padding=-1), ValueError, r"padding must be >= 0, got -1"),
    (lambda: F.max_pool2d(_x(1, 1, 5, 5), 3, padding=2), ValueError,
     r"padding \(2, 2\) must be at most half of kernel_size \(3, 3\)"),
    (lambda: F.avg_pool2d(_x(1, 1, 5, 5), (2, 4), padding=(1, 3)), ValueError,
     r"padding \(1, 3\) must be at most half of kernel_size \(2, 4\)"),
    (lambda: F.max_pool2d(_x(1, 1, 5, 5), 2, dilation=0), ValueError, r"dilation must be >= 1, got 0"),
    (lambda: F.max_pool2d(_x(1, 1, 5, 5), 7), ValueError, r"window \(7, 7\) is larger than the padded input"),
    (lambda: F.max_pool2d(_x(1, 1, 5, 5), 3, dilation=3), ValueError, r"larger than the padded input \(1, 1, 5, 5\)"),
    (lambda: F.batch_norm(_x(4), None, None, training=True), ValueError, r"input must have \(2, 3, 4\) dimensions, got shape \(4,\)"),
    (lambda: F.batch_norm(_x(4, 3), _x(4), _x(3)), ValueError, r"running_mean must have shape \(3,\), got \(4,\)"),
    (lambda: F.batch_norm(_x(4, 3), _x(3), _x(3), weight=_x(2)), ValueError, r"weight must have shape \(3,\), got \(2,\)"),
    (lambda: F.batch_norm(_x(4, 3), None, None, bias=_x(3, 1)), ValueError, r"bias must have 1 dimensions, got shape \(3, 1\)"),
    (lambda: F.batch_norm(_x(4, 3), _x(3), None), ValueError, r"both running_mean and running_var"),
    (lambda: F.batch_norm(_x(1, 3), None, None, training=True), ValueError, r"more than 1 value per channel.*\(1, 3\)"),
    (lambda: F.batch_norm(_x(4, 3), None, None, eps=0.0), ValueError, r"eps must be > 0, got 0.0"),
    (lambda: F.softmax(_x(2, 3), 2), ValueError, r"dim must be an int in \[-2, 2\), got 2"),
    (lambda: F.log_softmax(_x(2, 3), -3), ValueError, r"got -3"),
    (lambda: F.cross_entropy(_x(4), gk.tensor([0])), ValueError, r"input must have 2 dimensions, got shape \(4,\)"),
    (lambda: F.cross_entropy(_x(4, 3), gk.tensor([0, 1, 2])), ValueError,
     r"target must have shape \(4,\) for input of shape \(4, 3\), got \(3,\)"),
    (lambda: F.cross_entropy(_x(2, 3), gk.tensor([[0], [1]])), ValueError, r"got \(2, 1\)"),
    (lambda: F.cross_entropy(_x(2, 3), gk.tensor([0.0, 1.0])), TypeError, r"integer class indices, got dtype float32"),
    (lambda: F.cross_entropy(_x(2, 3), np.array([0, 1])), TypeError, r"target must be a Tensor.*ndarray"),
    (lambda: F.cross_entropy(_x(4, 3), gk.tensor([0, 1, 7, 2])), ValueError, r"target\[2\] = 7 .*\[0, 3\)"),
    (lambda: F.cross_entropy(_x(4, 3), gk.tensor([0, -1, 1, 2])), ValueError, r"target\[1\] = -1 .*ignore_index=-100"),
    (lambda: F.cross_entropy(_x(2, 3), gk.tensor([0, 3]), ignore_index=-1), ValueError, r"target\[1\] = 3"),
    (lambda: F.cross_entropy(_x(2, 3), gk.tensor([0, 1]), reduction="avg"), ValueError,
     r"reduction must be 'mean', 'sum' or 'none', got 'avg'"),
    (lambda: F.cross_entropy(_x(2, 3), gk.tensor([0, 1]), label_smoothing=1.5), ValueError,
     r"label_smoothing must be in \[0, 1\], got 1.5"),
    (lambda: F.cross_entropy(_x(2, 3), gk.tensor([0, 1]), label_smoothing=-0.1), ValueError, r"got -0.1"),
    (lambda: F.mse_loss(_x(2, 3), _x(3, 2)), ValueError, r"input shape \(2, 3\) differs from target shape \(3, 2\)"),
    (lambda: F.mse_loss(_x(2), _x(2), reduction=None), ValueError, r"reduction.*got None"),
    (lambda: F.mse_loss(_x(2), _x(2, dtype=np.float32)), TypeError, r"dtypes differ"),
    (lambda: F.mse_loss(_x(2), gk.tensor([1, 2])), TypeError, r"target must be a floating-point tensor, got dtype int64"),
    (lambda: F.dropout(_x(3), 1.5), ValueError, r"between 0 and 1, got 1.5"),
    (lambda: F.dropout(_x(3), -0.1), ValueError, r"between 0 and 1, got -0.1"),
    (lambda: F.dropout(_x(3), "0.5"), ValueError, r"got '0.5'"),
    (lambda: F.dropout(gk.tensor([1, 2]), 0.5), TypeError, r"int64"),
]


@pytest.mark.parametrize("call, exc, pattern", ERRORS, ids=[p for _, _, p in ERRORS])
def test_argument_errors(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


# ----------------------------------------------------------------------------- finite differences


def test_grad_check_log_softmax():
    g = rng(80).standard_normal((3, 4))
    grad_check(lambda x: (F.log_softmax(x, 1) * gk.tensor(g)).sum(), [rng(81).standard_normal((3, 4))])


def test_grad_check_softmax_dim0():
    g = rng(82).standard_normal((3, 4))
    grad_check(lambda x: (F.softmax(x, 0) * gk.tensor(g)).sum(), [rng(83).standard_normal((3, 4))])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_grad_check_cross_entropy_smoothing(reduction):
    logits, target = _ce_data(5, 4, 84, ignore_rows=(2,))
    tgt = gk.tensor(target)
    grad_check(lambda x: F.cross_entropy(x, tgt, reduction=reduction, label_smoothing=0.1), [logits])


def test_grad_check_cross_entropy_none_weighted():
    logits, target = _ce_data(4, 3, 85)
    tgt, w = gk.tensor(target), gk.tensor(rng(86).standard_normal(4))
    grad_check(lambda x: (F.cross_entropy(x, tgt, reduction="none") * w).sum(), [logits])


def test_grad_check_batch_norm_training():
    r = rng(87)
    g = gk.tensor(r.standard_normal((3, 2, 2, 2)))
    grad_check(lambda x, w, b: (F.batch_norm(x, None, None, w, b, training=True) * g).sum(),
               [r.standard_normal((3, 2, 2, 2)), r.standard_normal(2), r.standard_normal(2)])


def test_grad_check_batch_norm_2d_no_affine():
    g = gk.tensor(rng(88).standard_normal((5, 3)))
    grad_check(lambda x: (F.batch_norm(x, None, None, training=True) ** 2 * g).sum(),
               [rng(89).standard_normal((5, 3))])


@pytest.mark.parametrize("stride, padding", [(2, 0), (1, 1)])
def test_grad_check_max_pool_without_ties(stride, padding):
    x = rng(90).permutation(2 * 5 * 5).reshape(1, 2, 5, 5) * 0.1  # distinct, 0.1 apart
    g = gk.tensor(rng(91).standard_normal(F.max_pool2d(gk.tensor(x), 3, stride, padding).shape))
    grad_check(lambda t: (F.max_pool2d(t, 3, stride, padding) * g).sum(), [x])


@pytest.mark.parametrize("count_include_pad", [True, False])
def test_grad_check_avg_pool(count_include_pad):
    x = rng(92).standard_normal((1, 2, 5, 4))
    g = gk.tensor(rng(93).standard_normal((1, 2, 3, 3)))
    grad_check(lambda t: (F.avg_pool2d(t, (3, 2), 2, 1, count_include_pad) * g).sum(), [x])


def test_grad_check_linear_sigmoid_tanh_mse():
    r = rng(94)
    target = gk.tensor(r.standard_normal((3, 2)))
    grad_check(lambda x, w, b: F.mse_loss(F.tanh(F.linear(F.sigmoid(x), w, b)), target),
               [r.standard_normal((3, 4)), r.standard_normal((2, 4)), r.standard_normal(2)])


# ----------------------------------------------------------------------------- graph reuse

_CE_T = np.array([0, 2, 1, -100])
RETAIN_OPS = {
    "linear": (lambda x: F.linear(x, x[:3]), lambda x: TF.linear(x, x[:3]), (4, 4)),
    "relu": (F.relu, TF.relu, (3, 4)),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.2), lambda x: TF.leaky_relu(x, 0.2), (3, 4)),
    "sigmoid": (F.sigmoid, torch.sigmoid, (3, 4)),
    "tanh": (F.tanh, torch.tanh, (3, 4)),
    "max_pool2d": (lambda x: F.max_pool2d(x, 2, 1), lambda x: TF.max_pool2d(x, 2, 1), (1, 2, 4, 4)),
    "avg_pool2d": (lambda x: F.avg_pool2d(x, 2, 1, 1), lambda x: TF.avg_pool2d(x, 2, 1, 1), (1, 2, 4, 4)),
    "batch_norm": (lambda x: F.batch_norm(x, None, None, x[0, :, 0, 0], None, True),
                   lambda x: TF.batch_norm(x, None, None, x[0, :, 0, 0], None, True), (2, 3, 2, 2)),
    "softmax": (lambda x: F.softmax(x, 0), lambda x: TF.softmax(x, 0), (3, 4)),
    "log_softmax": (F.log_softmax, lambda x: TF.log_softmax(x, -1), (3, 4)),
    "cross_entropy": (lambda x: F.cross_entropy(x, gk.tensor(_CE_T), label_smoothing=0.1),
                      lambda x: TF.cross_entropy(x, torch.tensor(_CE_T), label_smoothing=0.1), (4, 3)),
    "cross_entropy_none": (lambda x: F.cross_entropy(x, gk.tensor(_CE_T), reduction="none"),
                           lambda x: TF.cross_entropy(x, torch.tensor(_CE_T), reduction="none"), (4, 3)),
    "mse_loss": (lambda x: F.mse_loss(x, x * x), lambda x: TF.mse_loss(x, x * x), (3, 4)),
    "flatten": (lambda x: F.flatten(x, 1) * x.flatten(1), lambda x: x.flatten(1) * x.flatten(1), (2, 3, 2)),
}


@pytest.mark.parametrize("name", list(RETAIN_OPS))
def test_backward_twice_with_retain_graph_accumulates_like_torch(name):
    fn, fn_t, shape = RETAIN_OPS[name]
    x, xt = pair(rng(100).standard_normal(shape))
    y, yt = fn(x), fn_t(xt)
    g = rng(101).standard_normal(yt.shape)
    for _ in range(2):
        y.backward(gk.tensor(g), retain_graph=True)
        yt.backward(torch.tensor(g), retain_graph=True)
        assert_close(x.grad, xt.grad, **F64, name="x.grad")
    y.backward(gk.tensor(g))  # the last one frees the graph
    with pytest.raises(RuntimeError, match="second time"):
        y.backward(gk.tensor(g))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cross_entropy_backward_of_one_hands_out_the_saved_gradient_only_last(dtype):
    """loss.backward() seeds 1: the last backward hands the forward's saved gradient out
    as logits.grad; one with retain_graph=True must not (a later backward, accumulating
    into logits.grad in place, would change what the next one reads)."""
    logits, target = _ce_data(6, 5, 46)
    x, xt = pair(logits, dtype)
    y = F.cross_entropy(x, gk.tensor(target))
    yt = TF.cross_entropy(xt, torch.tensor(target))
    y.backward(retain_graph=True)
    y.backward(retain_graph=True)
    y.backward()
    yt.backward(retain_graph=True)
    yt.backward(retain_graph=True)
    yt.backward()
    tol = F64 if dtype == np.float64 else {"atol": 1e-6, "rtol": 1e-5}
    assert_close(x.grad, xt.grad, **tol, name="logits.grad after three backwards")
    # two losses of one logits: each last backward hands its own gradient out
    x2, xt2 = pair(logits, dtype)
    (F.cross_entropy(x2, gk.tensor(target)) + F.cross_entropy(x2, gk.tensor(target[::-1].copy()))).backward()
    (TF.cross_entropy(xt2, torch.tensor(target)) + TF.cross_entropy(xt2, torch.tensor(target[::-1].copy()))).backward()
    assert_close(x2.grad, xt2.grad, **tol, name="logits.grad of two losses")


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_with_masked_logits(op, strict_fp):
    x = rng(102).standard_normal((3, 4))
    x[0, 1] = x[2, 0] = x[2, 3] = -np.inf  # attention-style masking, not a whole row
    x_gk, xt = pair(x)
    y, yt = getattr(F, op)(x_gk, 1), getattr(TF, op)(xt, 1)
    assert_close(y, yt, **F64, name="forward")
    g = rng(103).standard_normal((3, 4))
    y.backward(gk.tensor(g))
    yt.backward(torch.tensor(g))
    assert_close(x_gk.grad, xt.grad, **F64, name="x.grad")


def test_cross_entropy_uint8_target():
    logits, target = _ce_data(4, 3, 104)
    tgt = gk.tensor(target.astype(np.uint8))
    y = F.cross_entropy(gk.tensor(logits), tgt)
    assert_close(y, TF.cross_entropy(to_torch(logits), torch.tensor(target)), **F64, name="loss")


def test_batch_norm_only_weight_requires_grad():
    x = gk.tensor(rng(105).standard_normal((4, 2, 3)))
    w = gk.tensor(np.array([1.5, -0.5]), requires_grad=True)
    F.batch_norm(x, None, None, w, None, training=True).sum().backward()
    assert x.grad is None and w.grad is not None


@pytest.mark.parametrize("stride, padding, dilation, groups, activation", [
    (1, 1, 1, 1, None),
    (2, 0, 1, 1, "relu"),
    (1, 2, 2, 2, "leaky_relu"),
])
def test_grad_check_conv2d(stride, padding, dilation, groups, activation):
    """Finite differences through the whole functional conv2d (fused bias + activation)."""
    r = rng(91)
    x = r.standard_normal((2, 4, 6, 5))
    w = r.standard_normal((6, 4 // groups, 3, 3))
    b = r.standard_normal(6)
    out_shape = F.conv2d(gk.tensor(x), gk.tensor(w), gk.tensor(b), stride, padding, dilation,
                         groups, activation, 0.2).shape
    g = gk.tensor(r.standard_normal(out_shape))
    grad_check(lambda x, w, b: (F.conv2d(x, w, b, stride, padding, dilation, groups, activation,
                                         0.2) * g).sum(), [x, w, b])


def test_max_pool_backward_routes_an_infinite_gradient_only_to_the_argmax():
    # g * mask would turn inf * 0 into NaN at every other tap of the window
    x = gk.tensor(np.arange(16.0).reshape(1, 1, 4, 4), requires_grad=True)
    y = F.max_pool2d(x, 2)
    y.backward(gk.tensor(np.array([[[[np.inf, 1.0], [2.0, 3.0]]]])))
    g = x.grad.numpy()[0, 0]
    assert not np.isnan(g).any()
    assert g[1, 1] == np.inf and g[1, 3] == 1.0 and g[3, 1] == 2.0 and g[3, 3] == 3.0
    assert (g[[0, 0, 1], [0, 1, 0]] == 0).all()
