"""Triton optimizer kernels (gpukernels/triton/optim.py) on Triton's interpreter: every
optimizer and option vs ``torch.optim`` after 30 steps on a non-quadratic loss (float64
to rounding, float32 to 2e-4), parameters of 1, 7, 1025 and 15 elements in one flat
buffer; one launch per step counted; the launchers vs the NumPy reference (segments,
device clipping coefficient, bf16 / fp16 gradients with float32 master weights); the
norm reduction; state_dict round trip and flat views under ``Module.to``."""

from __future__ import annotations

import numpy as np
import pytest

import gpukernels as gk
import gpukernels.optim as gko
from gpukernels import backend, nn
from gpukernels.nn.parameter import Parameter
from gpukernels.reference import optim as ref
from gpukernels.tensor import Tensor

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(not backend.interpreting(), reason="needs TRITON_INTERPRET=1")

SHAPES = [(1,), (7,), (1025,), (3, 5)]


@pytest.fixture
def tri():
    gk.set_backend("interpret")
    from gpukernels.triton import optim

    return optim


def _arrays(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1.0, 1.0, size=s).astype(dtype) for s in SHAPES]


def _coefs(arrays):
    rng = np.random.default_rng(1)
    return [rng.standard_normal(a.shape).astype(a.dtype) for a in arrays]


def _gk_loss(params, coefs):
    """sum(c exp(p / 2) + p^4 / 4): smooth, not quadratic; tensor.py ops only."""
    total = None
    for p, c in zip(params, coefs):
        term = (gk.tensor(c) * (p * 0.5).exp() + p**4 * 0.25).sum()
        total = term if total is None else total + term
    return total


def _model_loss(model):
    """A loss of the model's parameters alone (tensor.py ops: no other op family's
    kernels involved): sum(exp(p / 2) + p^4 / 4)."""
    return sum(((p * 0.5).exp() + p**4 * 0.25).sum() for p in model.parameters())


def _th_loss(params, coefs):
    return sum((torch.from_numpy(c) * torch.exp(p * 0.5) + p**4 * 0.25).sum() for p, c in zip(params, coefs))


def _run_vs_torch(tri, name, kwargs, dtype, steps=30, max_grad_norm=None, skip=lambda step: ()):
    """Both optimizers ``steps`` steps on the loss; returns (max |difference|, launches
    per step, gk params)."""
    arrays = _arrays(dtype)
    coefs = _coefs(arrays)
    gk_params = [Parameter(a.copy()) for a in arrays]
    th_params = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    opt = getattr(gko, name)(gk_params, max_grad_norm=max_grad_norm, **kwargs)
    th = getattr(torch.optim, name)(th_params, **kwargs)
    sign = -1.0 if kwargs.get("maximize") else 1.0  # maximize the negated loss: still bounded
    launches = []
    for step in range(steps):
        opt.zero_grad()
        (_gk_loss(gk_params, coefs) * sign).backward()
        th.zero_grad()
        (_th_loss(th_params, coefs) * sign).backward()
        for i in skip(step):
            gk_params[i].grad = th_params[i].grad = None
        before = tri.LAUNCHES
        opt.step()
        launches.append(tri.LAUNCHES - before)
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(th_params, max_grad_norm)
        th.step()
    assert all(np.isfinite(g.data).all() for g in gk_params)
    diff = max(float(np.max(np.abs(g.data - t.detach().numpy()))) for g, t in zip(gk_params, th_params))
    moved = max(float(np.max(np.abs(g.data - a))) for g, a in zip(gk_params, arrays))
    assert moved > 1e-3, "the parameters did not move: the comparison would be vacuous"
    return diff, launches, gk_params


