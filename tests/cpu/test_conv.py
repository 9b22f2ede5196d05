"""NumPy reference conv2d (gpukernels.cpu.conv) against PyTorch CPU in float64.

Every case checks the forward output and all three gradients (same random upstream
gradient for both libraries) on each NumPy implementation path (nhwc, flat,
batch_inner, generic, pointwise, winograd, and the automatic choice; a path that cannot
serve a case falls back to generic), so layout-specific bugs cannot hide
behind the path the dispatcher happens to pick. The threaded/tiled driver is forced on for a batch of 9
with tiles of 2 so uneven chunks and tile tails are exercised.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from gpukernels.cpu import _conv_common, _conv_flat, _jit, _parallel, conv
from tests.helpers import assert_close

torch = pytest.importorskip("torch")

F = torch.nn.functional

RTOL64 = 1e-8
PATHS = (None, "flat", "batch_inner", "generic", "nhwc", "pointwise", "winograd", "winograd-numpy")


def use_path(knob, path):
    """Pin ``path``; ``"winograd-numpy"``: winograd with its NumPy transforms (numba's
    compiled ones, ``cpu/_jit``, off; "winograd" takes them where numba is installed)."""
    if path == "winograd-numpy":
        knob(conv_cpu_path="winograd", cpu_jit="off")
    else:
        knob(conv_cpu_path=path, cpu_jit=None)


def assert_rel_close(actual, expected, *, rtol, name=""):
    """The shared ``assert_close`` with a relative tolerance whose floor is a thousandth
    of the array's scale (entries that cancel to ~0 are judged against the data's
    magnitude). Both sides None (a gradient that was not asked for) also passes."""
    if actual is None and expected is None:
        return
    scale = float(np.abs(np.asarray(expected, dtype=np.float64)).max()) if np.size(expected) else 0.0
    assert_close(actual, expected, atol=rtol * 1e-3 * scale, rtol=rtol, name=name)


# ----------------------------------------------------------------------------- reference


def torch_conv(x, w, b, stride, padding, dilation, groups, activation, slope, gy, needs):
    """(y, grad_x, grad_w, grad_b) from PyTorch in float64; a grad is None if not needed."""
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    tb = None if b is None else torch.tensor(b, dtype=torch.float64, requires_grad=True)
    ty = F.conv2d(tx, tw, tb, stride, padding, dilation, groups)
    if activation == "relu":
        ty = F.relu(ty)
    elif activation == "leaky_relu":
        ty = F.leaky_relu(ty, slope)
    wrt = [t for t, need in zip((tx, tw, tb), needs) if need]
    grads = iter(torch.autograd.grad(ty, wrt, torch.tensor(gy, dtype=torch.float64)))
    out = [next(grads).numpy() if need else None for need in needs]
    return (ty.detach().numpy(), *out)


def make_inputs(rng, n, c, h, w, o, kh, kw, groups, bias, dtype=np.float64):
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((o, c // groups, kh, kw)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype) if bias else None
    return x, wt, b


def check_case(case, path, knob, rng_seed=0):
    (n, c, h, w, o, (kh, kw), stride, padding, dilation, groups, bias, activation, needs) = case
    slope = 0.2
    rng = np.random.default_rng(rng_seed)
    x, wt, b = make_inputs(rng, n, c, h, w, o, kh, kw, groups, bias)
    needs = (needs[0], needs[1], needs[2] and bias)
    oh, ow = conv.conv2d_output_size(h, w, (kh, kw), stride, padding, dilation)
    gy = rng.standard_normal((n, o, oh, ow))
    ref = torch_conv(x, wt, b, stride, padding, dilation, groups, activation, slope, gy, needs)
    use_path(knob, path)
    y = conv.conv2d_forward(x, wt, b, stride, padding, dilation, groups, activation, slope)
    assert y.dtype == np.float64 and y.shape == (n, o, oh, ow)
    grads = conv.conv2d_backward(gy, x, wt, y, stride, padding, dilation, groups, activation, slope, needs)
    tag = f"[path={path}]"
    assert_rel_close(y, ref[0], rtol=RTOL64, name=f"y {tag}")
    for name, got, want, need in zip(("grad_x", "grad_w", "grad_b"), grads, ref[1:], needs):
        if not need:
            assert got is None, f"{name} {tag} should be None when not needed"
        else:
            assert got is not None and got.dtype == np.float64, f"{name} {tag}"
            assert_rel_close(got, want, rtol=RTOL64, name=f"{name} {tag}")


# ----------------------------------------------------------------------------- cases
# (N, C, H, W, O, (KH, KW), stride, padding, dilation, groups, bias, activation, needs)

ALL = (True, True, True)
HAND = [
    # plain 3x3 "same" conv, every activation
    (3, 3, 8, 8, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1, True, None, ALL),
    (3, 3, 8, 8, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1, True, "relu", ALL),
    (3, 3, 8, 8, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1, True, "leaky_relu", ALL),
    (1, 1, 5, 5, 1, (3, 3), (1, 1), (0, 0), (1, 1), 1, False, None, ALL),
    # H != W, no padding, no bias
    (3, 3, 13, 8, 5, (3, 3), (1, 1), (0, 0), (1, 1), 1, False, None, ALL),
    (1, 17, 5, 13, 6, (3, 3), (1, 1), (2, 2), (1, 1), 1, True, "relu", ALL),
    # kernel 1 (with padding: output larger than input, negative transposed padding)
    (3, 3, 5, 8, 4, (1, 1), (1, 1), (0, 0), (1, 1), 1, True, None, ALL),
    (3, 16, 9, 8, 8, (1, 1), (2, 2), (0, 0), (1, 1), 1, True, "relu", ALL),  # pointwise, strided
    (2, 8, 7, 9, 16, (1, 1), (3, 2), (0, 0), (1, 1), 1, False, None, (False, True, False)),
    (3, 3, 5, 8, 4, (1, 1), (1, 1), (1, 1), (1, 1), 1, True, "leaky_relu", ALL),
    (1, 17, 8, 5, 3, (1, 1), (2, 2), (2, 2), (1, 1), 1, True, None, ALL),
    # kernel 5
    (3, 3, 13, 13, 4, (5, 5), (1, 1), (2, 2), (1, 1), 1, True, "relu", ALL),
    (1, 3, 8, 13, 2, (5, 5), (2, 2), (1, 1), (1, 1), 1, False, None, ALL),
    (3, 1, 13, 10, 3, (5, 5), (1, 1), (0, 0), (2, 2), 1, True, None, ALL),
    # non-square 3x1 / 1x3 kernels, per-axis stride/padding/dilation
    (3, 3, 8, 8, 4, (3, 1), (1, 1), (1, 0), (1, 1), 1, True, None, ALL),
    (1, 17, 13, 5, 4, (3, 1), (2, 1), (0, 2), (2, 1), 1, True, "relu", ALL),
    (3, 3, 5, 13, 4, (1, 3), (1, 2), (2, 1), (1, 2), 1, False, "leaky_relu", ALL),
    # stride 2
    (3, 3, 8, 8, 4, (3, 3), (2, 2), (1, 1), (1, 1), 1, True, None, ALL),
    (3, 17, 13, 13, 5, (3, 3), (2, 2), (0, 0), (1, 1), 1, True, "relu", ALL),
    (1, 3, 13, 8, 4, (3, 3), (2, 2), (2, 2), (2, 2), 1, True, None, ALL),
    # stride 3 (nhwc's sub-pixel phases of grad_x: with k2, a phase no tap reaches; with
    # dilation 2 and stride 3 in h, taps 3 apart; stride (3, 2))
    (2, 5, 11, 10, 6, (2, 2), (3, 3), (1, 0), (1, 1), 1, True, "relu", ALL),
    (2, 4, 9, 12, 3, (3, 3), (3, 2), (1, 2), (2, 1), 1, False, None, ALL),
    # dilation 2
    (3, 3, 13, 13, 4, (3, 3), (1, 1), (2, 2), (2, 2), 1, True, None, ALL),
    (3, 3, 8, 8, 4, (3, 3), (1, 1), (1, 1), (2, 2), 1, False, "relu", ALL),
    # groups 2, depthwise (groups == C), depthwise with channel multiplier
    (3, 4, 8, 8, 6, (3, 3), (1, 1), (1, 1), (1, 1), 2, True, None, ALL),
    (1, 6, 13, 5, 4, (3, 3), (2, 2), (0, 0), (1, 1), 2, True, "leaky_relu", ALL),
    (3, 3, 8, 8, 3, (3, 3), (1, 1), (1, 1), (1, 1), 3, True, None, ALL),
    (3, 17, 13, 8, 17, (3, 3), (2, 2), (1, 1), (1, 1), 17, True, "relu", ALL),
    (1, 3, 8, 8, 6, (5, 5), (1, 1), (2, 2), (2, 2), 3, False, None, ALL),
    (3, 17, 5, 5, 34, (3, 1), (1, 1), (1, 0), (1, 1), 17, True, None, ALL),
    # many channels per group: the one-GEMM-per-tap ("shift") strategy of the flat path
    (3, 32, 8, 8, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1, True, "relu", ALL),
    (3, 64, 9, 7, 64, (3, 3), (1, 1), (1, 1), (1, 1), 2, True, "leaky_relu", ALL),
    (3, 33, 9, 7, 40, (3, 3), (1, 1), (0, 2), (2, 1), 1, True, None, ALL),
    (1, 32, 6, 7, 5, (1, 1), (1, 1), (1, 1), (1, 1), 1, True, None, ALL),
    # the digits CNN layers (O > 4*C: batch_inner's grad_x takes col2im at stride 1)
    (3, 1, 8, 8, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1, True, "relu", ALL),
    (3, 16, 4, 4, 32, (3, 3), (1, 1), (1, 1), (1, 1), 1, True, "relu", ALL),
    # needs masks (first layer: no grad_x; frozen weights; bias only)
    (3, 3, 8, 8, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1, True, "relu", (False, True, True)),
    (3, 3, 8, 8, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1, True, "relu", (True, False, False)),
    (3, 17, 8, 5, 4, (3, 3), (2, 2), (1, 1), (1, 1), 1, True, "leaky_relu", (False, False, True)),
    (3, 32, 8, 8, 32, (3, 3), (1, 1), (1, 1), (1, 1), 1, True, None, (True, False, True)),
    (3, 32, 8, 8, 32, (3, 3), (1, 1), (2, 2), (1, 1), 1, True, "relu", (False, True, False)),
    (1, 3, 13, 13, 4, (5, 5), (1, 1), (0, 0), (1, 1), 1, False, None, (True, False, False)),
    (3, 5, 7, 6, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1, True, "relu", (False, False, True)),
    # outputs of >= 256 pixels: generic's per-image grad_w (ungrouped), depthwise beside it
    (2, 3, 16, 17, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1, True, "relu", ALL),
    (2, 4, 16, 16, 4, (3, 3), (1, 1), (1, 1), (1, 1), 4, True, None, ALL),
]


def _sample(count, seed):
    """Random valid cases over the same axes (N in {1,3}, C in {1,3,17}, H, W in
    {5,8,13}, kernels 1/3/5/3x1, stride 1/2, padding 0/1/2, dilation 1/2, groups 1/2/C)."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        n = int(rng.choice([1, 3]))
        c = int(rng.choice([1, 3, 17, 4]))
        h, w = (int(v) for v in rng.choice([5, 8, 13], size=2))
        kh, kw = [(1, 1), (3, 3), (5, 5), (3, 1), (1, 3)][rng.integers(5)]
        stride = tuple(int(v) for v in rng.choice([1, 2], size=2))
        padding = tuple(int(v) for v in rng.choice([0, 1, 2], size=2))
        dilation = tuple(int(v) for v in rng.choice([1, 2], size=2))
        groups = int(rng.choice([g for g in (1, 2, c) if c % g == 0]))
        o = groups * int(rng.choice([1, 2, 3]))
        oh, ow = conv.conv2d_output_size(h, w, (kh, kw), stride, padding, dilation)
        if oh < 1 or ow < 1:
            continue
        bias = bool(rng.integers(2))
        activation = [None, "relu", "leaky_relu"][rng.integers(3)]
        needs = (bool(rng.integers(4)), bool(rng.integers(4)), True)
        out.append((n, c, h, w, o, (kh, kw), stride, padding, dilation, groups, bias, activation, needs))
    return out


