"""``capturable=True`` (CUDA graphs) for the optimizers, on the NumPy backend and on the
Triton kernels under the interpreter: eager results equal ``capturable=False``'s; the
step counts live in device arrays advanced by the update call; a capture simulated by
recording the kernel launches of one ``step()`` and replaying them equals eager steps
(no step-dependent value is baked into a launch); ``step()`` refuses captures that
would replay wrongly; checkpoints load across the flag."""

from __future__ import annotations

import contextlib
import pickle

import numpy as np
import pytest

import gpukernels as gk
import gpukernels.optim as gko
from gpukernels import backend, cuda_graph, nn
from gpukernels.nn.parameter import Parameter
from gpukernels.reference import optim as ref
from gpukernels.tensor import Tensor

SHAPES = [(7,), (3, 5), (1,), (2, 3, 4), (), (1025,)]

CASES = [
    ("Adam", {"lr": 0.05}),
    ("Adam", {"lr": 0.05, "betas": (0.3, 0.99), "weight_decay": 0.1, "maximize": True}),
    ("AdamW", {"lr": 0.05, "weight_decay": 0.1, "amsgrad": True}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.05, "weight_decay": 0.1}),
]
BACKENDS = ["numpy", "interpret"]


def _case_id(case):
    name, kwargs = case
    return name + "-" + "-".join(f"{k}={v}" for k, v in kwargs.items())


@pytest.fixture(params=BACKENDS)
def backend_name(request):
    if request.param == "interpret" and not backend.interpreting():
        pytest.skip("needs TRITON_INTERPRET=1")
    gk.set_backend(request.param)
    return request.param


def _launches():
    """Kernel launches of the Triton optim module so far (0 on the NumPy backend)."""
    if gk.get_backend() != "interpret":
        return 0
    from gpukernels.triton import optim as tri

    return tri.LAUNCHES


def _arrays(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1.0, 1.0, size=s).astype(dtype) for s in SHAPES]


def _grad(p):
    """d/dp (-3 cos p + p^4 / 4): smooth, not quadratic."""
    return (3.0 * np.sin(p) + p**3).astype(p.dtype)


def _write_grads(params, skip=()):
    """Gradients written in place into each parameter's slice of the flat gradient
    buffer (as backward does), so a replayed launch sees them."""
    for i, p in enumerate(params):
        if i in skip:
            p.grad = None
            continue
        if p.grad is None:
            p.grad = Tensor(p._grad_view)
        p.grad.data[...] = _grad(p.data)


def _run(name, kwargs, dtype, capturable, steps=30, skip=lambda step: ()):
    params = [Parameter(a) for a in _arrays(dtype)]
    opt = getattr(gko, name)(params, capturable=capturable, **kwargs)
    launches = []
    for step in range(steps):
        _write_grads(params, skip(step))
        before = _launches()
        opt.step()
        launches.append(_launches() - before)
    return params, opt, launches


def _skip_two(step):  # parameters 1 and 4 have no gradient for 4 steps, then join late
    return (1, 4) if step < 4 else ()


# ----------------------------------------------------------------------------- eager


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_capturable_equals_host_steps_for_30_steps(backend_name, case, dtype):
    name, kwargs = case
    host, host_opt, host_launches = _run(name, kwargs, dtype, False, skip=_skip_two)
    dev, dev_opt, dev_launches = _run(name, kwargs, dtype, True, skip=_skip_two)
    tol = 1e-6 if dtype == np.float32 else 1e-12  # observed: 0 (float32), 4e-16 (float64)
    for a, b, start in zip(host, dev, _arrays(dtype)):
        np.testing.assert_allclose(b.data, a.data, rtol=tol, atol=tol)
    assert max(float(np.max(np.abs(p.data - s), initial=0)) for p, s in zip(dev, _arrays(dtype))) > 1e-3
    for i, p in enumerate(dev):
        step = dev_opt.state[p]["step"]
        assert isinstance(step, np.ndarray) and step.shape == () and step.dtype == np.float32
        assert step == host_opt.state[host[i]]["step"] == (26 if i in (1, 4) else 30)
        (flat,) = dev_opt.flat_buffers()
        assert np.shares_memory(step, flat.steps)
    if backend_name == "interpret":
        # one update per distinct count (the two that joined late have their own), and
        # with capturable one one-program step kernel before each
        assert host_launches == [1] * 4 + [2] * 26
        assert dev_launches == [2] * 4 + [4] * 26