CASES = [
    ("SGD", {"lr": 0.05}),
    ("SGD", {"lr": 0.02, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.05}),
    ("SGD", {"lr": 0.02, "momentum": 0.8, "nesterov": True, "maximize": True}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.05, "weight_decay": 0.1}),
    ("Adagrad", {"lr": 0.1, "initial_accumulator_value": 0.5, "eps": 1e-6, "maximize": True}),
    ("RMSprop", {"lr": 0.01}),
    ("RMSprop", {"lr": 0.005, "momentum": 0.5, "centered": True, "weight_decay": 0.1}),
    ("RMSprop", {"lr": 0.01, "alpha": 0.3, "centered": True, "maximize": True}),  # 1 - alpha >= 0.5
    ("Adam", {"lr": 0.05}),
    ("Adam", {"lr": 0.05, "betas": (0.3, 0.99), "weight_decay": 0.1}),  # the other lerp branch
    ("Adam", {"lr": 0.05, "amsgrad": True, "maximize": True, "eps": 1e-6}),
    ("AdamW", {"lr": 0.05, "weight_decay": 0.1}),
    ("AdamW", {"lr": 0.05, "weight_decay": 0.1, "amsgrad": True}),
]


def _case_id(case):
    name, kwargs = case
    return name + "-" + "-".join(f"{k}={v}" for k, v in kwargs.items())


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_every_option_matches_torch_in_float64_with_one_launch_per_step(tri, case):
    diff, launches, _ = _run_vs_torch(tri, *case, np.float64)
    assert diff <= 1e-10
    assert launches == [1] * 30


FLOAT32 = [CASES[2], CASES[3], CASES[6], CASES[10], CASES[12]]  # every optimizer, most options


@pytest.mark.parametrize("case", FLOAT32, ids=[_case_id(c) for c in FLOAT32])
def test_float32_matches_torch_to_2e_4_after_30_steps(tri, case):
    diff, launches, params = _run_vs_torch(tri, *case, np.float32)
    assert diff <= 2e-4
    assert all(p.dtype == np.float32 for p in params)
    assert launches == [1] * 30


@pytest.mark.parametrize("name,kwargs", [("SGD", {"lr": 0.05, "momentum": 0.9}), ("Adam", {"lr": 0.05})])
def test_fused_clipping_matches_clip_grad_norm_with_two_launches(tri, name, kwargs):
    diff, launches, _ = _run_vs_torch(tri, name, kwargs, np.float64, steps=10, max_grad_norm=1.0)
    assert diff <= 1e-10
    assert launches == [2] * 10  # the norm reduction, then the update


def test_parameters_without_grad_are_untouched_inside_the_one_launch(tri):
    # parameters 1 and 3 (7 and 15 elements, not neighbours) have no gradient for 5 steps:
    # the update runs over a table of the other ranges and the norm leaves them out
    def skip(step):
        return (1, 3) if step < 5 else ()

    diff, launches, params = _run_vs_torch(tri, "Adam", {"lr": 0.05}, np.float64, steps=8, skip=skip,
                                           max_grad_norm=2.0)
    assert diff <= 1e-10  # torch skips them too: their values and state did not move
    # then they join at step count 1 while the others are at 6: one update per count
    assert launches == [2] * 5 + [3] * 3


@pytest.mark.parametrize("capturable", [False, True])
def test_one_launch_per_step_for_a_model_of_many_tensors(tri, capturable):
    """One update launch over all 24 tensors; capturable=True adds the one-program
    kernel that advances the device step counts and computes the bias corrections."""
    gk.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(5, 5) for _ in range(12)])
    opt = gko.AdamW(model.parameters(), lr=1e-2, capturable=capturable)
    assert len(list(model.parameters())) == 24
    for _ in range(2):
        opt.zero_grad()
        _model_loss(model).backward()
        before = tri.LAUNCHES
        opt.step()
        assert tri.LAUNCHES - before == (2 if capturable else 1)
    (flat,) = opt.flat_buffers()
    for p in model.parameters():
        assert np.shares_memory(p.data, flat.data) and np.shares_memory(p.grad.data, flat.grad)
    if capturable:
        np.testing.assert_array_equal(flat.steps, np.full(24, 2.0, np.float32))


# ----------------------------------------------------------------------------- launchers


def _state(rng, n, dtype, positive=False):
    a = rng.standard_normal(n).astype(dtype)
    return np.abs(a) if positive else a


