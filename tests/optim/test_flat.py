"""Flat buffers (gpukernels/optim/flat.py) on the NumPy backend: parameters, gradients
and state as views of one buffer per (param group, device, dtype), kept valid through
backward, zero_grad, Module.to, Module.load_state_dict, optimizer.load_state_dict and a
user rebinding ``.data``; one update call per buffer; fused gradient clipping vs
``torch.nn.utils.clip_grad_norm_``."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import gpukernels as gk  # noqa: E402
import gpukernels.optim as gko  # noqa: E402
from gpukernels import nn  # noqa: E402
from gpukernels.nn.parameter import Parameter  # noqa: E402
from gpukernels.cpu import optim as ref  # noqa: E402
from gpukernels.tensor import Tensor  # noqa: E402

SHAPES = [(1,), (7,), (1025,), (3, 5), ()]


def _arrays(seed=0, dtype=np.float64, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1.0, 1.0, size=s).astype(dtype) for s in shapes]


def _gk_loss(params, coefs):
    """sum_i sum(c_i exp(p_i / 2) + p_i^4 / 4): smooth, not quadratic, every op in tensor.py."""
    total = None
    for p, c in zip(params, coefs):
        term = (gk.tensor(c) * (p * 0.5).exp() + p**4 * 0.25).sum()
        total = term if total is None else total + term
    return total


def _th_loss(params, coefs):
    return sum((torch.from_numpy(c) * torch.exp(p * 0.5) + p**4 * 0.25).sum() for p, c in zip(params, coefs))


def _coefs(arrays, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(a.shape).astype(a.dtype) for a in arrays]


def _views_of(opt, params):
    """Every parameter's data (and gradient, when it has one from autograd) lies in a
    flat buffer of ``opt``."""
    flats = opt.flat_buffers()
    for p in params:
        assert any(p.data is v and np.shares_memory(p.data, f.data) for f in flats for v in f.views)
    return flats


# ----------------------------------------------------------------------------- layout


def test_parameters_become_aligned_views_of_one_buffer_per_group_and_dtype():
    a64 = [Parameter(a) for a in _arrays()]
    a32 = [Parameter(a) for a in _arrays(2, np.float32)]
    values = [p.data.copy() for p in a64 + a32]
    opt = gko.Adam([{"params": a64[:2] + a32[:1]}, {"params": a64[2:] + a32[1:], "lr": 0.1}])
    flats = opt.flat_buffers()
    assert [(f.dtype, len(f.params)) for f in flats] == [(np.float64, 2), (np.float32, 1),
                                                          (np.float64, 3), (np.float32, 4)]
    _views_of(opt, a64 + a32)
    for p, v in zip(a64 + a32, values):
        np.testing.assert_array_equal(p.data, v)
    for f in flats:
        assert all(o * f.dtype.itemsize % 128 == 0 for o in f.offsets)  # cache-line aligned views
        assert f.numel * f.dtype.itemsize % 128 == 0


def test_backward_writes_the_flat_gradient_and_accumulates_in_place():
    params = [Parameter(a) for a in _arrays()]
    coefs = _coefs(params)
    opt = gko.SGD(params, lr=0.1)
    (flat,) = opt.flat_buffers()
    _gk_loss(params, coefs).backward()
    first = [p.grad.data.copy() for p in params]
    for p, view in zip(params, flat.grad_views):
        assert p.grad.data is view
    _gk_loss(params, coefs).backward()  # accumulates into the same slices
    for p, g, view in zip(params, first, flat.grad_views):
        assert p.grad.data is view
        np.testing.assert_allclose(p.grad.data, 2 * g)


def test_zero_grad_set_to_none_then_backward_writes_the_view_again():
    params = [Parameter(a) for a in _arrays()]
    coefs = _coefs(params)
    opt = gko.SGD(params, lr=0.1)
    (flat,) = opt.flat_buffers()
    _gk_loss(params, coefs).backward()
    expected = [p.grad.data.copy() for p in params]
    opt.zero_grad()
    assert all(p.grad is None for p in params)
    _gk_loss(params, coefs).backward()  # overwrites the stale slice, does not add to it
    for p, g, view in zip(params, expected, flat.grad_views):
        assert p.grad.data is view
        np.testing.assert_array_equal(p.grad.data, g)


def test_zero_grad_to_zeros_fills_the_buffer_and_keeps_the_views():
    params = [Parameter(a) for a in _arrays()]
    opt = gko.Adam(params)
    (flat,) = opt.flat_buffers()
    _gk_loss(params, _coefs(params)).backward()
    params[1].grad = None
    opt.zero_grad(set_to_none=False)
    assert params[1].grad is None  # None stays None, as in torch
    assert not flat.grad.any()
    for i in (0, 2, 3, 4):
        assert params[i].grad.data is flat.grad_views[i]


def test_a_gradient_the_user_assigns_is_copied_in_and_stays_the_users():
    p = Parameter(np.linspace(-1, 1, 7))
    opt = gko.SGD([p], lr=0.5)
    mine = Tensor(np.full(7, 2.0))
    p.grad = mine
    opt.step()
    assert p.grad is mine
    np.testing.assert_allclose(p.data, np.linspace(-1, 1, 7) - 1.0)


# ----------------------------------------------------------------------------- one call


def test_one_update_call_per_buffer_whatever_the_number_of_tensors(monkeypatch):
    params = [Parameter(a) for a in _arrays(shapes=[(3, 4)] * 30)]
    opt = gko.Adam(params, lr=0.01)
    calls = []
    real = ref.adam_update
    monkeypatch.setattr(ref, "adam_update", lambda *a, **k: calls.append(k["segments"]) or real(*a, **k))
    for _ in range(3):
        opt.zero_grad()
        _gk_loss(params, _coefs(params)).backward()
        opt.step()
    assert calls == [None, None, None]
    params[4].grad = None
    params[5].grad = None
    opt.step()  # still one call, over the ranges of the parameters that have a gradient
    (flat,) = opt.flat_buffers()
    assert calls[-1] == ((0, flat.offsets[4]), (flat.offsets[6], flat.numel))


# ----------------------------------------------------------------------------- validity


def _twin_run(name, kwargs, steps, between=None, seed=0):
    """gk and torch optimizers on the same loss; ``between(step, gk_params, opt)`` may
    disturb the gk side (move, reload, rebind) between steps."""
    arrays = _arrays(seed)
    coefs = _coefs(arrays)
    gk_params = [Parameter(a.copy()) for a in arrays]
    th_params = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    opt = getattr(gko, name)(gk_params, **kwargs)
    th = getattr(torch.optim, name)(th_params, **kwargs)
    for step in range(steps):
        opt.zero_grad()
        _gk_loss(gk_params, coefs).backward()
        opt.step()
        th.zero_grad()
        _th_loss(th_params, coefs).backward()
        th.step()
        if between is not None:
            between(step, gk_params, opt)
    diff = max(float(np.max(np.abs(g.data - t.detach().numpy()))) for g, t in zip(gk_params, th_params))
    return diff, gk_params, opt


@pytest.mark.parametrize("name,kwargs", [("Adam", {"lr": 0.05, "amsgrad": True}),
                                         ("SGD", {"lr": 0.02, "momentum": 0.9}),
                                         ("RMSprop", {"lr": 0.01, "centered": True, "momentum": 0.5})])
def test_rebinding_data_rebuilds_the_buffer_with_values_and_state(name, kwargs):
    def rebind(step, params, opt):
        if step == 4:
            params[2].data = params[2].data.copy()  # no longer a view: the next step rebuilds
            assert not all(f.valid() for f in opt._flat[0][1])

    diff, params, opt = _twin_run(name, kwargs, 10, rebind)
    assert diff <= 1e-10
    flats = _views_of(opt, params)
    for p in params:
        for name_, value in opt.state[p].items():
            if hasattr(value, "shape"):
                assert any(value is v for f in flats for v in f.state_views[name_])


def test_module_to_moves_whole_buffers_with_gradients_and_state():
    gk.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    opt = gko.Adam(model.parameters(), lr=0.01)
    x = gk.randn(4, 5)
    model(x).sum().backward()
    opt.step()
    before = {id(p): p.data.copy() for p in model.parameters()}
    exp_avg = {id(p): opt.state[p]["exp_avg"].copy() for p in model.parameters()}
    model.to(gk.float64)  # device "cpu" only here: the dtype moves the same way
    params = list(model.parameters())
    (flat,) = _views_of(opt, params)  # immediately, not only after the next step
    assert flat.dtype == np.float64 and flat.grad.dtype == np.float64
    for p in params:
        assert p.grad.data.dtype == np.float64 and np.shares_memory(p.grad.data, flat.grad)
        assert opt.state[p]["exp_avg"].dtype == np.float64
        assert np.shares_memory(opt.state[p]["exp_avg"], flat.state["exp_avg"])
        np.testing.assert_allclose(p.data, before[id(p)], rtol=1e-7)
        np.testing.assert_allclose(opt.state[p]["exp_avg"], exp_avg[id(p)], rtol=1e-7)
    opt.zero_grad()
    model(x.double()).sum().backward()
    opt.step()
    assert opt.state[params[0]]["step"] == 2


def test_moving_part_of_a_buffer_rebuilds_it_at_the_next_step():
    gk.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    opt = gko.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = gk.randn(4, 5)
    model(x).sum().backward()
    opt.step()
    model[0].to(gk.float64)  # half of the buffer's parameters: moved one by one
    assert model[0].weight.dtype == np.float64 and model[2].weight.dtype == np.float32
    for p in model.parameters():  # (a forward would need one dtype)
        p.grad = Tensor(np.ones_like(p.data))
    opt.step()  # rebuilt: one buffer per dtype now
    flats = _views_of(opt, list(model.parameters()))
    assert sorted(str(f.dtype) for f in flats) == ["float32", "float64"]
    assert opt.state[model[0].weight]["momentum_buffer"].dtype == np.float64


def test_module_to_after_the_optimizer_is_gone_moves_tensors_one_by_one():
    model = nn.Linear(3, 2)
    opt = gko.Adam(model.parameters())
    del opt
    model.to(gk.float64)
    assert all(p.dtype == np.float64 for p in model.parameters())


def test_model_load_state_dict_copies_into_the_views():
    gk.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 3))
    other = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 3))
    opt = gko.AdamW(model.parameters())
    model.load_state_dict(other.state_dict())
    _views_of(opt, list(model.parameters()))
    for a, b in zip(model.parameters(), other.parameters()):
        np.testing.assert_array_equal(a.data, b.data)


def test_optimizer_load_state_dict_puts_the_state_back_in_the_buffers():
    def reload(step, params, opt):
        if step == 3:
            saved = opt.state_dict()
            opt.load_state_dict(saved)

    diff, params, opt = _twin_run("Adam", {"lr": 0.05, "amsgrad": True}, 8, reload)
    assert diff <= 1e-10
    (flat,) = opt.flat_buffers()
    for i, p in enumerate(params):
        for name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            assert opt.state[p][name] is flat.state_views[name][i]


def test_add_param_group_gets_its_own_buffer():
    a, b = Parameter(np.ones(3)), Parameter(np.ones(5))
    opt = gko.SGD([a], lr=0.1)
    opt.add_param_group({"params": [b], "lr": 0.5})
    flats = _views_of(opt, [a, b])
    assert len(flats) == 2
    a.grad, b.grad = Tensor(np.ones(3)), Tensor(np.ones(5))
    opt.step()
    np.testing.assert_allclose(a.data, 0.9)
    np.testing.assert_allclose(b.data, 0.5)


# ----------------------------------------------------------------------------- clipping


CLIP_CASES = [
    ("SGD", {"lr": 0.05, "momentum": 0.9}),
    ("Adagrad", {"lr": 0.1}),
    ("RMSprop", {"lr": 0.01, "centered": True}),
    ("Adam", {"lr": 0.05}),
    ("AdamW", {"lr": 0.05, "amsgrad": True}),
]


@pytest.mark.parametrize("name,kwargs", CLIP_CASES, ids=[c[0] for c in CLIP_CASES])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_max_grad_norm_matches_torch_clip_grad_norm(name, kwargs, max_norm):
    arrays = _arrays(3)
    coefs = _coefs(arrays)
    gk_params = [Parameter(a.copy()) for a in arrays]
    th_params = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    opt = getattr(gko, name)(gk_params, max_grad_norm=max_norm, **kwargs)
    th = getattr(torch.optim, name)(th_params, **kwargs)
    for step in range(15):
        skip = 1 if step % 3 == 0 else None  # a parameter without gradient: not in the norm
        opt.zero_grad()
        _gk_loss(gk_params, coefs).backward()
        th.zero_grad()
        _th_loss(th_params, coefs).backward()
        if skip is not None:
            gk_params[skip].grad, th_params[skip].grad = None, None
        grads = [p.grad.data.copy() for p in gk_params if p.grad is not None]
        opt.step()
        norm = torch.nn.utils.clip_grad_norm_(th_params, max_norm)
        th.step()
        assert float(opt.last_grad_norm) == pytest.approx(float(norm), rel=1e-12)
        for p, g in zip([p for p in gk_params if p.grad is not None], grads):
            np.testing.assert_array_equal(p.grad.data, g)  # the gradients are not scaled
    diff = max(float(np.max(np.abs(g.data - t.detach().numpy()))) for g, t in zip(gk_params, th_params))
    assert diff <= 1e-10


def test_reference_clip_coefficient_segments_and_nan():
    g = np.arange(10.0)
    out = ref.clip_coefficient([g, np.ones(4)], 1.0, segments=[[(0, 2), (8, 10)], None])
    norm = np.sqrt(0 + 1 + 64 + 81 + 4)
    np.testing.assert_allclose(out, [norm, 1.0 / (norm + 1e-6)])
    assert ref.clip_coefficient([g], 1e9)[1] == 1.0
    nan = ref.clip_coefficient([np.array([np.nan, 1.0])], 1.0)
    assert np.isnan(nan).all()


@pytest.mark.parametrize("bad", [0, -1.0, "1", True])
def test_max_grad_norm_is_validated(bad):
    with pytest.raises(ValueError, match="max_grad_norm"):
        gko.Adam([Parameter(np.ones(2))], max_grad_norm=bad)


def test_segments_must_lie_inside_the_arrays():
    p, g = np.zeros(8), np.ones(8)
    with pytest.raises(ValueError, match=r"segments: \(4, 9\) is not a range inside the 8 elements"):
        ref.sgd_update(p, g, None, lr=0.1, segments=[(4, 9)])
    with pytest.raises(ValueError, match="p must be C-contiguous"):
        ref.sgd_update(np.zeros((4, 4)).T, np.ones((4, 4)), None, lr=0.1, segments=[(0, 4)])


def test_benchmark_entry_checks_then_times_on_the_cpu():
    from benchmarks import bench_optim

    sizes = bench_optim.resnet50_sizes()
    assert len(sizes) == 161 and sum(sizes) == 25_557_032
    (result,) = bench_optim.run(quick=True, repeat=1)
    n = sum(bench_optim.scaled_sizes(100_000))
    assert result.entry == "optim adam" and result.bytes == 28 * n
    assert result.ours_s > 0 and result.theirs_s > 0