@pytest.mark.parametrize("name", ["SGD", "RMSprop"])
def test_capturable_changes_nothing_for_sgd_and_rmsprop(backend_name, name):
    kwargs = {"lr": 0.02, "momentum": 0.9} if name == "SGD" else {"lr": 0.01, "centered": True}
    host, host_opt, host_launches = _run(name, kwargs, np.float32, False, steps=10)
    dev, dev_opt, dev_launches = _run(name, kwargs, np.float32, True, steps=10)
    for a, b in zip(host, dev):
        np.testing.assert_array_equal(a.data, b.data)
    assert dev_launches == host_launches
    assert dev_opt.param_groups[0]["capturable"] is True


# ----------------------------------------------------------------------------- replay


@contextlib.contextmanager
def capturing():
    """``cuda_graph.capturing()`` is True inside (as while gpukernels.cuda_graph records)."""
    cuda_graph._set_capturing(True)
    try:
        yield
    finally:
        cuda_graph._set_capturing(False)


@contextlib.contextmanager
def recorded_launches(monkeypatch):
    """A CUDA graph capture, simulated under the interpreter: every Triton launch is
    recorded (not run) with the arguments it got; ``replay()`` runs them again, with
    those very arguments, as a graph replay does."""
    from triton.runtime.interpreter import InterpretedFunction

    run = InterpretedFunction.run
    tape = []
    monkeypatch.setattr(InterpretedFunction, "run", lambda self, *a, **k: tape.append((self, a, k)))

    def replay():
        for fn, args, kwargs in tape:
            run(fn, *args, **kwargs)

    try:
        with capturing():
            yield tape, replay
    finally:
        monkeypatch.setattr(InterpretedFunction, "run", run)


@contextlib.contextmanager
def captured(monkeypatch):
    """A capture on the current backend: launches recorded on the interpreter, the
    NumPy backend's step run as is (it has no kernels to record)."""
    if gk.get_backend() == "interpret":
        with recorded_launches(monkeypatch) as (tape, replay):
            yield tape
    else:
        with capturing():
            yield []


REPLAY_CASES = CASES + [("AdamW", {"lr": 0.05, "weight_decay": 0.1, "max_grad_norm": 1.0})]


@pytest.mark.parametrize("case", REPLAY_CASES, ids=[_case_id(c) for c in REPLAY_CASES])
def test_replayed_capture_equals_eager_steps(monkeypatch, case):
    if not backend.interpreting():
        pytest.skip("needs TRITON_INTERPRET=1")
    gk.set_backend("interpret")
    name, kwargs = case
    warmup, replays = 5, 12
    eager, _, _ = _run(name, kwargs, np.float32, True, steps=warmup + 1 + replays, skip=_skip_two)

    params = [Parameter(a) for a in _arrays(np.float32)]
    opt = getattr(gko, name)(params, capturable=True, **kwargs)
    for step in range(warmup):
        _write_grads(params, _skip_two(step))
        opt.step()
    _write_grads(params)  # all take part from step 4 on: two cohorts (counts 5 and 1)
    snapshot = [p.data.copy() for p in params]
    with recorded_launches(monkeypatch) as (tape, replay):
        opt.step()
    assert len(tape) == 4 + ("max_grad_norm" in kwargs)  # (step kernel, update) per cohort; nothing ran
    for p, s in zip(params, snapshot):
        np.testing.assert_array_equal(p.data, s)
    for _ in range(1 + replays):  # the captured step, then the replays, each on fresh gradients
        _write_grads(params)
        replay()
    for a, b in zip(eager, params):
        np.testing.assert_array_equal(b.data, a.data)  # same kernels, same scalars: bitwise
    counts = [float(opt.state[p]["step"]) for p in params]
    assert counts == [warmup + 1 + replays - (4 if i in (1, 4) else 0) for i in range(len(params))]
    # the replays advanced the device counts: a checkpoint has them
    saved = opt.state_dict()["state"]
    assert [saved[i]["step"] for i in range(len(params))] == counts


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("name,kwargs,reason", [
    ("Adam", {}, r"Adam\(capturable=False\) cannot be captured in a CUDA graph: its bias corrections would "
                 r"stay those of step N; construct it with capturable=True"),
    ("AdamW", {"amsgrad": True}, r"AdamW\(capturable=False\) cannot be captured.*bias corrections"),
    ("Adagrad", {"lr_decay": 0.01}, r"Adagrad\(capturable=False\) cannot be captured.*decayed learning rate"),
])
def test_capture_of_a_step_dependent_update_needs_capturable(backend_name, name, kwargs, reason):
    params = [Parameter(a) for a in _arrays(np.float32)]
    opt = getattr(gko, name)(params, **kwargs)
    _write_grads(params)
    opt.step()
    before = [p.data.copy() for p in params]
    with capturing(), pytest.raises(RuntimeError, match=reason):
        opt.step()
    for p, b in zip(params, before):  # refused before anything ran
        np.testing.assert_array_equal(p.data, b)


