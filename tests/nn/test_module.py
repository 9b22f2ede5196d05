"""Module system: registration, traversal, modes, state_dict, init, repr, layers vs PyTorch."""

import math
import pickle

import numpy as np
import pytest
import torch

import gpukernels as gk
from gpukernels import nn
from gpukernels.dtypes import from_float32, to_float32
from tests.helpers import assert_close, to_torch


def small_net():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, activation="relu"),
        nn.BatchNorm2d(4),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 5),
    )


def test_parameters_and_names_follow_pytorch_keys():
    net = small_net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias"]
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in net.parameters())
    assert [n for n, _ in net.named_buffers()] == [
        "1.running_mean", "1.running_var", "1.num_batches_tracked"]
    twin = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                               torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(16, 5))
    assert list(net.state_dict()) == list(twin.state_dict())  # same keys, same order


def test_shared_parameter_counted_once():
    lin = nn.Linear(3, 3)
    net = nn.Sequential(lin, nn.ReLU(), lin)
    assert len(list(net.parameters())) == 2


def test_custom_module_registration_and_reassignment():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(2, 3)
            self.scale = 2.0
            self.w = nn.Parameter(np.ones(3, np.float32))

        def forward(self, x):
            return self.a(x) * self.w * self.scale

    net = Net()
    # PyTorch's order: a module's own parameters, then its children's
    assert [n for n, _ in net.named_parameters()] == ["w", "a.weight", "a.bias"]
    net.a = nn.Linear(2, 3, bias=False)
    assert [n for n, _ in net.named_parameters()] == ["w", "a.weight"]
    out = net(gk.randn(4, 2))
    assert out.shape == (4, 3)


def test_module_without_super_init_is_a_clear_error():
    class Bad(nn.Module):
        def __init__(self):
            self.x = 1

    with pytest.raises(RuntimeError, match="super"):
        Bad()


def test_train_eval_propagate_to_children():
    net = small_net()
    assert all(m.training for m in net.modules())
    net.eval()
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())


def test_zero_grad_sets_none_or_zero():
    net = small_net()
    x = gk.randn(2, 3, 4, 4)
    net(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad(set_to_none=False)
    assert all(float(np.abs(p.grad.numpy()).max()) == 0 for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_state_dict_round_trip_and_pickle():
    gk.manual_seed(1)
    a = small_net()
    a(gk.randn(4, 3, 4, 4))  # move the running statistics
    snapshot = {k: v.numpy().copy() for k, v in a.state_dict().items()}
    gk.manual_seed(2)
    b = small_net()
    b.load_state_dict(pickle.loads(pickle.dumps(snapshot)))
    for k, v in b.state_dict().items():
        assert_close(v, snapshot[k], atol=0, rtol=0, name=k)
    x = gk.randn(2, 3, 4, 4)
    a.eval()
    b.eval()
    assert_close(a(x), b(x), atol=0, rtol=0, name="outputs after load")


def test_load_state_dict_keeps_parameter_identity():
    net = nn.Linear(3, 2)
    weight_array = net.weight.data
    net.load_state_dict({"weight": np.zeros((2, 3), np.float32), "bias": np.ones(2, np.float32)})
    assert net.weight.data is weight_array
    assert float(net.bias.numpy().sum()) == 2.0


def test_load_state_dict_shape_mismatch_names_key_and_shapes():
    net = nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"'weight'.*\(3, 3\).*\(2, 3\)"):
        net.load_state_dict({"weight": np.zeros((3, 3), np.float32), "bias": np.zeros(2, np.float32)})


def test_load_state_dict_strict_keys():
    net = nn.Linear(3, 2)
    with pytest.raises(KeyError, match="missing keys \\['bias'\\]"):
        net.load_state_dict({"weight": np.zeros((2, 3), np.float32)})
    missing, unexpected = net.load_state_dict(
        {"weight": np.zeros((2, 3), np.float32), "extra": np.zeros(1)}, strict=False)
    assert missing == ["bias"] and unexpected == ["extra"]


def test_repr_is_readable():
    text = repr(small_net())
    assert "(0): Conv2d(3, 4, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), activation='relu')" in text
    assert "(4): Linear(in_features=16, out_features=5, bias=True)" in text
    assert "BatchNorm2d(4, eps=1e-05, momentum=0.1" in text


@pytest.mark.parametrize("make, fan_in", [
    (lambda: nn.Linear(50, 30), 50),
    (lambda: nn.Conv2d(6, 8, 3), 54),
    (lambda: nn.Conv2d(6, 8, (3, 5), groups=2), 45),
])
def test_default_init_matches_pytorch_bounds(make, fan_in):
    gk.manual_seed(0)
    layer = make()
    bound = 1 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) gives the same bound
    w, b = layer.weight.numpy(), layer.bias.numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound
    assert np.abs(b).max() <= bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.2 * bound
    assert w.dtype == np.float32