CASES = HAND + _sample(40, seed=1234)


def _case_id(case):
    n, c, h, w, o, (kh, kw), s, p, d, g, bias, act, needs = case
    mask = "".join("1" if v else "0" for v in needs)
    return (
        f"N{n}C{c}x{h}x{w}-O{o}k{kh}x{kw}-s{s[0]}{s[1]}p{p[0]}{p[1]}d{d[0]}{d[1]}g{g}"
        f"{'-b' if bias else ''}-{act or 'id'}-n{mask}"
    )


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_conv_matches_torch_float64(case, knob):
    for path in PATHS:
        check_case(case, path, knob)


@pytest.mark.parametrize("stacked_max", [0, 1 << 40], ids=["loop", "stacked"])
@pytest.mark.parametrize("case", [c for c in HAND if c[6] == (1, 1) and c[5][0] > 1][:8], ids=_case_id)
def test_flat_row_taps_stacked_or_looped(case, stacked_max, knob, monkeypatch):
    """``_FrameConv``'s two forms of the KH row-tap products (one stacked matmul + sum,
    or a GEMM-and-add loop), each on the flat path's forward and grad_x."""
    monkeypatch.setattr(_conv_flat, "STACKED_MAX_BYTES", stacked_max)
    check_case(case, "flat", knob)