@pytest.mark.parametrize("name,kwargs", [
    ("Adagrad", {}),  # lr_decay = 0: clr = lr every step
    ("SGD", {"lr": 0.1}),  # no momentum: no state at all, even the first step captures
    ("RMSprop", {"momentum": 0.5}),
])
def test_capture_of_an_update_that_does_not_depend_on_the_step(monkeypatch, backend_name, name, kwargs):
    params = [Parameter(a) for a in _arrays(np.float32)]
    opt = getattr(gko, name)(params, **kwargs)
    _write_grads(params)
    if name == "RMSprop":
        opt.step()  # creates its state
    with captured(monkeypatch) as tape:
        opt.step()
    assert len(tape) == (backend_name == "interpret")  # one update recorded, no step kernel


@pytest.mark.parametrize("name,kwargs,what", [
    ("SGD", {"momentum": 0.9}, "momentum buffers not yet created"),
    ("RMSprop", {"centered": True}, r"square averages \(square_avg\), gradient averages"),
    ("Adam", {"capturable": True}, r"first moments \(exp_avg\)"),
])
def test_capture_of_the_first_step_asks_for_an_eager_step(monkeypatch, backend_name, name, kwargs, what):
    params = [Parameter(a) for a in _arrays(np.float32)]
    opt = getattr(gko, name)(params, **kwargs)
    _write_grads(params)
    with capturing(), pytest.raises(RuntimeError, match=f"{what}.*run at least one eager step before capture"):
        opt.step()
    assert not any(opt.state.get(p) for p in params)  # nothing was created
    opt.step()  # eager
    with captured(monkeypatch):
        opt.step()
    # a parameter that joins later would have its state created during the capture
    late = Parameter(np.ones(3, np.float32))
    opt.add_param_group({"params": [late]})
    _write_grads(params + [late])
    with capturing(), pytest.raises(RuntimeError, match="first step of 1 parameter"):
        opt.step()


def test_capture_refuses_a_buffer_rebuild_and_state_copied_in(backend_name):
    params = [Parameter(a) for a in _arrays(np.float32)]
    opt = gko.Adam(params, capturable=True)
    _write_grads(params)
    opt.step()
    params[0].data = params[0].data.copy()  # rebinds .data: the buffer must be rebuilt
    with capturing(), pytest.raises(RuntimeError, match="flat buffers must be rebuilt"):
        opt.step()
    opt.step()  # eager: rebuilt, the step count copied on the device
    assert opt.state[params[0]]["step"] == 2
    opt.state[params[2]]["exp_avg"] = np.zeros(1, np.float32)
    with capturing(), pytest.raises(RuntimeError, match=r"\['exp_avg'\] was assigned outside"):
        opt.step()


def test_no_host_read_of_the_step_counts_when_capturable(monkeypatch):
    """The NumPy backend's 'device' is the host: counts that refuse to be read as
    Python numbers show that step() never reads them (what a CUDA step must not do)."""

    class NoHostRead(np.ndarray):
        def _refuse(self, *args):
            raise AssertionError("a step count was read on the host")

        __float__ = __int__ = __index__ = __bool__ = item = tolist = _refuse

    for name, kwargs in CASES:
        params = [Parameter(a) for a in _arrays(np.float32)]
        opt = getattr(gko, name)(params, capturable=True, **kwargs)
        _write_grads(params)
        opt.step()
        (flat,) = opt.flat_buffers()
        flat.steps = flat.steps.view(NoHostRead)
        flat.step_views = flat._step_views(flat.steps)
        for p, view in zip(flat.params, flat.step_views):
            opt.state[p]["step"] = view
        for _ in range(3):
            with capturing():
                opt.step()
        np.testing.assert_array_equal(np.asarray(flat.steps), np.full(len(params), 4.0))


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("name,kwargs", [("Adam", {"lr": 0.05, "amsgrad": True}),
                                         ("Adagrad", {"lr": 0.1, "lr_decay": 0.05})])
