"""F.add_relu (relu(a + b) in one pass, the residual blocks' sum and ReLU) against
PyTorch's ``torch.relu(a + b)``, forward and backward, in float64 and float32; finite
differences; argument errors; the NumPy reference's parallel path; nn.Residual's
``activation="relu"``; and ResNet's parameter names, unchanged by the fusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpukernels as gk
from gpukernels import nn
from gpukernels.cpu import _parallel
from gpukernels.cpu import activation as ref
from tests.helpers import TOL_IDS, TOLS, assert_close, grad_check, pair

F = gk.functional


def rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("dtype, atol, rtol", TOLS, ids=TOL_IDS)
@pytest.mark.parametrize("shape", [(1,), (7,), (2, 3, 5, 5)], ids=str)
def test_add_relu_matches_torch_forward_and_backward(shape, dtype, atol, rtol):
    r = rng(sum(shape))
    (a, at), (b, bt) = pair(r.standard_normal(shape), dtype), pair(r.standard_normal(shape), dtype)
    y = F.add_relu(a, b)
    yt = torch.relu(at + bt)
    assert y.dtype == np.dtype(dtype) and y.shape == shape
    assert_close(y, yt, atol=atol, rtol=rtol, name="forward")
    g = r.standard_normal(shape).astype(dtype)
    y.backward(gk.tensor(g))
    yt.backward(torch.tensor(g.astype(np.float64)))
    for name, x, xt in (("a", a, at), ("b", b, bt)):
        assert x.grad.dtype == x.dtype
        assert_close(x.grad, xt.grad, atol=atol, rtol=rtol, name=f"grad of {name}")


def test_add_relu_equals_relu_of_the_sum_exactly():
    r = rng(1)
    a = r.standard_normal((3, 4, 5)).astype(np.float32)
    b = r.standard_normal((3, 4, 5)).astype(np.float32)
    y = F.add_relu(gk.tensor(a), gk.tensor(b))
    assert np.array_equal(y.numpy(), F.relu(gk.tensor(a) + gk.tensor(b)).numpy())


def test_add_relu_gradient_check():
    r = rng(2)
    a = r.standard_normal((2, 3, 4))
    b = r.standard_normal((2, 3, 4))
    s = a + b
    b[np.abs(s) < 1e-3] += 0.01  # keep the finite differences away from the kink at 0
    g = r.standard_normal((2, 3, 4))
    grad_check(lambda x, z: (F.add_relu(x, z) * gk.tensor(g)).sum(), [a, b])


def test_add_relu_gradients_only_where_needed():
    r = rng(3)
    a = gk.tensor(r.standard_normal((4, 5)), requires_grad=True)
    b = gk.tensor(r.standard_normal((4, 5)))
    y = F.add_relu(a, b)
    y.sum().backward()
    assert b.grad is None
    assert_close(a.grad, (y.numpy() > 0).astype(np.float64), atol=0, rtol=0, name="grad of a")
    with gk.no_grad():
        assert not F.add_relu(a, b).requires_grad


def test_add_relu_keeps_nan():
    y = F.add_relu(gk.tensor(np.array([np.nan, -1.0, 1.0])), gk.tensor(np.array([0.0, 0.5, np.inf])))
    out = y.numpy()
    assert np.isnan(out[0]) and out[1] == 0 and out[2] == np.inf


def test_add_relu_errors_name_what_was_received():
    a = gk.tensor(np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match=r"add_relu: a must be a Tensor, got ndarray"):
        F.add_relu(np.zeros((2, 3)), a)
    with pytest.raises(TypeError, match=r"add_relu: b must be a Tensor, got list"):
        F.add_relu(a, [1.0])
    with pytest.raises(ValueError, match=r"add_relu: a shape \(2, 3\) differs from b shape \(3, 2\)"):
        F.add_relu(a, gk.tensor(np.zeros((3, 2), np.float32)))
    with pytest.raises(ValueError, match=r"add_relu: a shape \(2, 3\) differs from b shape \(3,\)"):
        F.add_relu(a, gk.tensor(np.zeros(3, np.float32)))  # no broadcasting
    with pytest.raises(TypeError, match=r"add_relu: dtypes differ: a=float32, b=float64"):
        F.add_relu(a, gk.tensor(np.zeros((2, 3))))
    with pytest.raises(TypeError, match=r"add_relu: b must be a floating-point tensor, got dtype int64"):
        F.add_relu(a, gk.tensor(np.zeros((2, 3), np.int64)))


def test_reference_add_relu_large_arrays_take_the_parallel_path():
    n = _parallel.MIN_PARALLEL_BYTES // 4 + 12345  # float32, two sweeps: over the threshold
    r = rng(4)
    a = r.standard_normal(n).astype(np.float32)
    b = r.standard_normal(a.shape).astype(np.float32)
    y = ref.add_relu_forward(a, b)
    assert y.dtype == a.dtype and y.shape == a.shape
    assert np.array_equal(y, np.maximum(a + b, 0))
    small = ref.add_relu_forward(a[:7], b[:7])
    assert np.array_equal(small, np.maximum(a[:7] + b[:7], 0))
    with pytest.raises(ValueError, match=r"add_relu_forward: a shape \(7,\) differs from b shape \(6,\)"):
        ref.add_relu_forward(a[:7], b[:6])
    with pytest.raises(TypeError, match=r"add_relu_forward: a and b must share one dtype"):
        ref.add_relu_forward(a[:7], b[:7].astype(np.float64))


# ----------------------------------------------------------------------------- nn.Residual


def test_residual_with_relu_is_relu_of_the_sum():
    gk.manual_seed(0)
    body, proj = nn.Linear(4, 3), nn.Linear(4, 3, bias=False)
    x = rng(5).standard_normal((6, 4))
    plain = nn.Residual(body, proj).to(gk.float64)
    fused = nn.Residual(body, proj, activation="relu").to(gk.float64)
    assert fused.activation == "relu" and "activation='relu'" in repr(fused)
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in plain.named_parameters()]
    xt = gk.tensor(x, requires_grad=True)
    y = fused(xt)
    expected = np.maximum(plain(gk.tensor(x)).numpy(), 0)
    assert_close(y, expected, atol=1e-12, rtol=1e-12, name="forward")
    y.sum().backward()
    x2 = gk.tensor(x, requires_grad=True)
    F.relu(plain(x2)).sum().backward()
    assert_close(xt.grad, x2.grad, atol=1e-12, rtol=1e-12, name="grad of x")
    with pytest.raises(ValueError, match=r"Residual: activation must be None or 'relu', got 'tanh'"):
        nn.Residual(body, activation="tanh")


def test_residual_with_relu_matches_its_torch_twin():
    pytest.importorskip("torch")
    from benchmarks.torch_twin import torch_twin

    gk.manual_seed(1)
    block = nn.Residual(nn.Linear(5, 5), activation="relu").to(gk.float64)
    twin = torch_twin(block, torch.float64)
    x = rng(6).standard_normal((4, 5))
    assert_close(block(gk.tensor(x)), twin(torch.tensor(x)), atol=1e-12, rtol=1e-12, name="twin")


# ----------------------------------------------------------------------------- ResNet names


def _expected_resnet_keys(n):
    """The state_dict keys of resnet(6n + 2) as they were before the fusion, when a
    BasicBlock was Sequential(residual=Residual(body, shortcut), relu=ReLU()): the ReLU
    had no parameters nor buffers, so the keys are the residual's alone."""
    bn = lambda p: [f"{p}.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]  # noqa: E731
    keys = ["conv1.weight", *bn("bn1")]
    for stage in (1, 2, 3):
        for i in range(n):
            p = f"layer{stage}.{i}.residual"
            keys += [f"{p}.body.conv1.weight", *bn(f"{p}.body.bn1"), f"{p}.body.conv2.weight", *bn(f"{p}.body.bn2")]
            if stage > 1 and i == 0:
                keys += [f"{p}.shortcut.conv.weight", *bn(f"{p}.shortcut.bn")]
    return keys + ["fc.weight", "fc.bias"]


def test_resnet_parameter_names_are_unchanged_by_the_fused_relu():
    from models.resnet import BasicBlock, resnet8, resnet20

    for n, make in ((1, resnet8), (3, resnet20)):
        model = make()
        assert list(model.state_dict()) == _expected_resnet_keys(n)
        expected_params = [k for k in _expected_resnet_keys(n) if not k.split(".")[-1].startswith(("running", "num_"))]
        assert [name for name, _ in model.named_parameters()] == expected_params
        blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
        assert blocks and all(b.residual.activation == "relu" for b in blocks)