def test_seed_makes_init_reproducible():
    gk.manual_seed(7)
    a = nn.Linear(4, 4).weight.numpy().copy()
    gk.manual_seed(7)
    b = nn.Linear(4, 4).weight.numpy()
    assert np.array_equal(a, b)


def test_to_dtype_converts_parameters_and_buffers():
    net = small_net().to(gk.float64)
    assert all(p.dtype == np.float64 for p in net.parameters())
    assert net[1].running_mean.dtype == np.float64
    assert net[1].num_batches_tracked.dtype == np.int64


def test_to_unknown_device_is_an_error():
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda', got 'tpu'"):
        nn.Linear(2, 2).to("tpu")


# ----------------------------------------------------------------------------- dtype casts
# Module.double() / float() / half() / bfloat16() and to(dtype), with PyTorch's meaning:
# floating-point parameters and buffers are cast in place, integer buffers stay, the
# Parameters stay the same objects, and the module itself is returned.

CASTS = [("double", np.float64), ("float", np.float32), ("half", np.float16), ("bfloat16", gk.bfloat16)]


def _floats_of(net):
    """Every floating tensor's float32 values (bf16 bits widened)."""
    return {k: to_float32(np, v.numpy()) for k, v in net.state_dict().items() if v.dtype != np.int64}


@pytest.mark.parametrize("method, dtype", CASTS, ids=[m for m, _ in CASTS])
@pytest.mark.parametrize("start", [np.float32, np.float64])
def test_dtype_methods_cast_floating_parameters_and_buffers_in_place(method, dtype, start):
    net = small_net().to(start)
    net(gk.randn(4, 3, 4, 4).to(start))  # running statistics away from their start
    params = dict(net.named_parameters())
    before = _floats_of(net)
    assert getattr(net, method)() is net
    assert dict(net.named_parameters()) == params  # the same names ...
    assert all(p is params[n] for n, p in net.named_parameters())  # ... and the same objects
    assert all(isinstance(p, nn.Parameter) and p.requires_grad and p.dtype == dtype for p in net.parameters())
    assert net[1].running_mean.dtype == net[1].running_var.dtype == dtype
    assert net[1].num_batches_tracked.dtype == np.int64 and int(net[1].num_batches_tracked.item()) == 1
    tol = {np.float16: 1e-3, gk.bfloat16: 8e-3}.get(dtype, 1e-7)
    for key, value in _floats_of(net).items():
        assert_close(value, before[key], atol=tol, rtol=tol, name=key)


def test_to_dtype_takes_a_tensor_or_device_and_dtype_and_refuses_integer_dtypes():
    net = small_net()
    assert net.to(gk.zeros(1, dtype=gk.float64)) is net and all(p.dtype == np.float64 for p in net.parameters())
    assert net.to("cpu", gk.float16) is net and net[1].running_var.dtype == np.float16
    assert net.to(dtype="float32") is net and net[4].weight.dtype == np.float32
    assert net.cpu() is net and net[4].weight.device == "cpu"
    with pytest.raises(TypeError, match="Sequential.to: dtype must be a floating-point dtype .* got int64"):
        net.to(gk.int64)
    with pytest.raises(TypeError, match="dtype must be a NumPy dtype or its name, got 'float99'"):
        net.to(dtype="float99")
    assert all(p.dtype == np.float32 for p in net.parameters())  # a refused cast changed nothing


def test_an_optimizer_built_before_double_updates_the_same_parameters():
    gk.manual_seed(0)
    net = small_net()
    opt = gk.optim.SGD(net.parameters(), lr=0.1)
    net.double()
    assert [p for g in opt.param_groups for p in g["params"]] == list(net.parameters())
    before = {n: p.numpy().copy() for n, p in net.named_parameters()}
    out = net(gk.randn(3, 3, 4, 4).double())  # the numpy backend in float64
    assert out.dtype == np.float64
    out.sum().backward()
    opt.step()
    for name, p in net.named_parameters():
        assert p.dtype == p.grad.dtype == np.float64
        assert_close(p, before[name] - 0.1 * p.grad.numpy(), atol=1e-15, rtol=1e-15, name=name)