@pytest.mark.parametrize("saver,loader", [(True, True), (False, True), (True, False)],
                         ids=["capturable-to-capturable", "host-to-capturable", "capturable-to-host"])
def test_state_dict_round_trip_across_capturable(backend_name, name, kwargs, saver, loader):
    params, opt, _ = _run(name, kwargs, np.float32, saver, steps=6, skip=_skip_two)
    saved = pickle.loads(pickle.dumps(opt.state_dict()))
    steps = [saved["state"][i]["step"] for i in range(len(params))]
    assert steps == [2 if i in (1, 4) else 6 for i in range(len(params))]
    assert all(type(s) is int for s in steps)  # plain numbers, whoever wrote them

    fresh = [Parameter(p.data.copy()) for p in params]
    opt2 = getattr(gko, name)(fresh, capturable=loader, **{**kwargs, "lr": 123.0})
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0]["lr"] == kwargs["lr"]
    assert opt2.param_groups[0]["capturable"] is loader  # the loader's flag stays
    (flat,) = opt2.flat_buffers()
    for i, p in enumerate(fresh):
        step = opt2.state[p]["step"]
        if loader:
            assert isinstance(step, np.ndarray) and step.dtype == np.float32
            assert step is flat.step_views[i]
        else:
            assert type(step) is int
        assert step == steps[i]
    for _ in range(5):
        _write_grads(params)
        _write_grads(fresh)
        opt.step()
        opt2.step()
    for a, b in zip(params, fresh):
        np.testing.assert_allclose(b.data, a.data, rtol=1e-6, atol=1e-7)
    assert opt2.state_dict()["state"][0]["step"] == 11


def test_module_to_moves_the_step_counts_with_the_buffer(backend_name):
    gk.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2))
    opt = gko.Adam(model.parameters(), lr=0.05, capturable=True)
    loss = lambda: sum(((p * 0.5).exp() + p**4 * 0.25).sum() for p in model.parameters())  # noqa: E731
    for _ in range(2):
        opt.zero_grad()
        loss().backward()
        opt.step()
    model.to(gk.float64)
    (flat,) = opt.flat_buffers()
    assert flat.dtype == np.float64 and flat.steps.dtype == np.float32
    for i, p in enumerate(model.parameters()):
        assert opt.state[p]["step"] is flat.step_views[i] and opt.state[p]["step"] == 2
    opt.zero_grad()
    loss().backward()
    opt.step()
    np.testing.assert_array_equal(flat.steps, np.full(4, 3.0, np.float32))


# ----------------------------------------------------------------------------- launchers