# ----------------------------------------------------------------------------- threads


@pytest.fixture
def threaded(knob):
    """Force the multi-threaded driver with small tiles (so chunks have tile tails)."""
    knob(cpu_threads="forced")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "stride, activation, bias",
    [((1, 1), "relu", True), ((2, 2), "leaky_relu", False), ((1, 1), None, False)],
    ids=["s1-relu-bias", "s2-leaky", "s1-plain"],
)
def test_threaded_tiles_match_torch(path, stride, activation, bias, threaded, monkeypatch, knob):
    """N = 9 on two threads: chunks of 5 and 4 images, tiles of 2 (tails of 1); the
    tail tiles use the first image slots of buffers sized for two."""
    n, c, h, w, o = 9, 16, 32, 32, 16
    rng = np.random.default_rng(7)
    x, wt, b = make_inputs(rng, n, c, h, w, o, 3, 3, 1, bias)
    oh, ow = conv.conv2d_output_size(h, w, 3, stride, 1, 1)
    gy = rng.standard_normal((n, o, oh, ow))
    needs = (True, True, bias)
    ref = torch_conv(x, wt, b, stride, (1, 1), (1, 1), 1, activation, 0.1, gy, needs)
    # tiles of two images on every path: chunks of 5 and 4 give tiles 2, 2, 1 and 2, 2
    tiles = _conv_common.tiles
    monkeypatch.setattr(_conv_common, "tiles", lambda n0, n1, per_image, budget, min_images=1: tiles(n0, n1, 1, 2))
    use_path(knob, path)
    y = conv.conv2d_forward(x, wt, b, stride, (1, 1), (1, 1), 1, activation, 0.1)
    grads = conv.conv2d_backward(gy, x, wt, y, stride, (1, 1), (1, 1), 1, activation, 0.1, needs)
    assert_rel_close(y, ref[0], rtol=RTOL64, name="y")
    for name, got, want in zip(("grad_x", "grad_w", "grad_b"), grads, ref[1:]):
        assert_rel_close(got, want, rtol=RTOL64, name=name)


