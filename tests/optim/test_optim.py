"""gpukernels.optim against torch.optim (float64, CPU), checkpoints, validation."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import gpukernels.optim as gko  # noqa: E402
from gpukernels.nn.parameter import Parameter  # noqa: E402
from gpukernels.tensor import Tensor  # noqa: E402

SHAPES = [(7,), (3, 5), (1,), (2, 3, 4), ()]
TOL = 1e-10  # the brief asks <= 1e-6; the observed difference is ~1e-15


# ----------------------------------------------------------------------------- helpers


def _grad(p: np.ndarray) -> np.ndarray:
    """Gradient of a smooth non-quadratic function: d/dp (-3 cos p + p^4 / 4)."""
    return np.asarray(3.0 * np.sin(p) + p**3)


def _init_arrays(seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1.0, 1.0, size=s) for s in shapes]


def _make_pair(name, kwargs, arrays, groups=None):
    """gk and torch optimizers over copies of ``arrays``; ``groups`` splits the params
    into param groups: a list of (indices, overrides)."""
    gk_params = [Parameter(a.copy()) for a in arrays]
    th_params = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]

    def spec(params):
        if groups is None:
            return params
        return [{"params": [params[i] for i in idx], **over} for idx, over in groups]

    gk_opt = getattr(gko, name)(spec(gk_params), **kwargs)
    th_opt = getattr(torch.optim, name)(spec(th_params), **kwargs)
    return gk_params, th_params, gk_opt, th_opt


def _set_grads(gk_params, th_params, skip=()):
    for i, (gp, tp) in enumerate(zip(gk_params, th_params)):
        if i in skip:
            gp.grad, tp.grad = None, None
            continue
        g = _grad(gp.data)
        gp.grad = Tensor(g.copy())
        tp.grad = torch.from_numpy(g.copy())


def _run(gk_params, th_params, gk_opt, th_opt, steps, skip=()):
    for _ in range(steps):
        _set_grads(gk_params, th_params, skip)
        gk_opt.step()
        th_opt.step()


def _max_diff(gk_params, th_params):
    return max(
        float(np.max(np.abs(gp.data - tp.detach().numpy()), initial=0.0))
        for gp, tp in zip(gk_params, th_params)
    )


CASES = [
    ("SGD", {"lr": 0.05}),
    ("SGD", {}),
    ("SGD", {"lr": 0.02, "momentum": 0.9}),
    ("SGD", {"lr": 0.02, "momentum": 0.9, "dampening": 0.3}),
    ("SGD", {"lr": 0.02, "momentum": 0.8, "nesterov": True}),
    ("SGD", {"lr": 0.02, "momentum": 0.9, "weight_decay": 0.1, "nesterov": True}),
    ("SGD", {"lr": 0.03, "weight_decay": 0.05}),
    ("SGD", {"lr": 0.01, "momentum": 0.5, "maximize": True}),
    ("Adagrad", {}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.05}),
    ("Adagrad", {"lr": 0.1, "weight_decay": 0.1}),
    ("Adagrad", {"lr": 0.1, "initial_accumulator_value": 0.5, "eps": 1e-6}),
    ("Adagrad", {"lr": 0.05, "maximize": True}),
    ("RMSprop", {}),
    ("RMSprop", {"lr": 0.01, "centered": True}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.9}),
    ("RMSprop", {"lr": 0.005, "momentum": 0.5, "centered": True, "weight_decay": 0.1}),
    ("RMSprop", {"lr": 0.01, "alpha": 0.3, "eps": 1e-4}),
    ("RMSprop", {"lr": 0.01, "alpha": 0.9, "centered": True, "maximize": True}),
    ("Adam", {}),
    ("Adam", {"lr": 0.05}),
    ("Adam", {"lr": 0.05, "betas": (0.8, 0.9), "eps": 1e-6}),
    ("Adam", {"lr": 0.05, "betas": (0.3, 0.99)}),  # 1 - beta1 >= 0.5: the other lerp branch
    ("Adam", {"lr": 0.05, "weight_decay": 0.1}),
    ("Adam", {"lr": 0.05, "amsgrad": True}),
    ("Adam", {"lr": 0.05, "amsgrad": True, "weight_decay": 0.1, "maximize": True}),
    ("Adam", {"lr": 0.05, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("AdamW", {}),
    ("AdamW", {"lr": 0.05, "weight_decay": 0.1}),
    ("AdamW", {"lr": 0.05, "weight_decay": 0.1, "amsgrad": True}),
    ("AdamW", {"lr": 0.01, "maximize": True, "betas": (0.5, 0.9)}),
]


def _case_id(case):
    name, kwargs = case
    return name + "-" + ("-".join(f"{k}={v}" for k, v in kwargs.items()) or "defaults")


# ----------------------------------------------------------------------------- vs torch


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_matches_torch_after_20_steps(case):
    name, kwargs = case
    pair = _make_pair(name, kwargs, _init_arrays())
    _run(*pair, steps=20)
    gk_params, th_params = pair[:2]
    assert _max_diff(gk_params, th_params) <= TOL
    # the parameters moved: the comparison is not vacuous
    start = _init_arrays()
    assert max(np.max(np.abs(p.data - a)) for p, a in zip(gk_params, start)) > 1e-4


@pytest.mark.parametrize("name", ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW"])
def test_float32_matches_torch(name):
    arrays = [a.astype(np.float32) for a in _init_arrays(3)]
    kwargs = {"lr": 0.01, "momentum": 0.9} if name in ("SGD", "RMSprop") else {"lr": 0.01}
    gk_params, th_params, gk_opt, th_opt = _make_pair(name, kwargs, arrays)
    _run(gk_params, th_params, gk_opt, th_opt, steps=10)
    for p in gk_params:
        assert p.dtype == np.float32
    assert _max_diff(gk_params, th_params) <= 1e-5


@pytest.mark.parametrize("name", ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW"])
def test_param_groups_with_different_hyperparameters(name):
    groups = [([0, 2], {"lr": 0.1}), ([1, 3], {"lr": 0.01, "weight_decay": 0.2}), ([4], {})]
    kwargs = {"lr": 0.03}
    if name == "SGD":
        groups[0][1]["momentum"] = 0.9
    pair = _make_pair(name, kwargs, _init_arrays(1), groups)
    _run(*pair, steps=20)
    assert _max_diff(*pair[:2]) <= TOL
    assert pair[2].param_groups[0]["lr"] == 0.1
    assert pair[2].param_groups[2]["lr"] == 0.03


@pytest.mark.parametrize("name", ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW"])
def test_params_without_grad_are_skipped(name):
    kwargs = {"lr": 0.05, "momentum": 0.9} if name == "SGD" else {"lr": 0.05}
    arrays = _init_arrays(2)
    gk_params, th_params, gk_opt, th_opt = _make_pair(name, kwargs, arrays)
    _run(gk_params, th_params, gk_opt, th_opt, steps=4, skip={1})
    np.testing.assert_array_equal(gk_params[1].data, arrays[1])
    assert gk_opt.state.get(gk_params[1], {}).get("step", 0) == 0  # Adagrad's is eager
    _run(gk_params, th_params, gk_opt, th_opt, steps=4)  # now it joins late
    assert _max_diff(gk_params, th_params) <= TOL


# ----------------------------------------------------------------------------- in place


@pytest.mark.parametrize("case", CASES[::3], ids=[_case_id(c) for c in CASES[::3]])
def test_step_updates_in_place_and_keeps_grad(case):
    name, kwargs = case
    params = [Parameter(a) for a in _init_arrays(4)]
    opt = getattr(gko, name)(params, **kwargs)
    # the optimizer moved the parameters into its flat buffer (gpukernels.optim.flat):
    # from then on every step updates that buffer in place
    (flat,) = opt.flat_buffers()
    assert all(np.shares_memory(p.data, flat.data) for p in params)
    arrays = [p.data for p in params]
    views = [p.data.reshape(-1) for p in params]
    for _ in range(3):
        grads = []
        for p in params:
            g = _grad(p.data)
            grads.append(g.copy())
            p.grad = Tensor(g)
        opt.step()
        for p, g in zip(params, grads):
            np.testing.assert_array_equal(p.grad.data, g)  # the gradient is not modified
    for p, a, v in zip(params, arrays, views):
        assert p.data is a
        np.testing.assert_array_equal(v, p.data.reshape(-1))


def test_step_runs_without_recording_autograd():
    p = Parameter(np.ones(3))
    p.grad = Tensor(np.ones(3))
    opt = gko.SGD([p], lr=0.1)
    opt.step()
    assert p.is_leaf and p.requires_grad and p.grad_fn is None


def test_step_closure_returns_loss():
    p = Parameter(np.ones(3))
    opt = gko.SGD([p], lr=0.1)

    def closure():
        opt.zero_grad()
        p.grad = Tensor(np.full(3, 2.0))
        return 1.5

    assert opt.step(closure) == 1.5
    np.testing.assert_allclose(p.data, 0.8)


def test_step_rejects_grad_of_wrong_shape():
    p = Parameter(np.ones((2, 3)))
    p.grad = Tensor(np.ones(6))
    with pytest.raises(ValueError, match=r"gradient has shape \(6,\).*\(2, 3\)"):
        gko.Adam([p]).step()


# ----------------------------------------------------------------------------- zero_grad


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad(set_to_none):
    params = [Parameter(a) for a in _init_arrays()]
    for p in params:
        p.grad = Tensor(np.ones(p.shape))
    params[0].grad = None
    opt = gko.SGD(params, lr=0.1)
    if set_to_none:
        opt.zero_grad()
        assert all(p.grad is None for p in params)
    else:
        opt.zero_grad(set_to_none=False)
        assert params[0].grad is None
        for p in params[1:]:
            assert p.grad.shape == p.shape
            assert not np.any(p.grad.data)


# ----------------------------------------------------------------------------- checkpoints


CKPT_CASES = [
    ("SGD", {"lr": 0.02, "momentum": 0.9, "nesterov": True}),
    ("SGD", {"lr": 0.02}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.01, "initial_accumulator_value": 0.1}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.5, "centered": True}),
    ("Adam", {"lr": 0.05, "amsgrad": True}),
    ("AdamW", {"lr": 0.05, "weight_decay": 0.1}),
]


@pytest.mark.parametrize("case", CKPT_CASES, ids=[_case_id(c) for c in CKPT_CASES])
@pytest.mark.parametrize("through_pickle", [False, True])
def test_state_dict_round_trip(case, through_pickle):
    name, kwargs = case
    groups = [([0, 1], {}), ([2, 3, 4], {"lr": kwargs["lr"] / 2})]
    gk_params, th_params, opt, th_opt = _make_pair(name, kwargs, _init_arrays(5), groups)
    _run(gk_params, th_params, opt, th_opt, steps=5)

    saved = opt.state_dict()
    if through_pickle:
        saved = pickle.loads(pickle.dumps(saved))
    assert [g["params"] for g in saved["param_groups"]] == [[0, 1], [2, 3, 4]]
    for values in saved["state"].values():
        for v in values.values():
            assert not hasattr(v, "shape") or type(v) is np.ndarray

    fresh = [Parameter(p.data.copy()) for p in gk_params]
    opt2 = getattr(gko, name)(
        [{"params": fresh[:2]}, {"params": fresh[2:]}], **{**kwargs, "lr": 123.0}
    )
    opt2.load_state_dict(saved)
    assert opt2.param_groups[1]["lr"] == kwargs["lr"] / 2  # hyper-parameters restored
    assert opt2.param_groups[1]["params"][0] is fresh[2]

    # the saved copy is independent of the live state
    for values in saved["state"].values():
        for v in values.values():
            if isinstance(v, np.ndarray):
                v[...] = 1e9

    for _ in range(5):
        for a, b in zip(gk_params, fresh):
            g = _grad(a.data)
            a.grad, b.grad = Tensor(g.copy()), Tensor(g.copy())
        opt.step()
        opt2.step()
    for a, b in zip(gk_params, fresh):
        np.testing.assert_array_equal(a.data, b.data)


def test_state_dict_matches_torch_layout():
    gk_params, th_params, opt, th_opt = _make_pair(
        "Adam", {"lr": 0.05}, _init_arrays(6), [([0, 1], {}), ([2, 3, 4], {"lr": 0.1})]
    )
    _run(gk_params, th_params, opt, th_opt, steps=3)
    ours, theirs = opt.state_dict(), th_opt.state_dict()
    assert set(ours["state"]) == set(theirs["state"])
    for k in theirs["state"]:
        assert set(ours["state"][k]) == set(theirs["state"][k])
        assert ours["state"][k]["step"] == int(theirs["state"][k]["step"])
        for key in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_allclose(ours["state"][k][key], theirs["state"][k][key].numpy(),
                                       atol=1e-12)
    for g_ours, g_theirs in zip(ours["param_groups"], theirs["param_groups"]):
        assert g_ours["params"] == g_theirs["params"]
        for key, value in g_ours.items():
            assert g_theirs[key] == value


def test_load_state_dict_rejects_mismatches():
    params = [Parameter(a) for a in _init_arrays()]
    opt = gko.Adam(params, lr=0.1)
    for p in params:
        p.grad = Tensor(_grad(p.data))
    opt.step()
    saved = opt.state_dict()

    with pytest.raises(ValueError, match="number of parameter groups: 1 saved.*has 2"):
        gko.Adam([{"params": params[:2]}, {"params": params[2:]}]).load_state_dict(saved)
    with pytest.raises(ValueError, match="group 0 has 5 parameters saved, 4 in"):
        gko.Adam(params[:4]).load_state_dict(saved)
    other = [Parameter(np.zeros((2, 2))) if i == 1 else Parameter(a)
             for i, a in enumerate(_init_arrays())]
    with pytest.raises(ValueError, match=r"shape \(3, 5\), the parameter has shape \(2, 2\)"):
        gko.Adam(other).load_state_dict(saved)
    with pytest.raises(ValueError, match="'state' and 'param_groups'"):
        gko.Adam(params).load_state_dict({"state": {}})


def test_load_state_dict_casts_to_param_dtype():
    p64 = Parameter(np.linspace(-1, 1, 6))
    opt = gko.RMSprop([p64], momentum=0.9)
    p64.grad = Tensor(np.ones(6))
    opt.step()
    p32 = Parameter(np.linspace(-1, 1, 6).astype(np.float32))
    opt32 = gko.RMSprop([p32], momentum=0.9)
    opt32.load_state_dict(opt.state_dict())
    assert opt32.state[p32]["square_avg"].dtype == np.float32
    assert opt32.state[p32]["step"] == 1


# ----------------------------------------------------------------------------- validation


BAD_ARGS = [
    ("SGD", {"lr": -0.1}, r"Invalid learning rate: lr=-0\.1"),
    ("SGD", {"momentum": -0.5}, r"Invalid momentum value: momentum=-0\.5"),
    ("SGD", {"weight_decay": -1e-4}, "weight_decay=-0.0001"),
    ("SGD", {"nesterov": True}, "Nesterov momentum requires a momentum.*momentum=0"),
    ("SGD", {"nesterov": True, "momentum": 0.9, "dampening": 0.1},
     "zero dampening.*dampening=0.1"),
    ("SGD", {"lr": float("nan")}, "lr=nan"),
    ("SGD", {"lr": "fast"}, "lr must be a real number, got 'fast'"),
    ("Adagrad", {"lr": -1.0}, "Invalid learning rate: lr=-1.0"),
    ("Adagrad", {"lr_decay": -1.0}, "lr_decay=-1.0"),
    ("Adagrad", {"initial_accumulator_value": -0.1}, "initial_accumulator_value=-0.1"),
    ("Adagrad", {"eps": -1e-10}, r"Invalid epsilon value: eps=-1e-10"),
    ("RMSprop", {"alpha": -0.1}, "alpha=-0.1"),
    ("RMSprop", {"eps": -1.0}, "eps=-1.0"),
    ("RMSprop", {"momentum": -0.9}, "momentum=-0.9"),
    ("Adam", {"lr": -1e-3}, "lr=-0.001"),
    ("Adam", {"eps": -1e-8}, "Invalid epsilon value: eps=-1e-08"),
    ("Adam", {"betas": (1.0, 0.999)}, r"beta parameter at index 0: betas\[0\]=1.0"),
    ("Adam", {"betas": (0.9, -0.1)}, r"beta parameter at index 1: betas\[1\]=-0.1"),
    ("Adam", {"betas": (0.9,)}, r"expected a pair \(beta1, beta2\), got \(0.9,\)"),
    ("AdamW", {"betas": (0.9, 1.5)}, r"betas\[1\]=1.5"),
    ("AdamW", {"weight_decay": -0.01}, "weight_decay=-0.01"),
]


@pytest.mark.parametrize("name,kwargs,message", BAD_ARGS,
                         ids=[f"{n}-{'-'.join(k)}" for n, k, _ in BAD_ARGS])
def test_invalid_hyperparameters(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        getattr(gko, name)([Parameter(np.ones(3))], **kwargs)


def test_invalid_hyperparameter_in_a_group():
    with pytest.raises(ValueError, match="lr=-2"):
        gko.SGD([{"params": [Parameter(np.ones(3))], "lr": -2}])


@pytest.mark.parametrize("name", ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW"])
def test_empty_parameter_list(name):
    with pytest.raises(ValueError, match="optimizer got an empty parameter list"):
        getattr(gko, name)([])
    with pytest.raises(ValueError, match="optimizer got an empty parameter list"):
        getattr(gko, name)(iter(()))


def test_params_must_be_tensors():
    with pytest.raises(TypeError, match="one of the params is numpy.ndarray"):
        gko.SGD([np.ones(3)])
    with pytest.raises(TypeError, match="iterable of Tensors or dicts, but got Parameter"):
        gko.SGD(Parameter(np.ones(3)))
    with pytest.raises(TypeError, match="ordered collections"):
        gko.SGD({Parameter(np.ones(3))})


def test_parameter_in_two_groups():
    p = Parameter(np.ones(3))
    with pytest.raises(ValueError, match="more than one parameter group"):
        gko.SGD([{"params": [p]}, {"params": [p]}])


def test_non_leaf_tensor_rejected():
    p = Parameter(np.ones(3))
    with pytest.raises(ValueError, match="non-leaf"):
        gko.SGD([p * 2.0])


# ----------------------------------------------------------------------------- misc API


def test_add_param_group_and_generators():
    a, b = Parameter(np.ones(3)), Parameter(np.ones(2))
    opt = gko.Adam(p for p in [a])  # generators, as model.parameters()
    opt.add_param_group({"params": b, "lr": 0.5})
    assert opt.param_groups[1]["params"] == [b]
    assert opt.param_groups[1]["lr"] == 0.5
    assert opt.param_groups[1]["betas"] == (0.9, 0.999)
    with pytest.raises(TypeError, match="param_group must be a dict"):
        opt.add_param_group([b])


def test_named_parameters():
    a, b = Parameter(np.ones(3)), Parameter(np.ones(2))
    opt = gko.SGD([("w", a), ("b", b)], lr=0.1)
    assert opt.param_groups[0]["param_names"] == ["w", "b"]
    assert opt.param_groups[0]["params"] == [a, b]
    assert opt.state_dict()["param_groups"][0]["param_names"] == ["w", "b"]


@pytest.mark.parametrize("name,defaults", [
    ("SGD", {"lr": 1e-3, "momentum": 0, "dampening": 0, "weight_decay": 0,
             "nesterov": False, "maximize": False, "capturable": False}),
    ("Adagrad", {"lr": 1e-2, "lr_decay": 0, "weight_decay": 0,
                 "initial_accumulator_value": 0, "eps": 1e-10, "maximize": False, "capturable": False}),
    ("RMSprop", {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0, "momentum": 0,
                 "centered": False, "maximize": False, "capturable": False}),
    ("Adam", {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0,
              "amsgrad": False, "maximize": False, "decoupled_weight_decay": False, "capturable": False}),
    ("AdamW", {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2,
               "amsgrad": False, "maximize": False, "decoupled_weight_decay": True, "capturable": False}),
])
def test_defaults_match_torch(name, defaults):
    opt = getattr(gko, name)([Parameter(np.ones(2))])
    th = getattr(torch.optim, name)([torch.ones(2, requires_grad=True)])
    assert opt.defaults == defaults
    for key, value in defaults.items():
        # torch's SGD and Adagrad have no ``capturable``: ours accept it (see their docs)
        if key == "capturable" and name in ("SGD", "Adagrad"):
            assert key not in th.defaults
            continue
        assert th.defaults[key] == value


def test_repr():
    opt = gko.SGD([Parameter(np.ones(2))], lr=0.1, momentum=0.9)
    text = repr(opt)
    assert text.startswith("SGD (\nParameter Group 0\n")
    assert "    lr: 0.1\n" in text and "    momentum: 0.9\n" in text
    assert "params" not in text and text.endswith(")")


def test_adagrad_state_created_eagerly():
    p = Parameter(np.ones(4))
    opt = gko.Adagrad([p], initial_accumulator_value=0.25)
    assert opt.state[p]["step"] == 0
    np.testing.assert_array_equal(opt.state[p]["sum"], np.full(4, 0.25))


def test_dispatches_through_backend_kernels():
    from gpukernels import backend

    p = Parameter(np.ones(2))
    p.grad = Tensor(np.ones(2))
    gko.SGD([p]).step()
    assert backend.last_dispatch["optim"] == "gpukernels.cpu.optim"