def test_double_forward_and_backward_match_the_float32_net():
    gk.manual_seed(4)
    single = small_net()
    double = small_net()
    double.load_state_dict(single.state_dict())
    double.double()
    x = gk.randn(2, 3, 4, 4)
    a, b = single(x), double(x.double())
    assert b.dtype == np.float64
    assert_close(b, a.numpy(), atol=1e-5, rtol=1e-5, name="forward")
    a.sum().backward()
    b.sum().backward()
    for (name, p), q in zip(single.named_parameters(), double.parameters()):
        assert q.grad.dtype == np.float64
        assert_close(q.grad, p.grad.numpy(), atol=1e-4, rtol=1e-4, name=name)


def test_a_cast_counts_as_an_inplace_change_and_gradients_follow():
    net = nn.Linear(3, 2)
    loss = net(gk.ones(4, 3)).sum()
    versions = [p._version for p in net.parameters()]
    net.float()  # already float32: nothing replaced, nothing counted
    assert [p._version for p in net.parameters()] == versions
    net.double()
    assert [p._version for p in net.parameters()] == [v + 1 for v in versions]
    with pytest.raises(RuntimeError, match=r"saved by LinearFunction is at version \d+; expected version \d+"):
        loss.backward()
    net.zero_grad()
    net(gk.ones(4, 3).double()).sum().backward()
    net.half()
    assert all(p.grad.dtype == np.float16 for p in net.parameters())


@pytest.mark.parametrize("method, dtype", CASTS, ids=[m for m, _ in CASTS])
def test_state_dict_round_trip_in_each_dtype(method, dtype):
    gk.manual_seed(1)
    a = getattr(small_net(), method)()
    saved = {k: v.numpy().copy() for k, v in a.state_dict().items()}
    b = getattr(small_net(), method)()
    b.load_state_dict(pickle.loads(pickle.dumps(saved)))
    for key, value in b.state_dict().items():
        assert value.dtype == saved[key].dtype
        np.testing.assert_array_equal(value.numpy(), saved[key], err_msg=key)


def test_load_state_dict_casts_values_to_the_models_dtype_bf16_bits_included():
    gk.manual_seed(2)
    single = small_net()
    values = {k: v.numpy().copy() for k, v in single.state_dict().items()}
    brain = small_net().bfloat16()
    brain.load_state_dict(values)  # float32 values into bf16 parameters: rounded, not cast as integers
    for key, value in brain.state_dict().items():
        expected = values[key] if value.dtype == np.int64 else from_float32(np, values[key], gk.bfloat16)
        np.testing.assert_array_equal(value.numpy(), expected, err_msg=key)
    wide = small_net().double()
    wide.load_state_dict(brain.state_dict())  # bf16 bits into float64: widened exactly
    for key, value in wide.state_dict().items():
        expected = brain.state_dict()[key].numpy()
        expected = expected if value.dtype == np.int64 else to_float32(np, expected)
        np.testing.assert_array_equal(value.numpy(), expected, err_msg=key)


@pytest.mark.parametrize("train", [True, False])
def test_small_net_matches_torch_twin_forward_and_backward(train):
    from benchmarks.torch_twin import torch_twin

    gk.manual_seed(3)
    net = small_net().to(gk.float64)
    twin = torch_twin(net, torch.float64)
    net.train(train)
    twin.train(train)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 3, 4, 4))
    g = rng.standard_normal((3, 5))
    out = net(gk.tensor(x))
    tout = twin(torch.tensor(x))
    assert_close(out, tout, atol=1e-12, rtol=1e-9, name="forward")
    out.backward(gk.tensor(g))
    tout.backward(torch.tensor(g))
    tparams = dict(twin.named_parameters())
    for name, p in net.named_parameters():
        tname = {"0.weight": "0.0.weight", "0.bias": "0.0.bias"}.get(name, name)
        assert_close(p.grad, tparams[tname].grad, atol=1e-12, rtol=1e-8, name=name)
    assert_close(net[1].running_mean, twin[1].running_mean, atol=1e-12, rtol=1e-9, name="running_mean")
    assert_close(net[1].running_var, twin[1].running_var, atol=1e-12, rtol=1e-9, name="running_var")


