"""Property tests (hypothesis): every op family, forward and backward, against PyTorch
float64 on drawn shapes and arguments, on the ``numpy`` backend in float64 (tight) and
on the Triton kernels under the interpreter in float32 (fewer examples: the interpreter
is slow). The backward uses one random upstream gradient for both sides.

Profiles: ``ci`` (default, derandomised) and ``long`` (``HYPOTHESIS_PROFILE=long``), see
conftest.py. A failure prints the drawn case (and a blob to reproduce it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import gpukernels as gk
from gpukernels import backend
from gpukernels import functional as F
from tests.helpers import assert_close

TF = torch.nn.functional
#: backend -> (dtype, atol, rtol, fraction of the profile's examples)
BACKENDS = {"numpy": (np.float64, 1e-9, 1e-7, 1.0), "interpret": (np.float32, 2e-5, 2e-4, 0.34)}
BACKEND_IDS = list(BACKENDS)


def _examples(name):
    return max(2, int(settings().max_examples * BACKENDS[name][3]))


def _setup(name):
    if name == "interpret" and not backend.interpreting():
        pytest.skip("needs TRITON_INTERPRET=1")
    gk.set_backend(name)
    return BACKENDS[name][:3]


def _leaves(rng, dtype, *shapes):
    arrays = [rng.standard_normal(s).astype(dtype) for s in shapes]
    ours = [gk.tensor(a, requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a.astype(np.float64), requires_grad=True) for a in arrays]
    return ours, theirs


def _compare(name, ours_out, theirs_out, ours_in, theirs_in, atol, rtol, seed):
    """Forward, then backward from one random upstream gradient, input by input."""
    assert_close(ours_out, theirs_out.detach(), atol=atol, rtol=rtol, name=f"{name} forward")
    g = np.random.default_rng(seed + 1).standard_normal(tuple(theirs_out.shape))
    ours_out.backward(gk.tensor(g.astype(ours_out.dtype)))
    theirs_out.backward(torch.tensor(g))
    for i, (a, b) in enumerate(zip(ours_in, theirs_in)):
        if b.grad is None:
            continue
        assert a.grad is not None, f"{name}: no gradient for input {i}"
        assert_close(a.grad, b.grad, atol=atol, rtol=rtol, name=f"{name} grad of input {i}")


def _run(name, body):
    """``body`` under ``name``'s share of the profile's examples."""
    settings(max_examples=_examples(name))(body)()


# ----------------------------------------------------------------------------- conv


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c = groups * draw(st.integers(1, 3))
    o = groups * draw(st.integers(1, 3))
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    for size, kk, p, d in ((h, k[0], padding[0], dilation[0]), (w, k[1], padding[1], dilation[1])):
        assume(size + 2 * p - d * (kk - 1) >= 1)
    return dict(n=draw(st.integers(1, 3)), c=c, o=o, h=h, w=w, k=k, stride=stride, padding=padding,
                dilation=dilation, groups=groups, bias=draw(st.booleans()),
                activation=draw(st.sampled_from([None, "relu", "leaky_relu"])), seed=draw(st.integers(0, 999)))


@pytest.mark.parametrize("name", BACKEND_IDS)
def test_conv2d(name):
    dtype, atol, rtol = _setup(name)

    @given(conv_cases())
    def body(case):
        rng = np.random.default_rng(case["seed"])
        shapes = [(case["n"], case["c"], case["h"], case["w"]), (case["o"], case["c"] // case["groups"], *case["k"])]
        if case["bias"]:
            shapes.append((case["o"],))
        ours, theirs = _leaves(rng, dtype, *shapes)
        kw = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"], groups=case["groups"])
        y = F.conv2d(*ours, **kw, activation=case["activation"], negative_slope=0.1)
        t = TF.conv2d(*theirs, **kw)
        t = TF.relu(t) if case["activation"] == "relu" else TF.leaky_relu(t, 0.1) if case["activation"] else t
        _compare(f"conv2d {case}", y, t, ours, theirs, atol, rtol, case["seed"])

    _run(name, body)


# ----------------------------------------------------------------------------- linear, elementwise


@pytest.mark.parametrize("name", BACKEND_IDS)
def test_linear(name):
    dtype, atol, rtol = _setup(name)

    @given(st.integers(1, 17), st.integers(1, 19), st.integers(1, 13), st.booleans(), st.integers(0, 999))
    def body(m, k, n, bias, seed):
        shapes = [(m, k), (n, k)] + ([(n,)] if bias else [])
        ours, theirs = _leaves(np.random.default_rng(seed), dtype, *shapes)
        _compare(f"linear {m}x{k}->{n} bias={bias}", F.linear(*ours), TF.linear(*theirs), ours, theirs,
                 atol, rtol, seed)

    _run(name, body)


shapes = st.lists(st.integers(1, 7), min_size=1, max_size=4).map(tuple)

ACTIVATIONS = {
    "relu": (F.relu, TF.relu),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.2), lambda x: TF.leaky_relu(x, 0.2)),
    "sigmoid": (F.sigmoid, torch.sigmoid),
    "tanh": (F.tanh, torch.tanh),
}


@pytest.mark.parametrize("name", BACKEND_IDS)
@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_activations(name, act):
    dtype, atol, rtol = _setup(name)
    ours_fn, theirs_fn = ACTIVATIONS[act]

    @given(shapes, st.integers(0, 999))
    def body(shape, seed):
        ours, theirs = _leaves(np.random.default_rng(seed), dtype, shape)
        _compare(f"{act} {shape}", ours_fn(ours[0]), theirs_fn(theirs[0]), ours, theirs, atol, rtol, seed)

    _run(name, body)


@st.composite
def broadcast_pairs(draw):
    out = draw(st.lists(st.integers(1, 5), min_size=1, max_size=4))
    a = [d if draw(st.booleans()) else 1 for d in out]
    b = [d if draw(st.booleans()) else 1 for d in out]
    cut = draw(st.integers(0, len(out) - 1))
    return tuple(a), tuple(b[cut:])


@pytest.mark.parametrize("op", ["add", "sub", "mul", "add_relu"])
def test_broadcasting_binary_ops(op):
    dtype, atol, rtol = _setup("numpy")
    fns = {"add": (lambda a, b: a + b,) * 2, "sub": (lambda a, b: a - b,) * 2, "mul": (lambda a, b: a * b,) * 2,
           "add_relu": (F.add_relu, lambda a, b: TF.relu(a + b))}

    @given(broadcast_pairs(), st.integers(0, 999))
    def body(pair, seed):
        if op == "add_relu":
            pair = (pair[0], pair[0])  # the fused kernel takes equal shapes
        ours, theirs = _leaves(np.random.default_rng(seed), dtype, *pair)
        _compare(f"{op} {pair}", fns[op][0](*ours), fns[op][1](*theirs), ours, theirs, atol, rtol, seed)

    _run("numpy", body)


# ----------------------------------------------------------------------------- pooling, batch norm


@st.composite
def pool_cases(draw):
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    assume(h + 2 * padding[0] >= k[0] and w + 2 * padding[1] >= k[1])
    return dict(shape=(draw(st.integers(1, 2)), draw(st.integers(1, 5)), h, w), k=k, stride=stride,
                padding=padding, count_include_pad=draw(st.booleans()), seed=draw(st.integers(0, 999)))


@pytest.mark.parametrize("name", BACKEND_IDS)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pooling(name, kind):
    dtype, atol, rtol = _setup(name)

    @given(pool_cases())
    def body(case):
        ours, theirs = _leaves(np.random.default_rng(case["seed"]), dtype, case["shape"])
        kw = dict(kernel_size=case["k"], stride=case["stride"], padding=case["padding"])
        if kind == "max":
            y, t = F.max_pool2d(ours[0], **kw), TF.max_pool2d(theirs[0], **kw)
        else:
            cip = case["count_include_pad"]
            y = F.avg_pool2d(ours[0], **kw, count_include_pad=cip)
            t = TF.avg_pool2d(theirs[0], **kw, count_include_pad=cip)
        _compare(f"{kind}_pool2d {case}", y, t, ours, theirs, atol, rtol, case["seed"])

    _run(name, body)


@pytest.mark.parametrize("name", BACKEND_IDS)
def test_batch_norm_training(name):
    dtype, atol, rtol = _setup(name)

    @given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 5), st.integers(1, 5),
           st.sampled_from([0.1, 0.5, 1.0]), st.sampled_from([1e-5, 1e-2]), st.booleans(), st.integers(0, 999))
    def body(n, c, h, w, momentum, eps, affine, seed):
        assume(n * h * w > 1)  # torch refuses one value per channel in training
        rng = np.random.default_rng(seed)
        shapes = [(n, c, h, w)] + ([(c,), (c,)] if affine else [])
        ours, theirs = _leaves(rng, dtype, *shapes)
        rm, rv = rng.standard_normal(c).astype(dtype), (1 + rng.random(c)).astype(dtype)
        our_rm, our_rv = gk.tensor(rm.copy()), gk.tensor(rv.copy())
        t_rm, t_rv = torch.tensor(rm.astype(np.float64)), torch.tensor(rv.astype(np.float64))
        y = F.batch_norm(ours[0], our_rm, our_rv, *ours[1:], training=True, momentum=momentum, eps=eps)
        t = TF.batch_norm(theirs[0], t_rm, t_rv, *theirs[1:], training=True, momentum=momentum, eps=eps)
        label = f"batch_norm {(n, c, h, w)} momentum={momentum} eps={eps} affine={affine}"
        _compare(label, y, t, ours, theirs, atol * 10, rtol * 10, seed)
        assert_close(our_rm, t_rm, atol=atol, rtol=rtol, name=f"{label} running_mean")
        assert_close(our_rv, t_rv, atol=atol, rtol=rtol, name=f"{label} running_var")

    _run(name, body)


# ----------------------------------------------------------------------------- softmax, losses


@pytest.mark.parametrize("name", BACKEND_IDS)
@pytest.mark.parametrize("fn", ["softmax", "log_softmax"])
def test_softmax(name, fn):
    dtype, atol, rtol = _setup(name)

    @given(shapes, st.data(), st.integers(0, 999))
    def body(shape, data, seed):
        dim = data.draw(st.integers(-len(shape), len(shape) - 1), label="dim")
        ours, theirs = _leaves(np.random.default_rng(seed), dtype, shape)
        _compare(f"{fn} {shape} dim={dim}", getattr(F, fn)(ours[0], dim), getattr(TF, fn)(theirs[0], dim),
                 ours, theirs, atol, rtol, seed)

    _run(name, body)


@pytest.mark.parametrize("name", BACKEND_IDS)
def test_cross_entropy(name):
    dtype, atol, rtol = _setup(name)

    @given(st.integers(1, 9), st.integers(1, 12), st.sampled_from(["mean", "sum", "none"]),
           st.sampled_from([0.0, 0.1, 0.5]), st.booleans(), st.integers(0, 999))
    def body(n, c, reduction, smoothing, ignore, seed):
        rng = np.random.default_rng(seed)
        ours, theirs = _leaves(rng, dtype, (n, c))
        ours[0].data *= 3
        theirs[0].data *= 3
        target = rng.integers(0, c, n)
        if ignore:
            target[rng.random(n) < 0.3] = -100
            target[0] = min(c - 1, 0)  # at least one row counts (an all-ignored mean is NaN)
        kw = dict(reduction=reduction, label_smoothing=smoothing, ignore_index=-100)
        y = F.cross_entropy(ours[0], gk.tensor(target), **kw)
        t = TF.cross_entropy(theirs[0], torch.tensor(target), **kw)
        _compare(f"cross_entropy {(n, c)} {kw} target={target}", y, t, ours, theirs, atol, rtol, seed)

    _run(name, body)


@pytest.mark.parametrize("name", BACKEND_IDS)
def test_mse_loss(name):
    dtype, atol, rtol = _setup(name)

    @given(shapes, st.sampled_from(["mean", "sum", "none"]), st.integers(0, 999))
    def body(shape, reduction, seed):
        ours, theirs = _leaves(np.random.default_rng(seed), dtype, shape, shape)
        _compare(f"mse_loss {shape} {reduction}", F.mse_loss(*ours, reduction=reduction),
                 TF.mse_loss(*theirs, reduction=reduction), ours, theirs, atol, rtol, seed)

    _run(name, body)
