"""Every family of the ``numpy`` backend (gpukernels.cpu) against the reference
(gpukernels.reference) on awkward shapes: float64 to rounding, float32 looser (two
float32 computations that sum in different orders). Conv runs every layout path, batch
norm and ReLU the threaded piece driver too, so a fast path cannot drift from the
formulas. Families the cpu backend takes from the reference are checked to be that one
function, not a copy."""

from __future__ import annotations

import numpy as np
import pytest

import gpukernels as gk
from gpukernels import cpu, reference  # noqa: F401 - the packages, for the identity checks
from gpukernels.cpu import activation as cpu_activation
from gpukernels.cpu import batchnorm as cpu_batchnorm
from gpukernels.cpu import conv as cpu_conv
from gpukernels.cpu import cross_entropy as cpu_cross_entropy
from gpukernels.cpu import linear as cpu_linear
from gpukernels.cpu import pool as cpu_pool
from gpukernels.reference import activation as ref_activation
from gpukernels.reference import batchnorm as ref_batchnorm
from gpukernels.reference import conv as ref_conv
from gpukernels.reference import cross_entropy as ref_cross_entropy
from gpukernels.reference import linear as ref_linear
from gpukernels.reference import pool as ref_pool
from tests.helpers import assert_close

#: dtype -> (atol, rtol), relative to the data's scale (see ``_close``)
TOLS = {np.float64: (1e-12, 1e-10), np.float32: (2e-6, 1e-4)}
DTYPES = list(TOLS)
DTYPE_IDS = ["float64", "float32"]


def _close(actual, expected, dtype, name):
    """Same dtype, then close; ``atol`` scales with the largest |expected| (sums of many
    terms round at their own magnitude)."""
    if expected is None:
        assert actual is None, f"{name}: expected None"
        return
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} vs the reference's {expected.dtype}"
    atol, rtol = TOLS[dtype]
    scale = max(1.0, float(np.abs(expected).max())) if np.size(expected) else 1.0
    assert_close(actual, expected, atol=atol * scale, rtol=rtol, name=name)