def test_residual_accumulates_gradient_through_both_paths():
    gk.manual_seed(0)
    body = nn.Linear(4, 4)
    block = nn.Residual(body)
    x = gk.randn(3, 4).double().detach().requires_grad_()
    block.to(gk.float64)
    block(x).sum().backward()
    expected = np.ones((3, 4)) @ body.weight.numpy() + 1.0
    assert_close(x.grad, expected, atol=1e-12, rtol=1e-12, name="residual grad")


def test_residual_shape_mismatch_needs_projection():
    block = nn.Residual(nn.Linear(4, 3))
    with pytest.raises(ValueError, match="shortcut"):
        block(gk.randn(2, 4))
    proj = nn.Residual(nn.Linear(4, 3), nn.Linear(4, 3, bias=False))
    assert proj(gk.randn(2, 4)).shape == (2, 3)


def test_batchnorm_eval_uses_running_stats_and_counts_batches():
    bn = nn.BatchNorm2d(2)
    x = gk.randn(4, 2, 3, 3)
    bn(x)
    bn(x)
    assert int(bn.num_batches_tracked.item()) == 2
    bn.eval()
    y = bn(x).numpy()
    rm, rv = bn.running_mean.numpy(), bn.running_var.numpy()
    expected = (x.numpy() - rm[None, :, None, None]) / np.sqrt(rv[None, :, None, None] + 1e-5)
    assert_close(y, expected, atol=1e-5, rtol=1e-5, name="eval output")


def test_batchnorm_rejects_wrong_channels():
    with pytest.raises(ValueError, match=r"BatchNorm2d\(3\): input has 2 channels"):
        nn.BatchNorm2d(3)(gk.randn(2, 2, 3, 3))


def test_conv_rejects_bad_groups():
    with pytest.raises(ValueError, match="divisible by groups=2"):
        nn.Conv2d(3, 4, 3, groups=2)


def test_dropout_module_follows_mode():
    drop = nn.Dropout(0.5)
    x = gk.ones(1000)
    assert (drop(x).numpy() == 0).mean() > 0.3
    drop.eval()
    assert np.array_equal(drop(x).numpy(), x.numpy())


@pytest.mark.parametrize("output_size, in_hw", [
    (1, (5, 7)),          # global average pool, odd sizes
    ((1, 1), (8, 8)),
    (2, (4, 6)),          # windows 2x3: avg_pool2d path
    ((2, 3), (6, 9)),
    ((None, 1), (3, 4)),  # None keeps that input size
    ((3, 4), (3, 4)),     # output == input: identity
])
def test_adaptive_avg_pool_matches_torch_forward_and_backward(output_size, in_hw):
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((2, 3, *in_hw))
    x = gk.tensor(x_np, requires_grad=True)
    tx = to_torch(x_np, requires_grad=True)
    y = nn.AdaptiveAvgPool2d(output_size)(x)
    ty = torch.nn.AdaptiveAvgPool2d(output_size)(tx)
    assert_close(y, ty, atol=1e-12, rtol=1e-10, name="forward")
    g = rng.standard_normal(tuple(ty.shape))
    y.backward(gk.tensor(g))
    ty.backward(torch.tensor(g))
    assert_close(x.grad, tx.grad, atol=1e-12, rtol=1e-10, name="x.grad")


def test_adaptive_avg_pool_rejects_uneven_sizes_and_bad_inputs():
    with pytest.raises(ValueError, match=r"output size \(3, 3\) must divide the input size \(4, 4\)"):
        nn.AdaptiveAvgPool2d(3)(gk.randn(1, 2, 4, 4))
    with pytest.raises(ValueError, match=r"output size \(8, 8\) must divide the input size \(4, 4\)"):
        nn.AdaptiveAvgPool2d(8)(gk.randn(1, 2, 4, 4))
    with pytest.raises(ValueError, match=r"expected an \(N, C, H, W\) input, got \(2, 4, 4\)"):
        nn.AdaptiveAvgPool2d(1)(gk.randn(2, 4, 4))
    with pytest.raises(ValueError, match="output_size must be a positive int"):
        nn.AdaptiveAvgPool2d(0)


# ----------------------------------------------------------------------------- constructor arguments
# Every layer checks its arguments when built: a ValueError naming the layer, the
# argument and the value received (not a ZeroDivisionError from the initialisation, a
# NumPy error, or nothing at all until the first forward).

