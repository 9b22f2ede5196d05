"""Tensor creation rules and the autograd core (tensor.py) against PyTorch in float64."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch

import gpukernels as gk
from tests.helpers import TOL_IDS, TOLS, assert_close, grad_check, pair, to_torch

TIGHT = dict(atol=1e-12, rtol=1e-8)


def rng(seed=0):
    return np.random.default_rng(seed)


def check_grads(gk_inputs, torch_inputs, *, atol=1e-12, rtol=1e-8):
    for i, (x, xt) in enumerate(zip(gk_inputs, torch_inputs)):
        assert_close(x.grad, xt.grad, atol=atol, rtol=rtol, name=f"input {i} grad")
        assert x.grad.dtype == x.dtype, "a gradient has its tensor's dtype"


def run_both(fn, arrays, dtype=np.float64, seed=1, atol=1e-12, rtol=1e-8):
    """Apply fn to gk and torch leaves built from ``arrays``; compare output and grads,
    using the same random upstream gradient on both sides."""
    pairs = [pair(a, dtype) for a in arrays]
    y = fn(*(p[0] for p in pairs))
    yt = fn(*(p[1] for p in pairs))
    assert_close(y, yt, atol=atol, rtol=rtol, name="forward")
    g = rng(seed).standard_normal(yt.shape)
    y.backward(gk.tensor(g.astype(dtype)))
    yt.backward(torch.tensor(g.astype(dtype).astype(np.float64)))
    check_grads([p[0] for p in pairs], [p[1] for p in pairs], atol=atol, rtol=rtol)
    return y


# ----------------------------------------------------------------------------- creation


@pytest.mark.parametrize(
    "data, dtype, expected",
    [
        (1.5, None, np.float32),
        ([1.0, 2.0], None, np.float32),
        ([[1, 2], [3, 4.5]], None, np.float32),
        (3, None, np.int64),
        ([1, 2, 3], None, np.int64),
        (np.arange(3.0), None, np.float64),
        (np.float64(2.0), None, np.float64),
        (np.arange(3, dtype=np.float32), None, np.float32),
        (np.arange(3, dtype=np.int32), None, np.int32),
        (True, None, np.bool_),
        ([1, 2], "float64", np.float64),
        ([1.5, 2.5], gk.float64, np.float64),
        (np.arange(3.0), np.float32, np.float32),
        ([1.7, -2.7], gk.int64, np.int64),
    ],
    ids=lambda v: repr(v) if not isinstance(v, np.ndarray) else f"ndarray[{v.dtype}]",
)
def test_tensor_dtype_rules(data, dtype, expected):
    t = gk.tensor(data, dtype=dtype)
    assert t.dtype == np.dtype(expected)
    assert isinstance(t.numpy(), np.ndarray)
    ref = torch.tensor(np.asarray(data)).numpy().astype(expected)
    assert_close(t, ref, atol=0, rtol=0, name="values")


def test_tensor_copies_its_data():
    a = np.arange(4.0)
    t = gk.tensor(a)
    a[0] = 100.0
    assert t.numpy()[0] == 0.0
    t2 = gk.tensor(t)
    t.data[1] = -1.0
    assert t2.numpy()[1] == 1.0


def test_numpy_returns_host_array_with_values():
    t = gk.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=gk.float64)
    out = t.numpy()
    assert isinstance(out, np.ndarray) and out.shape == (2, 2) and out.dtype == np.float64
    np.testing.assert_array_equal(out, [[1, 2], [3, 4]])


@pytest.mark.parametrize("data, expected", [(2.5, 2.5), ([7], 7), ([[[-3.0]]], -3.0), (True, True)])
def test_item(data, expected):
    v = gk.tensor(data).item()
    assert v == expected and type(v) is type(expected)


def test_item_on_many_elements_raises():
    with pytest.raises(ValueError, match="3 elements"):
        gk.tensor([1.0, 2.0, 3.0]).item()


@pytest.mark.parametrize("src, dst", [(np.float32, np.float64), (np.float64, np.float32), (np.float64, np.float64)])
def test_to_dtype_is_differentiable(src, dst):
    x = gk.tensor(np.array([1.5, -2.0, 3.25], dtype=src), requires_grad=True)
    y = x.to(dst)
    assert y.dtype == np.dtype(dst)
    (y * y).sum().backward()
    assert x.grad.dtype == np.dtype(src)
    assert_close(x.grad, 2 * np.array([1.5, -2.0, 3.25]), atol=0, rtol=0, name="x.grad")


def test_to_dtype_keyword_and_shortcuts():
    x = gk.tensor([1, 2, 3])
    assert x.to(dtype=gk.float32).dtype == np.float32
    assert x.double().dtype == np.float64
    assert x.float().dtype == np.float32
    assert x.to("cpu").device == "cpu"


def _int(t):
    return t.to(gk.int64) if isinstance(t, gk.Tensor) else t.to(torch.int64)


def _f64(t):
    return t.to(gk.float64) if isinstance(t, gk.Tensor) else t.to(torch.float64)


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda x: x + 2.5, np.float32),
        (lambda x: 2.5 * x, np.float32),
        (lambda x: x / np.float64(3.0), np.float32),
        (lambda x: np.float64(3.0) - x, np.float32),
        (lambda x: _int(x) + 2.5, np.float32),  # int tensor with a Python float: float32
        (lambda x: 2.5 - _int(x), np.float32),
        (lambda x: _int(x) * 2, np.int64),
        (lambda x: _int(x) * x, np.float32),  # int tensor with a float tensor: the float dtype
        (lambda x: _f64(x) - _int(x), np.float64),
        (lambda x: _f64(x) * x, np.float64),
    ],
    ids=["x+f", "f*x", "x/np64", "np64-x", "int+f", "f-int", "int*i", "int*f32", "f64-int", "f64*f32"],
)
def test_scalar_and_mixed_dtype_promotion_like_torch(make, expected):
    x = gk.tensor([1.0, 2.0, 3.0])
    xt = torch.tensor([1.0, 2.0, 3.0])
    assert make(x).dtype == np.dtype(expected)
    assert str(make(xt).dtype) == f"torch.{np.dtype(expected).name}"
    assert_close(make(x), make(xt), atol=0, rtol=0, name="values")


def test_int_tensor_times_float_leaf_gradient():
    x = gk.tensor([1.0, 2.0], requires_grad=True)
    k = gk.tensor([3, -4])
    y = x * k
    assert y.dtype == np.float32 and y.requires_grad
    y.sum().backward()
    assert x.grad.dtype == np.float32
    assert_close(x.grad, [3.0, -4.0], atol=0, rtol=0, name="x.grad")


# ----------------------------------------------------------------------------- binary ops

BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
}
BROADCAST_SHAPES = [
    ((3, 1, 5), (4, 5)),
    ((4, 5), (3, 1, 5)),
    ((2, 3), (2, 3)),
    ((1,), (2, 3)),
    ((), (2, 3)),
    ((2, 3), ()),
    ((5,), (4, 1)),
    ((2, 1, 4), (1, 3, 1)),
]


def _operand(shape, seed, positive=False):
    a = rng(seed).standard_normal(shape)
    if positive:  # a divisor away from zero
        a = np.sign(a) * (np.abs(a) + 0.5) if a.ndim else np.float64(1.7)
    return np.asarray(a)


@pytest.mark.parametrize("op", list(BINARY))
@pytest.mark.parametrize("shapes", BROADCAST_SHAPES, ids=str)
def test_binary_op_broadcasting_vs_torch(op, shapes):
    a = _operand(shapes[0], 1)
    b = _operand(shapes[1], 2, positive=(op == "div"))
    run_both(BINARY[op], [a, b])


@pytest.mark.parametrize("dtype, atol, rtol", TOLS, ids=TOL_IDS)
@pytest.mark.parametrize("op", list(BINARY))
def test_binary_op_dtypes(op, dtype, atol, rtol):
    a = _operand((3, 1, 5), 3)
    b = _operand((4, 5), 4, positive=True)
    y = run_both(BINARY[op], [a, b], dtype=dtype, atol=atol, rtol=rtol)
    assert y.dtype == np.dtype(dtype)


SCALAR_EXPRS = {
    "x+s": lambda x: x + 2.5,
    "s+x": lambda x: 2.5 + x,
    "x-s": lambda x: x - 2,
    "s-x": lambda x: 2 - x,
    "x*s": lambda x: x * -3.0,
    "s*x": lambda x: 3 * x,
    "x/s": lambda x: x / 4.0,
    "s/x": lambda x: 2.0 / x,
    "np+x": lambda x: np.float64(1.5) + x,
    "x*np": lambda x: x * np.float64(-2.0),
    "np/x": lambda x: np.float64(3.0) / x,
    "x-np32": lambda x: x - np.float32(0.25),
}


@pytest.mark.parametrize("expr", list(SCALAR_EXPRS))
def test_scalar_operands_both_sides(expr):
    x = _operand((3, 4), 5, positive=True)
    y = run_both(SCALAR_EXPRS[expr], [x])
    assert isinstance(y, gk.Tensor)


# ----------------------------------------------------------------------------- unary ops

UNARY = {
    "neg": (lambda x: -x, False),
    "pow2": (lambda x: x**2, False),
    "pow3": (lambda x: x**3, False),
    "pow0.5": (lambda x: x**0.5, True),
    "pow-1": (lambda x: x**-1, True),
    "pow1.5": (lambda x: x**1.5, True),
    "pow0": (lambda x: x**0, False),
    "sqrt": (lambda x: x.sqrt(), True),
    "exp": (lambda x: x.exp(), False),
    "log": (lambda x: x.log(), True),
    "abs": (lambda x: x.abs(), False),
}


@pytest.mark.parametrize("name", list(UNARY))
@pytest.mark.parametrize("dtype, atol, rtol", TOLS, ids=TOL_IDS)
def test_unary_ops_vs_torch(name, dtype, atol, rtol):
    fn, positive = UNARY[name]
    x = rng(7).standard_normal((3, 4))
    x = np.abs(x) + 0.3 if positive else x
    if name == "abs":
        x = np.where(np.abs(x) < 1e-3, 0.5, x)  # no kink inside the data
    run_both(fn, [x], dtype=dtype, atol=atol, rtol=rtol)


def test_pow_with_tensor_exponent_raises():
    x = gk.tensor([1.0, 2.0])
    with pytest.raises(TypeError, match="exponent"):
        x ** gk.tensor([2.0, 2.0])


# ----------------------------------------------------------------------------- matmul

MATMUL_SHAPES = [
    ((4,), (4,)),
    ((3, 4), (4,)),
    ((4,), (4, 5)),
    ((3, 4), (4, 5)),
    ((2, 3, 4), (4, 5)),
    ((4, 5), (2, 5, 3)),
    ((2, 1, 3, 4), (5, 4, 6)),
    ((4,), (2, 4, 5)),
    ((2, 3, 4), (4,)),
    ((1, 3, 4), (2, 4, 2)),
]


@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
def test_matmul_vs_torch(shapes):
    a = rng(11).standard_normal(shapes[0])
    b = rng(12).standard_normal(shapes[1])
    run_both(lambda x, y: x @ y, [a, b])


@pytest.mark.parametrize("dtype, atol, rtol", TOLS, ids=TOL_IDS)
def test_matmul_dtypes(dtype, atol, rtol):
    run_both(lambda x, y: x @ y, [rng(1).standard_normal((2, 3, 4)), rng(2).standard_normal((4, 3))],
             dtype=dtype, atol=atol, rtol=rtol)


def test_matmul_same_tensor_both_sides():
    run_both(lambda x: x @ x.T, [rng(3).standard_normal((3, 4))])


def test_matmul_with_scalar_raises():
    with pytest.raises(ValueError, match="at least one dimension"):
        gk.tensor([1.0, 2.0]) @ gk.tensor(2.0)


# ----------------------------------------------------------------------------- reductions

REDUCE_DIMS = [None, 0, 1, -1, (0, 2), (2, 0)]


@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", REDUCE_DIMS, ids=str)
@pytest.mark.parametrize("op", ["sum", "mean", "max"])
def test_reductions_vs_torch(op, dim, keepdim):
    x = rng(21).standard_normal((3, 4, 5))  # continuous: no ties

    def fn(t):
        if op == "max" and isinstance(t, torch.Tensor):
            return t.amax() if dim is None and not keepdim else t.amax(
                dim=tuple(range(t.ndim)) if dim is None else dim, keepdim=keepdim)
        if dim is None and isinstance(t, torch.Tensor):
            r = getattr(t, op)()
            return r.reshape((1, 1, 1)) if keepdim else r
        return getattr(t, op)(dim=dim, keepdim=keepdim)

    run_both(fn, [x])


@pytest.mark.parametrize("dim", [None, 0, 1])
def test_max_ties_split_gradient_like_torch_amax(dim):
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0], [3.0, -1.0, 3.0]])
    if dim is None:
        run_both(lambda t: t.max() if isinstance(t, torch.Tensor) else t.max(), [x])
    else:
        run_both(lambda t: t.amax(dim=dim) if isinstance(t, torch.Tensor) else t.max(dim=dim), [x])


def test_reduction_dim_out_of_range():
    with pytest.raises(IndexError, match="dim 3"):
        gk.tensor(np.zeros((2, 3))).sum(dim=3)


# ----------------------------------------------------------------------------- shape ops

SHAPE_OPS = {
    "reshape": lambda t: t.reshape(4, 6),
    "reshape-1": lambda t: t.reshape((2, -1)),
    "view": lambda t: t.view(24),
    "flatten": lambda t: t.flatten(),
    "flatten12": lambda t: t.flatten(1, 2),
    "flatten0,1": lambda t: t.flatten(0, 1),
    "permute": lambda t: t.permute(2, 0, 1),
    "permute-neg": lambda t: t.permute((-1, -3, -2)),
    "transpose": lambda t: t.transpose(0, 2),
    "transpose-neg": lambda t: t.transpose(-1, -2),
    "T-chain": lambda t: t.reshape(6, 4).T * 2.0,
}


@pytest.mark.parametrize("name", list(SHAPE_OPS))
def test_shape_ops_vs_torch(name):
    run_both(SHAPE_OPS[name], [rng(31).standard_normal((2, 3, 4))])


def test_reshape_bad_shape_raises():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 2\)"):
        gk.tensor(np.zeros((2, 3))).reshape(4, 2)


def test_permute_bad_dims_raises():
    with pytest.raises(ValueError, match="not a permutation"):
        gk.tensor(np.zeros((2, 3))).permute(0, 0)


GETITEM = {
    "int": lambda t: t[1],
    "neg-int": lambda t: t[-1],
    "slice": lambda t: t[1:, ::2],
    "ellipsis": lambda t: t[..., 1],
    "none": lambda t: t[None, 0],
    "mixed": lambda t: t[0, 1:3, -2],
    "int-list-repeats": lambda t: t[[0, 2, 0, 0]],
    "int-array-2d": lambda t: t[[0, 1, 1], [2, 2, 0]],
    "int-array-matrix": lambda t: t[:, [[1, 1], [0, 3]]],
    "int-array-last": lambda t: t[..., [3, 3, 0]],
}


@pytest.mark.parametrize("name", list(GETITEM))
def test_getitem_vs_torch(name):
    run_both(GETITEM[name], [rng(41).standard_normal((3, 4, 5))])


def test_getitem_with_index_tensor_and_bool_mask():
    data = rng(42).standard_normal((4, 3))
    x, xt = pair(data)
    idx = gk.tensor([3, 0, 3])
    mask = x > 0
    y = x[idx].sum() * 2.0 + (x[mask] ** 2).sum()
    yt = xt[torch.tensor([3, 0, 3])].sum() * 2.0 + (xt[torch.tensor(data > 0)] ** 2).sum()
    assert_close(y, yt, **TIGHT, name="y")
    y.backward()
    yt.backward()
    assert_close(x.grad, xt.grad, **TIGHT, name="x.grad")


def test_getitem_repeated_index_accumulates():
    x = gk.tensor(np.zeros(3), requires_grad=True)
    x[[0, 0, 0, 2]].sum().backward()
    assert_close(x.grad, [3.0, 0.0, 1.0], atol=0, rtol=0, name="x.grad")


# ----------------------------------------------------------------------------- graph structure


def test_tensor_used_twice_accumulates():
    data = rng(51).standard_normal((3, 4))
    run_both(lambda t: t * t + t, [data])
    x = gk.tensor(data, requires_grad=True)
    (x * x + x).sum().backward()
    assert_close(x.grad, 2 * data + 1, **TIGHT, name="x.grad")


def test_residual_branch_accumulates():
    w_data = rng(52).standard_normal((4, 4))

    def block(t, w):
        h = (t @ w).exp() * 0.1
        return h + t  # residual: t feeds both branches

    run_both(lambda t, w: block(block(t, w), w), [rng(53).standard_normal((3, 4)), w_data])


def test_diamond_graph():
    run_both(lambda t: (t * 2.0) * (t.exp()) - (t * 2.0) / (t.abs() + 1.0), [rng(54).standard_normal(5)])


def test_grad_accumulates_across_backward_calls_like_torch():
    data = rng(55).standard_normal((2, 3))
    x, xt = pair(data)
    y = (x * x).exp().sum()
    yt = (xt * xt).exp().sum()
    y.backward(retain_graph=True)
    yt.backward(retain_graph=True)
    assert_close(x.grad, xt.grad, **TIGHT, name="first")
    y.backward()
    yt.backward()
    assert_close(x.grad, xt.grad, **TIGHT, name="second")
    assert_close(x.grad, 2 * 2 * data * np.exp(data * data), **TIGHT, name="twice")


def test_grad_accumulates_across_graphs():
    x = gk.tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * 3.0).sum().backward()
    (x * x).sum().backward()
    assert_close(x.grad, [3.0 + 2.0, 3.0 + 4.0], atol=0, rtol=0, name="x.grad")


def test_second_backward_without_retain_graph_raises():
    x = gk.tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()
    xt = torch.tensor([1.0, 2.0], requires_grad=True)
    yt = (xt * xt).sum()
    yt.backward()
    with pytest.raises(RuntimeError):  # torch agrees
        yt.backward()


def test_grad_of_a_shared_leaf_is_its_own_memory():
    x = gk.tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = gk.tensor(np.array([3.0, 4.0]), requires_grad=True)
    (x + y).sum().backward()
    x.grad.data += 10.0
    assert_close(y.grad, [1.0, 1.0], atol=0, rtol=0, name="y.grad untouched")


def test_retain_grad_on_intermediate():
    x = gk.tensor(np.array([1.0, -2.0]), requires_grad=True)
    h = x * 3.0
    h.retain_grad()
    (h * h).sum().backward()
    assert_close(h.grad, [6.0, -12.0], atol=0, rtol=0, name="h.grad")
    assert_close(x.grad, [18.0, -36.0], atol=0, rtol=0, name="x.grad")


def test_non_leaf_grad_is_not_kept_by_default():
    x = gk.tensor(np.array([1.0, 2.0]), requires_grad=True)
    h = x * 2.0
    h.sum().backward()
    assert h.grad is None and not h.is_leaf and h.grad_fn is not None


def test_backward_accepts_numpy_gradient():
    x = gk.tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * 2.0).backward(np.array([1.0, -1.0]))
    assert_close(x.grad, [2.0, -2.0], atol=0, rtol=0, name="x.grad")


# ----------------------------------------------------------------------------- grad mode


def test_no_grad_context_records_nothing():
    x = gk.tensor(np.array([1.0, 2.0]), requires_grad=True)
    with gk.no_grad():
        assert not gk.is_grad_enabled()
        y = x * 2.0 + x
        z = y.exp().sum()
    assert gk.is_grad_enabled()
    assert not y.requires_grad and y.grad_fn is None and not z.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        z.backward()


def test_no_grad_decorator_and_nesting():
    @gk.no_grad()
    def f(t):
        assert not gk.is_grad_enabled()
        with gk.enable_grad():
            inner = t * 2.0
        return t * 2.0, inner

    x = gk.tensor(np.array([1.0]), requires_grad=True)
    out, inner = f(x)
    assert not out.requires_grad and inner.requires_grad
    assert gk.is_grad_enabled()


def test_no_grad_restores_after_exception():
    with pytest.raises(KeyError):
        with gk.no_grad():
            raise KeyError("boom")
    assert gk.is_grad_enabled()


def test_detach():
    x = gk.tensor(np.array([1.0, 2.0]), requires_grad=True)
    d = (x * 2.0).detach()
    assert not d.requires_grad and d.is_leaf and d.grad_fn is None
    y = (x * d).sum()
    y.backward()
    assert_close(x.grad, [2.0, 4.0], atol=0, rtol=0, name="x.grad (d is a constant)")
    d2 = x.detach()
    d2.data[0] = 7.0  # shares memory like torch's detach
    assert x.numpy()[0] == 7.0


def test_requires_grad_propagation():
    a = gk.tensor([1.0, 2.0], requires_grad=True)
    b = gk.tensor([3.0, 4.0])
    c = gk.tensor([5.0, 6.0])
    assert (a + b).requires_grad and (b * a).requires_grad
    assert not (b + c).requires_grad and (b + c).grad_fn is None
    assert not (a > b).requires_grad and (a > b).dtype == np.bool_
    assert not a.argmax().requires_grad


def test_int_tensor_cannot_require_grad():
    with pytest.raises(TypeError, match="int64"):
        gk.tensor([1, 2], requires_grad=True)
    with pytest.raises(TypeError, match="floating"):
        gk.tensor([1, 2]).requires_grad_()
    with pytest.raises((TypeError, RuntimeError)):  # torch refuses too
        torch.tensor([1, 2], requires_grad=True)


def test_requires_grad_on_non_leaf_raises():
    x = gk.tensor([1.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf"):
        (x * 2.0).requires_grad_(False)


def test_backward_non_scalar_without_gradient_mentions_shape():
    x = gk.tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"scalar.*\(2, 3\)"):
        (x * 2.0).backward()


def test_backward_wrong_shape_gradient_raises():
    x = gk.tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"\(3, 2\).*expected \(2, 3\)"):
        (x * 2.0).backward(gk.tensor(np.ones((3, 2))))


def test_backward_one_element_non_scalar_is_fine():
    x = gk.tensor(np.array([[3.0]]), requires_grad=True)
    (x * x).backward()
    assert_close(x.grad, [[6.0]], atol=0, rtol=0, name="x.grad")


def test_deep_chain_does_not_hit_recursion_limit():
    depth = max(3000, sys.getrecursionlimit() + 500)
    x = gk.tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = x
    for _ in range(depth):
        y = y + 1.0
    y = y * 0.5
    y.sum().backward()
    assert_close(y, np.array([1.0, 2.0]) / 2 + depth / 2, atol=1e-9, rtol=0, name="y")
    assert_close(x.grad, [0.5, 0.5], atol=0, rtol=0, name="x.grad")


def test_deep_chain_through_a_shared_tensor():
    x = gk.tensor(np.array([0.5]), requires_grad=True)
    y = x
    for _ in range(2000):
        y = y * 0.999 + x * 0.001  # x feeds every level
    y.sum().backward()
    xt = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    yt = xt
    for _ in range(2000):
        yt = yt * 0.999 + xt * 0.001
    yt.sum().backward()
    assert_close(x.grad, xt.grad, atol=1e-12, rtol=1e-8, name="x.grad")


# ----------------------------------------------------------------------------- finite differences


def test_grad_check_composite_expression():
    def f(a, b, c):
        h = (a @ b).exp() * 0.2 + c       # broadcasting c over rows
        h = h / (h.abs() + 1.0)
        return (h.max(dim=1) ** 2).mean() - (a[[0, 0, 1]] ** 3).sum() * 0.1 + (b.abs() + 0.5).log().sum()

    r = rng(61)
    grad_check(f, [r.standard_normal((2, 3)), r.standard_normal((3, 4)), r.standard_normal(4)])


def test_grad_check_reductions_and_shapes():
    def f(x):
        y = x.permute(2, 0, 1).reshape(4, 6).transpose(0, 1)
        return (y.sum(dim=0, keepdim=True) * y.mean(dim=1, keepdim=True)).sum() / (x ** 2 + 1.0).sum()

    grad_check(f, [rng(62).standard_normal((2, 3, 4))])


def test_no_warnings_in_plain_ops():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = gk.tensor(np.linspace(0.5, 2.0, 6), requires_grad=True)
        ((x.log() + x.exp()) / x).sum().backward()
    assert x.grad is not None


def test_to_torch_helper_copies_to_float64():
    x = gk.tensor([1.0, 2.0])
    t = to_torch(x, requires_grad=True)
    assert t.dtype == torch.float64 and t.requires_grad
    t.data[0] = 5.0
    assert x.numpy()[0] == 1.0


@pytest.mark.parametrize("name", ["pow0", "pow1", "pow2", "pow3", "abs", "mul-self"])
def test_elementwise_grads_at_zero_like_torch(name):
    fn = {"pow0": lambda t: t**0, "pow1": lambda t: t**1, "pow2": lambda t: t**2,
          "pow3": lambda t: t**3, "abs": lambda t: t.abs(), "mul-self": lambda t: t * t}[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_both(fn, [np.array([0.0, -1.5, 0.0, 2.0])])


def test_leaf_gradients_never_share_memory():
    """Add passes one gradient array to both inputs; each .grad must own its memory, so
    accumulating into one later leaves the other alone (and the caller's array too)."""
    a = gk.tensor(np.ones(3), requires_grad=True)
    b = gk.tensor(np.ones(3), requires_grad=True)
    upstream = np.full(3, 2.0)
    (a + b).backward(gk.tensor(upstream))
    assert not np.shares_memory(a.grad.data, b.grad.data)
    (a * 3.0).sum().backward()
    assert_close(a.grad, [5.0, 5.0, 5.0], atol=0, rtol=0, name="a.grad")
    assert_close(b.grad, [2.0, 2.0, 2.0], atol=0, rtol=0, name="b.grad")
    assert_close(upstream, [2.0, 2.0, 2.0], atol=0, rtol=0, name="caller's gradient")
    x = gk.tensor(np.ones((2, 3)), requires_grad=True)
    y = gk.tensor(np.ones(6), requires_grad=True)
    (x.reshape(6) + y).backward(gk.tensor(np.ones(6)))
    assert not np.shares_memory(x.grad.data, y.grad.data)


@pytest.mark.parametrize("dim", [0, 1, 2, -1, -3])
def test_unsqueeze_squeeze_clone_match_torch(dim):
    x = np.random.default_rng(5).standard_normal((3, 1, 4))
    a, t = gk.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    g = np.random.default_rng(6).standard_normal(t.unsqueeze(dim).shape)
    out, tout = a.clone().unsqueeze(dim), t.clone().unsqueeze(dim)
    assert out.shape == tuple(tout.shape)
    out.backward(gk.tensor(g))
    tout.backward(torch.tensor(g))
    assert_close(a.grad, t.grad, atol=0, rtol=0, name="grad")
    assert a.squeeze().shape == tuple(t.squeeze().shape)
    assert a.squeeze(1).shape == tuple(t.squeeze(1).shape)
    assert a.squeeze(0).shape == tuple(t.squeeze(0).shape)


# ----------------------------------------------------------------------------- version counters
# In-place ops bump a tensor's version; backward refuses a saved tensor whose version
# changed since the forward pass saved it (PyTorch's check), and in-place ops on a leaf
# that requires grad are refused outside no_grad. Each case runs on torch too.

_XS = np.array([1.0, -2.0, 3.0])
_WS = np.array([0.5, 2.0, -1.0])


def _leaves(lib):
    if lib == "torch":
        return torch.tensor(_XS, requires_grad=True), torch.tensor(_WS, requires_grad=True)
    return gk.tensor(_XS, requires_grad=True), gk.tensor(_WS, requires_grad=True)


def _no_grad(lib):
    return torch.no_grad() if lib == "torch" else gk.no_grad()


def _setitem(t, w):
    t[1] = w[0]


#: name -> in-place change of y (w: a second tensor of y's shape)
INPLACE = {
    "zero_": lambda y, w: y.zero_(),
    "fill_": lambda y, w: y.fill_(7.0),
    "add_": lambda y, w: y.add_(w, alpha=2.0),
    "mul_": lambda y, w: y.mul_(w),
    "copy_": lambda y, w: y.copy_(w),
    "setitem": lambda y, w: _setitem(y, w.detach()),
}


def test_issue_probe_zero_after_forward_raises_naming_the_op():
    x = gk.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    z = (y * y).sum()
    y.zero_()
    with pytest.raises(RuntimeError, match=r"modified by an inplace operation: \[Tensor of shape \(2,\), "
                                           r"dtype float32\] saved by Mul is at version 1; expected version 0"):
        z.backward()
    assert x.grad is None  # nothing wrong was accumulated


@pytest.mark.parametrize("op", list(INPLACE))
@pytest.mark.parametrize("under_no_grad", [False, True], ids=["recorded", "no_grad"])
def test_inplace_change_of_a_saved_tensor_fails_backward_like_torch(op, under_no_grad):
    for lib in ("torch", "gk"):
        x, w = _leaves(lib)
        y = x * 2
        z = (y * y).sum()  # saves y
        if under_no_grad:
            with _no_grad(lib):
                INPLACE[op](y, w)
        else:
            INPLACE[op](y, w)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            z.backward()


@pytest.mark.parametrize("make", [
    lambda y: y.reshape(3, 1), lambda y: y.detach(), lambda y: y[1:], lambda y: y[0],
    lambda y: y.reshape(1, 3).permute(1, 0),
], ids=["reshape", "detach", "slice", "int-index", "permute"])
def test_a_change_through_a_view_or_detach_is_seen(make):
    x, _ = _leaves("gk")
    y = x.exp()  # saves its output
    z = y.sum() * 1.0
    with gk.no_grad():
        make(y).zero_()
    assert y._version == 1
    with pytest.raises(RuntimeError, match=r"saved by Exp is at version 1; expected version 0"):
        z.backward()


def test_ops_that_save_nothing_allow_an_inplace_change_like_torch():
    for op in INPLACE:
        grads = []
        for lib in ("torch", "gk"):
            x, w = _leaves(lib)
            y = x * 2
            z = (y + 1).sum() + y.reshape(3, 1).sum()  # Add, Sum and Reshape save nothing
            with _no_grad(lib):
                INPLACE[op](y, w)
            z.backward()
            grads.append(x.grad.numpy())
        np.testing.assert_array_equal(grads[0], grads[1], err_msg=op)


@pytest.mark.parametrize("op", list(INPLACE))
def test_inplace_on_a_leaf_that_requires_grad_raises_outside_no_grad(op):
    for lib in ("torch", "gk"):
        x, w = _leaves(lib)
        with pytest.raises(RuntimeError, match="a leaf Variable that requires grad is being used in an in-place operation"):
            INPLACE[op](x, w)
        with _no_grad(lib):
            INPLACE[op](x, w)  # allowed: how optimizers and init change parameters
        assert x._version == 1


def test_every_inplace_op_bumps_the_version_and_views_share_it():
    t = gk.zeros(2, 3)
    v, d = t.reshape(6), t.detach()
    t.zero_()
    t.fill_(1.0)
    t.add_(gk.ones(3))
    t.mul_(3)
    t.copy_(np.full((2, 3), 5.0))
    t[0, 1] = 9.0
    v.add_(1.0)
    assert t._version == v._version == d._version == 7
    np.testing.assert_array_equal(t.numpy(), [[6, 10, 6], [6, 6, 6]])
    assert gk.zeros(2)._version == 0 and (t + 1)._version == 0  # a new tensor starts at 0


@pytest.mark.parametrize("expr", [
    "y = x * 2; y.mul_(3); out = y.sum()",
    "y = x * 2; z = y + 1; y.mul_(3); out = (z + y).sum()",
    "y = x * 2; y.add_(w, alpha=2.0); out = (y * y).sum()",
    "y = x * 2; y.mul_(w); out = (y * x).sum()",
    "y = x * 1; y.copy_(w); out = (y * x).sum()",
    "y = x * 2; y[1] = w[0] * 5; out = (y * y).sum()",
    "y = x * 2; s = y.sum(); y[0:2] = w[1:]; out = s + (y * 3).sum()",
    "y = x * 2; s = y.sum(); y.zero_(); out = s + (y + w).sum()",
    "y = x * 2; y.fill_(1.5); y.add_(x); y.mul_(w); out = (y * y).sum()",
    "a = zeros(3); a.add_(w); a.mul_(x); out = a.sum()",
])
def test_recorded_inplace_ops_give_torch_gradients(expr):
    """Outside no_grad, an in-place op on a non-leaf is recorded: the tensor becomes the
    op's output and the consumers recorded before still reach its old value's node."""
    grads = []
    for lib in ("torch", "gk"):
        x, w = _leaves(lib)
        zeros = (lambda n: torch.zeros(n, dtype=torch.float64)) if lib == "torch" else (
            lambda n: gk.zeros(n, dtype=gk.float64))
        scope = {"x": x, "w": w, "zeros": zeros}
        exec(expr, scope)  # noqa: S102 - the same statements on both libraries
        scope["out"].backward()
        grads.append([None if t.grad is None else t.grad.numpy() for t in (x, w)])
    for (gx, gw), (tx, tw) in zip([grads[1]], [grads[0]]):
        np.testing.assert_allclose(gx, tx, rtol=0, atol=1e-12)
        assert (gw is None) == (tw is None)
        if gw is not None:
            np.testing.assert_allclose(gw, tw, rtol=0, atol=1e-12)


def test_inplace_on_a_view_of_a_tensor_that_requires_grad_is_refused_while_recording():
    x, _ = _leaves("gk")
    with pytest.raises(RuntimeError, match=r"zero_: in-place operation on a view"):
        x[0].zero_()
    y = x * 2
    with pytest.raises(RuntimeError, match=r"add_: in-place operation on a view"):
        y.reshape(3, 1).add_(1.0)


@pytest.mark.parametrize("call, error, match", [
    (lambda: gk.zeros(2, 3).add_(gk.ones(4)), ValueError, r"add_: shapes \(2, 3\) and \(4,\) cannot be broadcast"),
    (lambda: gk.zeros(3).mul_(gk.ones(2, 3)), ValueError, r"mul_: output with shape \(3,\) doesn't match the broadcast shape \(2, 3\)"),
    (lambda: gk.zeros(3, dtype=gk.int64).add_(1.5), TypeError, r"add_: result type float32 can't be cast to .* int64"),
    (lambda: gk.zeros(3).copy_(gk.ones(2)), ValueError, r"copy_: .*\(2,\).*\(3,\)"),
    (lambda: gk.zeros(3).__setitem__(slice(0, 2), gk.ones(3)), ValueError,
     r"__setitem__: cannot assign a value of shape \(3,\) to index slice\(0, 2, None\) of a tensor of shape \(3,\)"),
    (lambda: gk.zeros(3).fill_("a"), TypeError, r"fill_: value must be a number"),
])
def test_inplace_op_errors_name_the_op_and_shapes(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_optimizer_step_and_load_state_dict_bump_every_parameter_once():
    model = gk.nn.Sequential(gk.nn.Linear(3, 4), gk.nn.ReLU(), gk.nn.Linear(4, 2))
    opt = gk.optim.Adam(model.parameters(), lr=1e-2)
    before = [p._version for p in model.parameters()]
    for _ in range(3):
        opt.zero_grad()
        model(gk.ones(5, 3)).sum().backward()
        opt.step()  # one flat-buffer update: one bump shared by all its parameters
    assert [p._version for p in model.parameters()] == [max(before) + 3] * 4
    loss = model(gk.ones(5, 3)).sum()
    for p in model.parameters():
        p.grad = gk.ones(*p.shape)
    opt.step()
    with pytest.raises(RuntimeError, match=r"\[Tensor of shape \(2, 4\), dtype float32\] saved by LinearFunction"):
        loss.backward()
    loss = model(gk.ones(5, 3)).sum()
    model.load_state_dict({k: v.numpy().copy() for k, v in model.state_dict().items()})
    with pytest.raises(RuntimeError, match=r"saved by LinearFunction is at version \d+; expected version \d+"):
        loss.backward()
    version = model[0].weight._version
    gk.nn.init.zeros_(model[0].weight)
    assert model[0].weight._version == version + 1