@pytest.mark.parametrize(
    "shape, stride, groups, expected",
    [
        # ResNet-20 / CIFAR-10 layers, (N, C, H, O, K)
        ((128, 3, 32, 16, 3), 1, 1, "generic"),
        ((128, 16, 32, 16, 3), 1, 1, "flat"),
        ((128, 16, 32, 32, 3), 2, 1, "nhwc"),
        ((128, 32, 16, 32, 3), 1, 1, "nhwc"),
        ((128, 64, 8, 64, 3), 1, 1, "nhwc"),
        ((128, 16, 32, 32, 1), 2, 1, "pointwise"),
        ((128, 32, 16, 64, 1), 2, 1, "pointwise"),
        ((64, 64, 32, 32, 3), 1, 1, "flat"),
        # digits CNN; grouped and depthwise small layers
        ((64, 1, 8, 16, 3), 1, 1, "generic"),
        ((64, 16, 4, 32, 3), 1, 1, "nhwc"),
        ((128, 64, 8, 64, 3), 1, 16, "batch_inner"),
        ((128, 64, 8, 64, 3), 1, 64, "generic"),
        # wide stride-1 3x3 layers (the conv benchmark's 128x16x16, fast CIFAR's)
        ((64, 128, 16, 128, 3), 1, 1, "winograd"),
        ((32, 256, 8, 256, 3), 1, 1, "winograd"),
        ((32, 512, 4, 512, 3), 1, 1, "winograd"),
        ((32, 64, 16, 256, 3), 1, 1, "nhwc"),
        ((32, 256, 16, 256, 3), 2, 1, "nhwc"),
    ],
)
def test_path_choice(shape, stride, groups, expected, knob):
    """The dispatcher's picks for the benchmarked layers (the thresholds were measured),
    with NumPy's winograd transforms (numba's: ``test_path_choice_with_compiled_transforms``)."""
    knob(cpu_jit="off")
    n, c, h, o, k = shape
    g = _conv_common.Geom((n, c, h, h), (o, c // groups, k, k), stride, k // 2, 1, groups)
    assert conv._path(g, np.dtype(np.float32)) == expected


@pytest.mark.parametrize(
    "shape, stride, forward, backward",
    [
        ((128, 32, 16, 32, 3), 1, "nhwc", "flat"),  # ResNet-20's 16x16 stage
        ((32, 32, 16, 32, 3), 1, "nhwc", "flat"),
        ((128, 32, 12, 32, 3), 1, "nhwc", "nhwc"),  # narrower than FLAT_BACKWARD_MIN_OW
        ((64, 64, 16, 64, 3), 1, "nhwc", "nhwc"),  # FLAT_BACKWARD_MAX_CHANNELS inputs
        ((128, 16, 32, 32, 3), 2, "nhwc", "nhwc"),  # strided: flat cannot
        ((128, 16, 32, 16, 3), 1, "flat", "flat"),
    ],
)
def test_path_choice_backward(shape, stride, forward, backward, knob):
    """The backward may take another path than the forward (measured per phase)."""
    knob(cpu_jit="off")
    n, c, h, o, k = shape
    g = _conv_common.Geom((n, c, h, h), (o, c, k, k), stride, k // 2, 1, 1)
    assert (conv._path(g, np.dtype(np.float32)), conv._path(g, np.dtype(np.float32), backward=True)) == (
        forward, backward)


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((128, 16, 32, 16, 3), "flat"),  # 16 channels: the transforms still cost more
        ((128, 32, 16, 32, 3), "winograd"),
        ((128, 64, 8, 64, 3), "winograd"),
        ((64, 64, 32, 64, 3), "winograd"),
        ((32, 32, 32, 64, 3), "winograd"),
        ((32, 512, 2, 512, 3), "nhwc"),  # narrower than WINOGRAD_MIN_OW
    ],
)
def test_path_choice_with_compiled_transforms(shape, expected):
    """Where numba compiles winograd's transforms it pays from 32 channels on."""
    if not _jit.enabled():
        pytest.skip(f"compiled kernels off: {_jit.why_not()}")
    n, c, h, o, k = shape
    g = _conv_common.Geom((n, c, h, h), (o, c, k, k), 1, k // 2, 1, 1)
    assert conv._path(g, np.dtype(np.float32)) == expected


def test_tiles_cover_batch_with_tails():
    b, tiles = _conv_common.tiles(0, 5, 100, 250)
    assert b == 2 and tiles == [(0, 2), (2, 4), (4, 5)]
    assert _conv_common.tiles(0, 5, 100, 50, min_images=3) == (3, [(0, 3), (3, 5)])  # budget overruled
    assert _conv_common.tiles(4, 6, 100, 50, min_images=8) == (2, [(4, 6)])
    assert _parallel.split(9, 2) == [(0, 4), (4, 9)] or _parallel.split(9, 2) == [(0, 5), (5, 9)]
    assert _parallel.split(1, 2) == [(0, 1)]


def test_serial_fallback_without_threadpoolctl(threaded, monkeypatch):
    """No threadpoolctl: the tiles run serially and the result is the same."""
    monkeypatch.setattr(_parallel.blas_single, "libs", [])
    with _parallel.blas_single:
        assert not _parallel.blas_single.held
    monkeypatch.setattr(_parallel, "executor", lambda: pytest.fail("a thread was used without threadpoolctl"))
    rng = np.random.default_rng(3)
    x, wt, b = make_inputs(rng, 4, 8, 16, 16, 8, 3, 3, 1, True)
    y = conv.conv2d_forward(x, wt, b, (1, 1), (1, 1), (1, 1), 1)
    ref = F.conv2d(torch.tensor(x), torch.tensor(wt), torch.tensor(b), 1, 1).numpy()
    assert_rel_close(y, ref, rtol=RTOL64, name="y")


def test_concurrent_callers(threaded):
    """Two user threads calling at once: one takes the parallel driver, the other runs
    serially; both results are right and BLAS threading is restored afterwards."""
    rng = np.random.default_rng(5)
    inputs = [make_inputs(rng, 6, 16, 16, 16, 16, 3, 3, 1, True) for _ in range(2)]
    refs = [F.conv2d(torch.tensor(x), torch.tensor(w), torch.tensor(b), 1, 1).numpy() for x, w, b in inputs]
    results = [None, None]

    def run(i):
        x, w, b = inputs[i]
        for _ in range(5):
            results[i] = conv.conv2d_forward(x, w, b, (1, 1), (1, 1), (1, 1), 1, "relu")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, ref in zip(results, refs):
        assert_rel_close(got, np.maximum(ref, 0), rtol=RTOL64, name="y")
    assert not _parallel.lock.locked()


# ----------------------------------------------------------------------------- details


@pytest.mark.parametrize("path", [None, "winograd"])
def test_float32_stays_float32_and_is_accurate(path, knob):
    """float32 in, float32 out, within 2e-3 of float64 torch (winograd's transforms
    round a little more than a direct sum: its own run)."""
    use_path(knob, path)
    rng = np.random.default_rng(11)
    x, w, b = make_inputs(rng, 4, 32, 16, 16, 32, 3, 3, 1, True, dtype=np.float32)
    gy = rng.standard_normal((4, 32, 16, 16)).astype(np.float32)
    y = conv.conv2d_forward(x, w, b, (1, 1), (1, 1), (1, 1), 1, "relu")
    gx, gw, gb = conv.conv2d_backward(gy, x, w, y, (1, 1), (1, 1), (1, 1), 1, "relu")
    assert {a.dtype for a in (y, gx, gw, gb)} == {np.dtype(np.float32)}
    ref = torch_conv(
        x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), 1, 1, 1, 1, "relu", 0.0, gy, ALL
    )
    for name, got, want in zip(("y", "grad_x", "grad_w", "grad_b"), (y, gx, gw, gb), ref):
        assert_rel_close(got, want, rtol=2e-3, name=name)


def test_non_contiguous_inputs(monkeypatch, knob):
    rng = np.random.default_rng(12)
    xt = rng.standard_normal((8, 8, 3, 2)).transpose(3, 2, 0, 1)  # (2, 3, 8, 8), not contiguous
    w = rng.standard_normal((3, 3, 5, 4)).transpose(0, 1, 3, 2)[:, :, :3, :3]  # (3, 3, 3, 3) view
    b = rng.standard_normal(6)[::2]
    gy = rng.standard_normal((8, 8, 2, 3)).transpose(2, 3, 0, 1)
    ref = torch_conv(
        np.ascontiguousarray(xt), np.ascontiguousarray(w), np.ascontiguousarray(b), 1, 1, 1, 1, None, 0.0,
        np.ascontiguousarray(gy), ALL,
    )
    for path in PATHS:
        use_path(knob, path)
        y = conv.conv2d_forward(xt, w, b, (1, 1), (1, 1), (1, 1), 1)
        grads = conv.conv2d_backward(gy, xt, w, y, (1, 1), (1, 1), (1, 1), 1)
        for name, got, want in zip(("y", "grad_x", "grad_w", "grad_b"), (y, *grads), ref):
            assert_rel_close(got, want, rtol=RTOL64, name=f"{name} [path={path}]")


@pytest.mark.parametrize("slope", [0.0, 1.0, 2.5])
def test_leaky_relu_slopes(slope):
    rng = np.random.default_rng(13)
    x, w, b = make_inputs(rng, 2, 3, 8, 8, 4, 3, 3, 1, True)
    gy = rng.standard_normal((2, 4, 8, 8))
    ref = torch_conv(x, w, b, 1, 1, 1, 1, "leaky_relu", slope, gy, ALL)
    y = conv.conv2d_forward(x, w, b, (1, 1), (1, 1), (1, 1), 1, "leaky_relu", slope)
    grads = conv.conv2d_backward(gy, x, w, y, (1, 1), (1, 1), (1, 1), 1, "leaky_relu", slope)
    for name, got, want in zip(("y", "grad_x", "grad_w", "grad_b"), (y, *grads), ref):
        assert_rel_close(got, want, rtol=RTOL64, name=name)


def test_no_needs_returns_nones():
    x = np.ones((1, 1, 4, 4))
    w = np.ones((1, 1, 3, 3))
    y = conv.conv2d_forward(x, w, None, (1, 1), (1, 1), (1, 1), 1)
    assert conv.conv2d_backward(np.ones_like(y), x, w, y, (1, 1), (1, 1), (1, 1), 1, needs=(False,) * 3) == (
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    "h, w, kernel, stride, padding, dilation",
    [(8, 8, 3, 1, 1, 1), (13, 5, (5, 3), (2, 1), (2, 0), (1, 2)), (5, 5, 1, 2, 0, 1), (32, 32, 3, 2, 1, 1)],
)
def test_output_size_matches_torch(h, w, kernel, stride, padding, dilation):
    k = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    y = F.conv2d(torch.zeros(1, 1, h, w), torch.zeros(1, 1, *k), None, stride, padding, dilation)
    assert conv.conv2d_output_size(h, w, kernel, stride, padding, dilation) == tuple(y.shape[2:])


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_threaded_path_works_in_forked_child(threaded):
    """A forked child (e.g. a DataLoader worker) must not reuse the parent's dead pool."""
    import os

    rng = np.random.default_rng(21)
    x, w, b = make_inputs(rng, 4, 8, 16, 16, 8, 3, 3, 1, True)
    expected = conv.conv2d_forward(x, w, b, (1, 1), (1, 1), (1, 1), 1)  # creates the pool
    pid = os.fork()
    if pid == 0:  # child: exit 0 only when the threaded call finishes with the right answer
        code = 1
        try:
            got = conv.conv2d_forward(x, w, b, (1, 1), (1, 1), (1, 1), 1)
            code = 0 if np.allclose(got, expected, rtol=1e-12, atol=1e-12) else 2
        finally:
            os._exit(code)
    import signal
    import time

    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the threaded conv hung in a forked child")
        time.sleep(0.01)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status}"