BAD_LAYER_ARGS = [
    (lambda: nn.Conv2d(3, 4, 0), r"Conv2d: kernel_size must be >= 1, got 0"),
    (lambda: nn.Conv2d(0, 4, 3), r"Conv2d: in_channels must be an int >= 1, got 0"),
    (lambda: nn.Conv2d(3, 0, 3), r"Conv2d: out_channels must be an int >= 1, got 0"),
    (lambda: nn.Conv2d(3, 4, (3,)), r"Conv2d: kernel_size must be an int or a pair of ints .*got \(3,\)"),
    (lambda: nn.Conv2d(3.0, 4, 3), r"Conv2d: in_channels must be an int >= 1, got 3\.0"),
    (lambda: nn.Conv2d(3, 4, 3, stride=0), r"Conv2d: stride must be >= 1, got 0"),
    (lambda: nn.Conv2d(3, 4, 3, padding=-1), r"Conv2d: padding must be >= 0, got -1"),
    (lambda: nn.Conv2d(3, 4, 3, padding="same"), r"Conv2d: padding must be an int .*'same'"),
    (lambda: nn.Conv2d(3, 4, 3, dilation=(1, 0)), r"Conv2d: dilation must be >= 1, got \(1, 0\)"),
    (lambda: nn.Conv2d(4, 4, 3, groups=0), r"Conv2d: groups must be an int >= 1, got 0"),
    (lambda: nn.Conv2d(3, 4, 3, activation="gelu"), r"Conv2d: activation must be one of .*got 'gelu'"),
    (lambda: nn.Conv2d(3, 4, 3, activation="leaky_relu", negative_slope=-1), r"Conv2d: negative_slope .* got -1"),
    (lambda: nn.Linear(0, 3), r"Linear: in_features must be an int >= 1, got 0"),
    (lambda: nn.Linear(3, -1), r"Linear: out_features must be an int >= 1, got -1"),
    (lambda: nn.Linear(2.5, 3), r"Linear: in_features must be an int >= 1, got 2\.5"),
    (lambda: nn.BatchNorm2d(0), r"BatchNorm2d: num_features must be an int >= 1, got 0"),
    (lambda: nn.BatchNorm2d(4, eps=0), r"BatchNorm2d: eps must be a finite number > 0, got 0"),
    (lambda: nn.BatchNorm2d(4, momentum=None), r"BatchNorm2d: momentum=None .* not supported"),
    (lambda: nn.BatchNorm1d(4, momentum=2), r"BatchNorm1d: momentum must be a finite number in \[0, 1\], got 2"),
    (lambda: nn.MaxPool2d(0), r"MaxPool2d: kernel_size must be >= 1, got 0"),
    (lambda: nn.MaxPool2d(2, stride=0), r"MaxPool2d: stride must be >= 1, got 0"),
    (lambda: nn.MaxPool2d(2, padding=2), r"MaxPool2d: padding must be at most half of kernel_size 2, got 2"),
    (lambda: nn.MaxPool2d(2, dilation=0), r"MaxPool2d: dilation must be >= 1, got 0"),
    (lambda: nn.AvgPool2d(-1), r"AvgPool2d: kernel_size must be >= 1, got -1"),
    (lambda: nn.Dropout(1.5), r"Dropout: p \(the dropout probability\) must be a finite number in \[0, 1\], got 1\.5"),
    (lambda: nn.Dropout("a"), r"Dropout: p .* got 'a'"),
    (lambda: nn.LeakyReLU(-0.1), r"LeakyReLU: negative_slope must be a finite number >= 0, got -0\.1"),
    (lambda: nn.AdaptiveAvgPool2d(True), r"AdaptiveAvgPool2d: output_size must be .*got True"),
    (lambda: nn.Flatten(1.0), r"Flatten: start_dim must be an int, got 1\.0"),
    (lambda: nn.CrossEntropyLoss(reduction="avg"), r"CrossEntropyLoss: reduction must be one of .*got 'avg'"),
    (lambda: nn.CrossEntropyLoss(label_smoothing=2), r"CrossEntropyLoss: label_smoothing .* got 2"),
    (lambda: nn.MSELoss("x"), r"MSELoss: reduction must be one of .*got 'x'"),
    (lambda: nn.Softmax(None), r"Softmax: dim must be an int, got None"),
    (lambda: nn.Residual(3), r"Residual: body must be a Module, got int"),
]


@pytest.mark.parametrize("build, match", BAD_LAYER_ARGS, ids=[m.split(":")[0] + f"-{i}" for i, (_, m) in
                                                             enumerate(BAD_LAYER_ARGS)])
def test_layer_constructors_name_the_bad_argument_and_value(build, match):
    with pytest.raises(ValueError, match=match):
        build()