@pytest.mark.parametrize("kernel", ["adam", "adagrad"])
@pytest.mark.parametrize("step_dtype", [np.float32, np.int32])
def test_launchers_with_a_step_array_match_an_int_step(kernel, step_dtype):
    """Triton (interpreter) and reference launchers with a step array (advanced in
    place, only at ``step_index``) against the reference with int steps; segments and a
    device clipping coefficient too."""
    if not backend.interpreting():
        pytest.skip("needs TRITON_INTERPRET=1")
    gk.set_backend("interpret")
    from gpukernels.triton import optim as tri

    rng = np.random.default_rng(7)
    n = 1100
    p0 = rng.uniform(-1, 1, n).astype(np.float32)
    states0 = [0.3 * rng.standard_normal(n).astype(np.float32), 1 + np.abs(rng.standard_normal(n)).astype(np.float32),
               1 + np.abs(rng.standard_normal(n)).astype(np.float32)]
    runs = {k: [p0.copy(), [s.copy() for s in states0]] for k in ("int", "ref", "tri")}
    counts = {k: np.array([4, 9, 4, 7], step_dtype) for k in ("ref", "tri")}  # 0 and 2 advance together
    kw = dict(grad_scale=np.array([0.75], np.float32), segments=[(0, 32), (64, 1100)])

    def update(module, p, states, step, **extra):
        if kernel == "adam":
            module.adam_update(p, g, states[0], states[1], states[2], step=step, lr=0.05, amsgrad=True,
                               weight_decay=0.1, decoupled=True, **kw, **extra)
        else:
            module.adagrad_update(p, g, states[1], step=step, lr=0.1, lr_decay=0.01, **kw, **extra)

    for step in range(5, 25):
        g = rng.standard_normal(n).astype(np.float32)
        update(ref, *runs["int"], step)
        update(ref, *runs["ref"], counts["ref"], step_index=(0, 2))
        before = tri.LAUNCHES
        update(tri, *runs["tri"], counts["tri"], step_index=(0, 2))
        assert tri.LAUNCHES - before == 2
    for key in ("ref", "tri"):
        np.testing.assert_array_equal(counts[key], np.array([24, 9, 24, 7], step_dtype))
        np.testing.assert_allclose(runs[key][0], runs["int"][0], rtol=1e-6, atol=1e-7)
        for a, b in zip(runs[key][1], runs["int"][1]):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(runs["tri"][0][32:64], p0[32:64])
    # every element advanced when no step_index is given; a 0-d array works too
    zero_d = np.zeros((), np.float32)
    tri.adam_update(runs["tri"][0], g, *runs["tri"][1][:2], None, step=zero_d, lr=0.01)
    ref.adam_update(runs["ref"][0], g, *runs["ref"][1][:2], None, step=zero_d, lr=0.01)
    assert zero_d == 2


def test_step_array_errors_name_the_argument():
    if not backend.interpreting():
        pytest.skip("needs TRITON_INTERPRET=1")
    gk.set_backend("interpret")
    from gpukernels.triton import optim as tri

    p, g, m, v = (np.zeros(8, np.float32) for _ in range(4))
    for module in (tri, ref):
        with pytest.raises(TypeError, match="step must be a float32 or int32 array.*float64"):
            module.adam_update(p, g, m, v, None, step=np.zeros(1), lr=0.1)
        with pytest.raises(ValueError, match="step must be a non-empty C-contiguous array"):
            module.adagrad_update(p, g, m, step=np.zeros(0, np.float32), lr=0.1)
        with pytest.raises(ValueError, match=r"step_index must hold indices into the 2 step counts, got \(2,\)"):
            module.adam_update(p, g, m, v, None, step=np.zeros(2, np.float32), step_index=[2], lr=0.1)


def test_a_new_step_index_table_is_refused_while_capturing():
    if not backend.interpreting():
        pytest.skip("needs TRITON_INTERPRET=1")
    gk.set_backend("interpret")
    from gpukernels.triton import optim as tri

    p, g, m, v = (np.zeros(8, np.float32) for _ in range(4))
    counts = np.zeros(5, np.float32)
    with capturing(), pytest.raises(RuntimeError, match=r"\(1, 3, 4\) are advanced together for the first time"):
        tri.adam_update(p, g, m, v, None, step=counts, step_index=(1, 3, 4), lr=0.1)
    tri.adam_update(p, g, m, v, None, step=counts, step_index=(1, 3, 4), lr=0.1)  # eager: builds it
    np.testing.assert_array_equal(counts, [0, 1, 0, 1, 1])


def test_the_scalars_buffer_is_not_first_allocated_while_capturing(monkeypatch):
    """It would come from the graph's memory pool and outlive the graph."""
    if not backend.interpreting():
        pytest.skip("needs TRITON_INTERPRET=1")
    gk.set_backend("interpret")
    from gpukernels.triton import optim as tri

    monkeypatch.setattr(tri, "_HYPER", {})
    p, g, s = (np.zeros(8, np.float32) for _ in range(3))
    counts = np.zeros(1, np.float32)
    with capturing(), pytest.raises(RuntimeError, match="first update with device step counts on cpu"):
        tri.adagrad_update(p, g, s, step=counts, lr=0.1)
    assert counts == 0
    tri.adagrad_update(p, g, s, step=counts, lr=0.1)
    with capturing():
        tri.adagrad_update(p, g, s, step=counts, lr=0.1)
    assert counts == 2