# ----------------------------------------------------------------------------- scratch


@pytest.mark.parametrize("path", ["nhwc", "generic"])
def test_reused_scratch_gives_each_call_its_own_result(path, knob):
    """Calls of the same sizes reuse one thread's tile buffers (``_conv_common.scratch``):
    each call's result is its own inputs' (nothing of the last call's data stays in the
    columns, the padded frame's border stays zero), forward and backward, for the
    digits CNN's two layer shapes."""
    use_path(knob, path)
    rng = np.random.default_rng(21)
    for c, o, h in ((1, 16, 8), (16, 32, 4)):
        for _ in range(3):
            x, w, b = make_inputs(rng, 5, c, h, h, o, 3, 3, 1, True)
            x *= rng.uniform(0.1, 10)  # a different scale each call: stale data would show
            gy = rng.standard_normal((5, o, h, h))
            y = conv.conv2d_forward(x, w, b, (1, 1), (1, 1), (1, 1), 1, "relu")
            got = (y, *conv.conv2d_backward(gy, x, w, y, (1, 1), (1, 1), (1, 1), 1, "relu"))
            want = torch_conv(x, w, b, 1, 1, 1, 1, "relu", 0.0, gy, ALL)
            for name, a, e in zip(("y", "grad_x", "grad_w", "grad_b"), got, want):
                assert_rel_close(a, e, rtol=RTOL64, name=f"{path} {c}->{o} {name}")