def _rand(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


@pytest.fixture(params=["serial", "threads"])
def driver(request, knob):
    """The calling thread only, or the threaded piece driver forced on at every size."""
    if request.param == "threads":
        knob(cpu_threads="forced")
    return request.param


# ----------------------------------------------------------------------------- conv

# (N, C, H, W, O, (KH, KW), stride, padding, dilation, groups, bias, activation)
CONV_CASES = [
    (3, 3, 8, 8, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1, True, "relu"),
    (1, 17, 13, 5, 6, (3, 3), (2, 2), (2, 1), (1, 1), 1, False, "leaky_relu"),
    (2, 3, 5, 8, 4, (1, 1), (1, 1), (1, 1), (1, 1), 1, True, None),
    (3, 16, 9, 7, 12, (1, 1), (2, 3), (0, 0), (1, 1), 1, True, "relu"),  # pointwise, odd strides
    (2, 9, 6, 5, 8, (1, 1), (1, 1), (0, 0), (2, 2), 1, False, "leaky_relu"),  # pointwise, stride 1
    (3, 4, 9, 7, 6, (3, 3), (1, 1), (1, 1), (1, 1), 2, True, None),
    (2, 5, 9, 9, 10, (3, 1), (2, 1), (1, 0), (1, 2), 5, True, "relu"),
    (3, 32, 8, 9, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1, True, "relu"),  # flat's per-tap GEMMs
    (2, 33, 9, 7, 40, (3, 3), (1, 1), (0, 2), (2, 1), 1, True, None),
    (3, 16, 4, 4, 32, (3, 3), (1, 1), (1, 1), (1, 1), 1, True, "relu"),  # the digits CNN
    (2, 3, 6, 7, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1, True, "relu"),  # O > 2C: nhwc's col2im grad_x
    (1, 3, 13, 13, 4, (5, 5), (2, 2), (0, 0), (1, 1), 1, False, None),
]
CONV_IDS = [f"n{c[0]}c{c[1]}h{c[2]}w{c[3]}o{c[4]}k{c[5][0]}{c[5][1]}s{c[6][0]}g{c[9]}-{c[11]}" for c in CONV_CASES]


@pytest.mark.parametrize("path", [None, "nhwc", "flat", "batch_inner", "generic", "pointwise", "winograd"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv(case, dtype, path, knob):
    n, c, h, w, o, k, stride, padding, dilation, groups, bias, activation = case
    rng = np.random.default_rng(0)
    x, wt = _rand(rng, (n, c, h, w), dtype), _rand(rng, (o, c // groups, *k), dtype)
    b = _rand(rng, o, dtype) if bias else None
    args = (stride, padding, dilation, groups, activation, 0.2)
    y_ref = ref_conv.conv2d_forward(x, wt, b, *args)
    g = _rand(rng, y_ref.shape, dtype)
    knob(conv_cpu_path=path)
    y = cpu_conv.conv2d_forward(x, wt, b, *args)
    _close(y, y_ref, dtype, f"y [{path}]")
    needs = (True, True, bias)
    # both backwards read one saved output: a tie at 0 of the activation is then the same
    for name, got, want in zip(("grad_x", "grad_w", "grad_b"),
                               cpu_conv.conv2d_backward(g, x, wt, y, *args, needs=needs),
                               ref_conv.conv2d_backward(g, x, wt, y, *args, needs=needs)):
        _close(got, want, dtype, f"{name} [{path}]")


# ----------------------------------------------------------------------------- pool

POOL_CASES = [  # (N, C, H, W), kernel, stride, padding, dilation
    ((2, 3, 7, 9), (3, 3), (2, 2), (1, 1), (1, 1)),
    ((1, 2, 8, 5), (3, 2), (1, 1), (1, 1), (1, 1)),
    ((3, 2, 13, 6), (5, 3), (2, 3), (2, 1), (1, 1)),
    ((1, 3, 11, 12), (3, 3), (1, 2), (1, 0), (2, 3)),
    ((2, 1, 4, 4), (4, 4), (1, 1), (0, 0), (1, 1)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", POOL_CASES, ids=[str(c[0]) + str(c[1]) for c in POOL_CASES])
def test_pool(case, dtype):
    shape, kernel, stride, padding, dilation = case
    rng = np.random.default_rng(1)
    x = rng.integers(0, 4, shape).astype(dtype)  # ties in most windows
    (y, am), (y_ref, am_ref) = (m.max_pool2d_forward(x, kernel, stride, padding, dilation)
                                for m in (cpu_pool, ref_pool))
    np.testing.assert_array_equal(y, y_ref)
    assert am.dtype == am_ref.dtype and am.shape == am_ref.shape
    np.testing.assert_array_equal(am, am_ref)
    g = _rand(rng, y.shape, dtype)
    _close(cpu_pool.max_pool2d_backward(g, am, shape, kernel, stride, padding, dilation),
           ref_pool.max_pool2d_backward(g, am_ref, shape, kernel, stride, padding, dilation), dtype, "max dx")
    x = _rand(rng, shape, dtype)
    for cip in (True, False):  # average pooling has no dilation
        y, y_ref = (m.avg_pool2d_forward(x, kernel, stride, padding, cip) for m in (cpu_pool, ref_pool))
        _close(y, y_ref, dtype, f"avg y cip={cip}")
        g = _rand(rng, y.shape, dtype)
        kept = g.copy()
        _close(cpu_pool.avg_pool2d_backward(g, shape, kernel, stride, padding, cip),
               ref_pool.avg_pool2d_backward(g, shape, kernel, stride, padding, cip), dtype, f"avg dx cip={cip}")
        np.testing.assert_array_equal(g, kept, err_msg="the upstream gradient was written")


# ----------------------------------------------------------------------------- batch norm

@pytest.mark.parametrize("offset", [0.0, 1000.0], ids=["centred", "far-mean"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(9, 5, 13, 17), (3, 4, 2, 3), (7, 3), (4, 2, 5), (2, 1, 1, 1)], ids=str)
def test_batchnorm(shape, dtype, training, offset, driver):
    rng = np.random.default_rng(2)
    c = shape[1]
    x = (rng.standard_normal(shape) * 2 + offset).astype(dtype)
    w, b = _rand(rng, c, dtype), _rand(rng, c, dtype)
    stats = [(rng.standard_normal(c) + offset).astype(dtype), (rng.random(c) + 0.5).astype(dtype)]
    rm, rv = (s.copy() for s in stats)
    rm_ref, rv_ref = (s.copy() for s in stats)
    y, mean, inv = cpu_batchnorm.batch_norm_forward(x, rm, rv, w, b, training, 0.1, 1e-5)
    y_ref, mean_ref, inv_ref = ref_batchnorm.batch_norm_forward(x, rm_ref, rv_ref, w, b, training, 0.1, 1e-5)
    # far from zero, float32's x itself is only known to an ulp of 1000: y to ~1e-4 / std
    loose = 100.0 if dtype == np.float32 and offset else 1.0
    for name, got, want in (("y", y, y_ref), ("mean", mean, mean_ref), ("inv_std", inv, inv_ref),
                            ("running_mean", rm, rm_ref), ("running_var", rv, rv_ref)):
        _close(got, want, dtype, name) if loose == 1.0 else assert_close(got, want, atol=1e-3, rtol=1e-4, name=name)
    g = _rand(rng, shape, dtype)
    for name, got, want in zip(("dx", "dgamma", "dbeta"),
                               cpu_batchnorm.batch_norm_backward(g, x, mean_ref, inv_ref, w, training),
                               ref_batchnorm.batch_norm_backward(g, x, mean_ref, inv_ref, w, training)):
        if loose == 1.0:
            _close(got, want, dtype, name)
        else:
            assert_close(got, want, atol=1e-3 * max(1.0, float(np.abs(want).max())), rtol=1e-3, name=name)


# ----------------------------------------------------------------------------- activation

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(7,), (3, 5, 4, 6), (2, 3, 1, 1), ()], ids=str)
def test_relu_and_add_relu(shape, dtype, driver):
    rng = np.random.default_rng(3)
    a, b, g = (_rand(rng, shape, dtype) for _ in range(3))
    np.testing.assert_array_equal(cpu_activation.relu_forward(a), ref_activation.relu_forward(a))
    y = ref_activation.relu_forward(a)
    np.testing.assert_array_equal(cpu_activation.relu_backward(g, y), ref_activation.relu_backward(g, y))
    np.testing.assert_array_equal(cpu_activation.add_relu_forward(a, b), ref_activation.add_relu_forward(a, b))
    if shape:  # strided views take the reference's expressions
        v = np.asarray(a)[..., ::-1]
        np.testing.assert_array_equal(cpu_activation.relu_forward(v), ref_activation.relu_forward(v))


def test_add_relu_checks_as_the_reference_does():
    a = np.zeros((3, 4))
    with pytest.raises(ValueError, match="add_relu_forward: a shape"):
        cpu_activation.add_relu_forward(a, np.zeros((4, 3)))
    with pytest.raises(TypeError, match="add_relu_forward: a and b must share one dtype"):
        cpu_activation.add_relu_forward(a, np.zeros((3, 4), np.float32))


# ----------------------------------------------------------------------------- cross-entropy

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("n, c, eps, scale", [(7, 5, 0.0, 1.0), (6, 1, 0.2, 1.0), (5, 9, 0.1, 1e4), (1, 3, 1.0, 3.0)])
def test_cross_entropy(n, c, eps, scale, dtype, reduction):
    rng = np.random.default_rng(4)
    z = _rand(rng, (n, c), dtype, scale)
    t = rng.integers(0, c, n)
    t[::3] = -100
    (loss, grad), (loss_ref, grad_ref) = (m.cross_entropy_forward(z, t, reduction, -100, eps)
                                          for m in (cpu_cross_entropy, ref_cross_entropy))
    if np.isnan(loss_ref).all():
        assert np.isnan(loss).all()
    else:
        _close(np.asarray(loss), np.asarray(loss_ref), dtype, "loss")
    _close(grad, grad_ref, dtype, "grad")
    with pytest.raises(ValueError, match=r"target\[0\] = -1 is not a class index"):
        cpu_cross_entropy.cross_entropy_forward(z, np.full(n, -1), reduction, -100, eps)


# ----------------------------------------------------------------------------- linear

# (leading shape of x, in_features, out_features, bias): odd sizes, rows split across
# threads (forced), dW split by rows (O >= 64) and by columns (short O), 3-D x, empty
LINEAR_CASES = [((7,), 5, 3, True), ((33,), 130, 65, False), ((2, 9), 200, 10, True),
                ((64,), 17, 300, True), ((0,), 4, 6, True), ((5,), 3, 0, False)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", LINEAR_CASES, ids=str)
def test_linear_matches_reference(case, dtype, driver):
    lead, i, o, has_bias = case
    rng = np.random.default_rng(11)
    x = _rand(rng, lead + (i,), dtype)
    w = _rand(rng, (o, i), dtype, 0.3)
    b = _rand(rng, (o,), dtype) if has_bias else None
    g = _rand(rng, lead + (o,), dtype)
    _close(cpu_linear.linear_forward(x, w, b), ref_linear.linear_forward(x, w, b), dtype, "y")
    for needs in ((True, True, True), (False, True, False)):
        got = cpu_linear.linear_backward(g, x, w, needs)
        for name, a, e in zip(("dx", "dW", "db"), got, ref_linear.linear_backward(g, x, w, needs)):
            _close(a, e, dtype, name)


# ----------------------------------------------------------------------------- taken as they are

SHARED = {
    "activation": ["heaviside_forward"],  # the others: cpu.activation's block kernels
    "cast": ["cast"],
    "cross_entropy": ["softmax_forward", "softmax_backward", "log_softmax_forward", "log_softmax_backward"],
    "dropout": ["dropout_mask", "dropout_forward", "dropout_backward"],
    "loss": ["mse_loss_forward", "mse_loss_backward"],
    "optim": ["clip_coefficient"],  # the updates: cpu.optim's blocked ones (tests/cpu/test_optim_fast.py)
}


@pytest.mark.parametrize("family", sorted(SHARED))
def test_the_functions_cpu_takes_from_the_reference_are_the_reference(family):
    import importlib

    mine = importlib.import_module(f"gpukernels.cpu.{family}")
    theirs = importlib.import_module(f"gpukernels.reference.{family}")
    for name in SHARED[family]:
        assert getattr(mine, name) is getattr(theirs, name), f"cpu.{family}.{name} is a copy"


@pytest.mark.parametrize("family", ["activation", "batchnorm", "cast", "conv", "cross_entropy", "dropout",
                                    "linear", "loss", "optim", "pool"])
def test_every_reference_function_has_its_cpu_twin(family):
    import importlib
    import inspect

    ref = importlib.import_module(f"gpukernels.reference.{family}")
    mine = importlib.import_module(f"gpukernels.cpu.{family}")
    public = {n for n, f in vars(ref).items() if inspect.isfunction(f) and not n.startswith("_")
              and f.__module__ == ref.__name__}
    missing = sorted(n for n in public if not callable(getattr(mine, n, None)))
    assert not missing, f"gpukernels.cpu.{family} lacks {missing}"
    for name in public:  # the same arguments, in the same order, with the same defaults
        assert inspect.signature(getattr(mine, name)) == inspect.signature(getattr(ref, name)), name


def test_dropout_draws_the_same_mask_for_the_same_seed():
    x = np.ones((50, 40))
    gk.manual_seed(5)
    mask = reference.dropout.dropout_forward(x, 0.4)[1]
    gk.manual_seed(5)
    np.testing.assert_array_equal(cpu.dropout.dropout_forward(x, 0.4)[1], mask)