UPDATES = {
    "sgd": lambda m, p, g, s, **kw: m.sgd_update(p, g, s[0], lr=0.05, momentum=0.9, nesterov=True,
                                                  weight_decay=0.1, **kw),
    "adagrad": lambda m, p, g, s, step, **kw: m.adagrad_update(p, g, s[1], step=step, lr=0.1, lr_decay=0.01, **kw),
    "rmsprop": lambda m, p, g, s, **kw: m.rmsprop_update(p, g, s[1], s[0], s[2], lr=0.01, centered=True,
                                                          momentum=0.9, weight_decay=0.1, **kw),
    "adam": lambda m, p, g, s, step, **kw: m.adam_update(p, g, s[0], s[1], s[2], step=step, lr=0.05,
                                                          amsgrad=True, weight_decay=0.1, decoupled=True,
                                                          **kw),
}


LAUNCHER_CASES = [(k, "float32") for k in sorted(UPDATES)] + [("adam", "float16"), ("adam", "bfloat16"),
                                                               ("sgd", "bfloat16")]


@pytest.mark.parametrize("kernel,grad_dtype", LAUNCHER_CASES)
def test_launchers_match_the_reference_for_20_steps(tri, kernel, grad_dtype):
    """float32 master weights, gradients in float32 / float16 / bf16 (uint16 bits; the
    reference gets the same values widened), a segment table that skips a middle range
    and clipping by a device coefficient."""
    from gpukernels.triton._common import from_float32, to_float32

    rng = np.random.default_rng(7)
    n = 1100
    p0 = rng.uniform(-1, 1, n).astype(np.float32)
    # momentum / exp_avg / grad_avg small and signed, the squares' averages >= 1 (so
    # that v - m^2 > 0 for centered RMSprop)
    states0 = [0.3 * _state(rng, n, np.float32), 1 + _state(rng, n, np.float32, positive=True),
               1 + _state(rng, n, np.float32, positive=True)]
    ours = [p0.copy(), [s.copy() for s in states0]]
    theirs = [p0.copy(), [s.copy() for s in states0]]
    segments = [(0, 32), (64, 1100)]
    scale = np.array([0.75], np.float32)
    update = UPDATES[kernel]
    for step in range(1, 21):
        g32 = rng.standard_normal(n).astype(np.float32)
        if grad_dtype == "bfloat16":
            g = from_float32(np, g32, np.uint16)
            g_ref = to_float32(np, g)
        else:
            g = g32.astype(grad_dtype)
            g_ref = g.astype(np.float32)
        kw = {"step": step} if kernel in ("adagrad", "adam") else {}
        before = tri.LAUNCHES
        update(tri, ours[0], g, ours[1], grad_scale=scale, segments=segments, **kw)
        assert tri.LAUNCHES - before == 1
        update(ref, theirs[0], g_ref, theirs[1], grad_scale=scale, segments=segments, **kw)
    assert np.isfinite(ours[0]).all() and all(np.isfinite(s).all() for s in ours[1])
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ours[0][32:64], p0[32:64])  # outside the segments: untouched
    for a, b, s0 in zip(ours[1], theirs[1], states0):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(a[32:64], s0[32:64])


def test_host_float_scale_and_unaligned_segments(tri):
    rng = np.random.default_rng(3)
    p = rng.standard_normal(50).astype(np.float32)
    g = rng.standard_normal(50).astype(np.float32)
    ours, theirs = p.copy(), p.copy()
    tri.sgd_update(ours, g, None, lr=0.1, grad_scale=0.5, segments=[(3, 9), (20, 21)])
    ref.sgd_update(theirs, g, None, lr=0.1, grad_scale=0.5, segments=[(3, 9), (20, 21)])
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_clip_coefficient_matches_the_reference(tri, dtype):
    from gpukernels.triton._common import from_float32, to_float32

    rng = np.random.default_rng(5)
    sizes = [3000, 7, 1100]
    grads32 = [rng.standard_normal(n).astype(np.float64 if dtype == "float64" else np.float32) for n in sizes]
    grads = [from_float32(np, g, np.uint16) for g in grads32] if dtype == "bfloat16" else grads32
    widened = [to_float32(np, g) for g in grads] if dtype == "bfloat16" else grads
    segments = [None, [(0, 7)], [(0, 1024), (1040, 1100)]]
    before = tri.LAUNCHES
    out = tri.clip_coefficient(grads, 2.0, segments=segments)
    assert tri.LAUNCHES - before == 3  # one per array (an optimizer has one buffer: one)
    expected = ref.clip_coefficient(widened, 2.0, segments=segments)
    assert out.dtype == (np.float64 if dtype == "float64" else np.float32)
    np.testing.assert_allclose(out, expected, rtol=1e-6 if dtype != "float64" else 1e-12)
    again = tri.clip_coefficient(grads, 2.0, segments=segments)  # the counter was reset
    np.testing.assert_array_equal(again, out)
    big = tri.clip_coefficient(grads, 1e6, segments=segments)
    assert big[1] == 1.0
    nan = tri.clip_coefficient([np.array([np.nan, 1.0], np.float32)], 1.0)
    assert np.isnan(nan).all()
    empty = tri.clip_coefficient([grads[0]], 1.0, segments=[[]])
    np.testing.assert_array_equal(empty, [0.0, 1.0])