def test_scratch_is_per_thread_and_bounded(monkeypatch):
    """``scratch`` hands a thread back what it made for the same key, never another
    thread's; objects over SCRATCH_MAX_BYTES are made afresh each call; a thread keeps at
    most SCRATCH_THREAD_BYTES, dropping the least recently used."""
    monkeypatch.setattr(_conv_common, "_scratch", threading.local())
    monkeypatch.setattr(_conv_common, "SCRATCH_MAX_BYTES", 100)
    monkeypatch.setattr(_conv_common, "SCRATCH_THREAD_BYTES", 250)
    made = []

    def make():
        made.append(object())
        return made[-1]

    a = _conv_common.scratch("a", 100, make)
    assert _conv_common.scratch("a", 100, make) is a and len(made) == 1
    big = _conv_common.scratch("big", 101, make)
    assert _conv_common.scratch("big", 101, make) is not big  # too large to keep
    other = []
    t = threading.Thread(target=lambda: other.append(_conv_common.scratch("a", 100, make)))
    t.start()
    t.join()
    assert other[0] is not a  # the other thread made its own
    b = _conv_common.scratch("b", 100, make)
    _conv_common.scratch("a", 100, make)  # "a" used again: "b" is now the oldest
    _conv_common.scratch("c", 100, make)  # 300 > 250 bytes: "b" goes
    assert _conv_common.scratch("a", 100, make) is a
    assert _conv_common.scratch("b", 100, make) is not b
