"""One clear error for each bad input at the public surface: ``@`` and ``F.linear``
share one dtype rule (a mix is refused, as in PyTorch), shape errors name the op and
both shapes, and ``gk.tensor`` names the dimension where nested lists are ragged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpukernels as gk
from gpukernels import functional as F


def _t(shape, dtype=np.float32):
    return gk.tensor(np.ones(shape, dtype))


# ----------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("a, b", [("float32", "float64"), ("float64", "float32"), ("float16", "float32"),
                                  ("float32", "int64"), ("int64", "float64")])
def test_matmul_refuses_a_dtype_mix_like_torch_and_linear(a, b):
    x, w = _t((2, 3), a), _t((3, 4), b)
    with pytest.raises(RuntimeError):  # torch refuses the same mix
        torch.ones(2, 3, dtype=getattr(torch, a)) @ torch.ones(3, 4, dtype=getattr(torch, b))
    with pytest.raises(TypeError, match=rf"^matmul: dtypes differ: input={a}, other={b} "):
        x @ w
    with pytest.raises(TypeError, match=rf"^matmul: dtypes differ: input={a}, other={b} "):
        x.data @ w  # NumPy array on the left: __rmatmul__
    with pytest.raises(TypeError, match=rf"^matmul: dtypes differ: input={a}, other={b} "):
        x @ w.data  # NumPy array on the right: wrapped, same rule
    if a.startswith("float") and b.startswith("float"):  # the one rule F.linear follows too
        with pytest.raises(TypeError, match=rf"^linear: dtypes differ: input={a}, weight={b} "):
            F.linear(x, _t((4, 3), b))
    for dtype in (a, b):  # one dtype: kept
        assert (_t((2, 3), dtype) @ _t((3, 4), dtype)).dtype == np.dtype(dtype)


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("op, name", [
    (lambda a, b: a + b, "add"), (lambda a, b: a - b, "sub"), (lambda a, b: a * b, "mul"),
    (lambda a, b: a / b, "div"), (lambda a, b: b + a, "add"), (lambda a, b: a < b, "comparison"),
])
def test_broadcast_errors_name_the_op_and_both_shapes(op, name):
    a, b = _t((2, 3)), _t((4,))
    with pytest.raises(ValueError) as info:
        op(a, b)
    message = str(info.value)
    assert message.startswith(f"{name}: shapes ")
    assert "(2, 3)" in message and "(4,)" in message and "size 3" in message and "size 4" in message
    assert "operands could not be broadcast" not in message  # NumPy's own words


@pytest.mark.parametrize("sa, sb, detail", [
    ((2, 3), (2, 3), "last dimension (3) must equal the second's second-to-last dimension (2)"),
    ((3,), (2,), "last dimension (3) must equal the second's only dimension (2)"),
    ((5, 2, 3), (4, 3, 2), "batch dimensions"),
])
def test_matmul_shape_errors_name_both_shapes(sa, sb, detail):
    with pytest.raises(ValueError) as info:
        _t(sa) @ _t(sb)
    message = str(info.value)
    assert message.startswith("matmul")
    assert str(sa) in message and str(sb) in message and detail in message, message
    assert "gufunc" not in message


# ----------------------------------------------------------------------------- ragged data


@pytest.mark.parametrize("data, dim, where", [
    ([[1, 2], [3]], 1, "length 2 at data[0] but length 1 at data[1]"),
    ([[1.0, 2.0], [3.0, 4.0], [5.0]], 1, "length 2 at data[0] but length 1 at data[2]"),
    ([[[1], [2]], [[3], [4, 5]]], 2, "length 1 at data[0][0] but length 2 at data[1][1]"),
    ([[1, 2], 3], 1, "data[0] is a sequence but data[1] is a scalar (3)"),
    ([[[1, 2]], [[3, 4], [5, 6]]], 1, "length 1 at data[0] but length 2 at data[1]"),
])
def test_ragged_nested_lists_name_the_dimension(data, dim, where):
    with pytest.raises(ValueError, match=r"^tensor\(\): ragged nested sequence") as info:
        gk.tensor(data)
    message = str(info.value)
    assert f"dimension {dim}" in message and where in message, message
    assert "inhomogeneous" not in message  # NumPy's own words
    # rectangular ones still load
    assert gk.tensor([[1, 2], [3, 4]]).shape == (2, 2)
    assert gk.tensor([[[1.0]], [[2.0]]]).shape == (2, 1, 1)
    assert gk.tensor([]).shape == (0,)
    assert gk.tensor([[1], [2]]).dtype == np.int64