def test_launcher_errors_name_the_argument(tri):
    p, g, b = np.zeros(8, np.float32), np.ones(8, np.float32), np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="p must be C-contiguous"):
        tri.sgd_update(np.zeros((4, 4), np.float32).T, np.ones((4, 4), np.float32), None, lr=0.1)
    with pytest.raises(ValueError, match="momentum_buffer must have p's shape"):
        tri.sgd_update(p, g, np.zeros(8, np.float64), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="momentum_buffer is required with momentum != 0"):
        tri.sgd_update(p, g, None, lr=0.1, momentum=0.9)
    with pytest.raises(TypeError, match="g must be float32.*got int64"):
        tri.sgd_update(p, np.ones(8, np.int64), None, lr=0.1)
    with pytest.raises(ValueError, match=r"g has shape \(7,\), p has shape \(8,\)"):
        tri.sgd_update(p, np.ones(7, np.float32), b, lr=0.1)
    with pytest.raises(ValueError, match=r"segments: \(0, 9\) is not a range inside the 8"):
        tri.sgd_update(p, g, None, lr=0.1, segments=[(0, 9)])
    with pytest.raises(ValueError, match="grad_scale must be one float32/float64 element"):
        tri.sgd_update(p, g, None, lr=0.1, grad_scale=np.ones(2, np.float32))
    with pytest.raises(ValueError, match="max_exp_avg_sq is required with amsgrad=True"):
        tri.adam_update(p, g, b, b.copy(), None, step=1, lr=0.1, amsgrad=True)


# ----------------------------------------------------------------------------- optimizer


def test_state_dict_round_trip_and_module_to_keep_one_launch(tri):
    gk.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2))
    twin = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2))
    opt = gko.Adam(model.parameters(), lr=0.05, amsgrad=True)
    for _ in range(3):
        opt.zero_grad()
        _model_loss(model).backward()
        opt.step()
    twin.load_state_dict(model.state_dict())
    opt2 = gko.Adam(twin.parameters(), lr=1.0, amsgrad=True)
    opt2.load_state_dict(opt.state_dict())
    (flat,) = opt2.flat_buffers()
    for p in twin.parameters():
        assert np.shares_memory(p.data, flat.data)
        assert np.shares_memory(opt2.state[p]["exp_avg"], flat.state["exp_avg"])
    model.to(gk.float64)
    twin.to(gk.float64)  # both buffers move whole: still one launch, float64 kernels
    for m, o in ((model, opt), (twin, opt2)):
        (flat,) = o.flat_buffers()
        assert flat.dtype == np.float64
        assert all(np.shares_memory(p.data, flat.data) for p in m.parameters())
    for _ in range(3):
        for m, o in ((model, opt), (twin, opt2)):
            o.zero_grad()
            _model_loss(m).backward()
            before = tri.LAUNCHES
            o.step()
            assert tri.LAUNCHES - before == 1
    for a, b in zip(model.parameters(), twin.parameters()):
        np.testing.assert_array_equal(a.data, b.data)


def test_optimizer_dispatches_to_the_triton_module(tri):
    p = Parameter(np.ones(3, np.float32))
    p.grad = Tensor(np.ones(3, np.float32))
    gko.SGD([p], lr=0.5).step()
    assert backend.last_dispatch["optim"] == "gpukernels.triton.optim"
    np.testing.assert_allclose(p.data, 0.5)
