"""Triton cast kernel (interpreter) vs the reference and torch: float32 <-> bf16 / float16
rounding (ties to even, NaN, inf, subnormals), layouts kept, awkward sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpukernels as gk
from gpukernels import backend
from gpukernels.reference import cast as ref
from gpukernels.dtypes import to_float32
from gpukernels.kernels import cast_array
from tests.helpers import assert_close

pytestmark = pytest.mark.skipif(not backend.interpreting(), reason="needs TRITON_INTERPRET=1")

SPECIAL = np.array([0.0, -0.0, 1.0, -2.5, np.inf, -np.inf, 1e-40, -1e-42, 3.3895e38, 65504.0,
                    1.00390625, 1.01171875, 1.0 + 2**-8, 1.0 + 3 * 2**-8], np.float32)  # bf16 ties


@pytest.fixture
def tri():
    from gpukernels.triton import cast

    return cast


def _values(n, seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([SPECIAL, (rng.standard_normal(n) * 10.0 ** rng.integers(-20, 20, n)).astype(np.float32)])


def _torch_bits(a):
    return torch.from_numpy(a).bfloat16().view(torch.int16).numpy().view(np.uint16)


@pytest.mark.parametrize("n", [0, 1, 1023, 1024, 3001])
def test_float32_to_bf16_rounds_like_torch(tri, n):
    x = _values(n)
    np.testing.assert_array_equal(tri.cast(x, gk.bfloat16), _torch_bits(x))
    np.testing.assert_array_equal(tri.cast(x, gk.bfloat16), ref.cast(x, gk.bfloat16))


def test_nan_stays_nan(tri):
    x = np.array([0x7FFFFFFF, 0x7FC00000, 0xFFFFFFFF], np.uint32).view(np.float32)
    assert np.isnan(to_float32(np, tri.cast(x, gk.bfloat16))).all()


@pytest.mark.filterwarnings("ignore:overflow encountered")  # values beyond float16's range: inf
@pytest.mark.parametrize("src,dst", [(gk.bfloat16, gk.float32), (gk.bfloat16, gk.float16),
                                     (gk.float16, gk.bfloat16), (gk.float32, gk.float16),
                                     (gk.float16, gk.float32)])
def test_every_pair_matches_the_reference(tri, src, dst):
    x = ref.cast(_values(500, seed=1), src)
    got, want = tri.cast(x, dst), ref.cast(x, dst)
    assert got.dtype == want.dtype == dst
    a, b = to_float32(np, got), to_float32(np, want)
    assert_close(a, b, atol=0, rtol=0)


def test_layouts_are_kept_and_strided_inputs_read_right(tri):
    x = _values(2 * 3 * 5 * 7 - len(SPECIAL)).reshape(2, 3, 5, 7)
    cl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # channels-last
    y = tri.cast(cl, gk.bfloat16)
    assert y.strides == tuple(s // 2 for s in cl.strides)
    np.testing.assert_array_equal(y, _torch_bits(np.ascontiguousarray(cl)))
    sliced = x[:, 1:, ::2, 3:]
    np.testing.assert_array_equal(tri.cast(sliced, gk.bfloat16), _torch_bits(np.ascontiguousarray(sliced)))


def test_cast_array_takes_the_kernel_for_bf16_and_accepts_float64(tri):
    gk.set_backend("interpret")
    x = np.array([1.0, 2.0 + 2**-9, -3.5], np.float64)
    y = cast_array(x, gk.bfloat16)
    assert backend.last_dispatch["cast"] == "gpukernels.triton.cast"
    np.testing.assert_array_equal(y, _torch_bits(x.astype(np.float32)))
    assert cast_array(y, gk.float64).dtype == np.float64


def test_other_dtypes_are_refused(tri):
    with pytest.raises(TypeError, match="got float64"):
        tri.cast(np.zeros(3), gk.float32)
    with pytest.raises(TypeError, match="got int32"):
        tri.cast(np.zeros(3, np.float32), np.int32)
