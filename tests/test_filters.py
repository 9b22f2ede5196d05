"""gpukernels.filters: textbook responses, a hand-written NumPy oracle, ranks, errors,
gradients, and the demo CLI."""

from __future__ import annotations

import numpy as np
import pytest

import gpukernels as gk
from gpukernels import filters
from tests.helpers import TOL_IDS, TOLS, assert_close, grad_check

H, W, K = 9, 10, 5  # step images: the edge sits between columns (rows) K-1 and K
INTERIOR = (slice(1, -1), slice(1, -1))  # pixels whose 3x3 window misses the zero padding


def correlate(img, kernel, padding=1):
    """Oracle: direct sliding-window cross-correlation of the last two axes, zero padding."""
    img = np.asarray(img, dtype=np.float64)
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    padded = np.pad(img, [(0, 0)] * (img.ndim - 2) + [(ph, ph), (pw, pw)])
    oh, ow = padded.shape[-2] - 2, padded.shape[-1] - 2
    out = np.zeros(img.shape[:-2] + (oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[..., i, j] = (padded[..., i : i + 3, j : j + 3] * kernel).sum(axis=(-2, -1))
    return out


def vertical_step(dtype=np.float64):
    img = np.zeros((H, W), dtype)
    img[:, K:] = 1.0
    return img


def impulse(dtype=np.float64):
    img = np.zeros((7, 7), dtype)
    img[3, 3] = 1.0
    return img


ALL_FILTERS = {
    "sobel_x": filters.sobel_x,
    "sobel_y": filters.sobel_y,
    "gradient_magnitude": filters.gradient_magnitude,
    "laplacian4": lambda x, **kw: filters.laplacian(x, neighbours=4, **kw),
    "laplacian8": lambda x, **kw: filters.laplacian(x, neighbours=8, **kw),
}


# ----------------------------------------------------------------------------- constants


def test_constants_are_readonly_float32_textbook_kernels():
    assert_close(filters.SOBEL_X, [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], atol=0, rtol=0)
    assert_close(filters.SOBEL_Y, filters.SOBEL_X.T, atol=0, rtol=0)
    assert_close(filters.LAPLACIAN_4, [[0, 1, 0], [1, -4, 1], [0, 1, 0]], atol=0, rtol=0)
    assert_close(filters.LAPLACIAN_8, [[1, 1, 1], [1, -8, 1], [1, 1, 1]], atol=0, rtol=0)
    for k in (filters.SOBEL_X, filters.SOBEL_Y, filters.LAPLACIAN_4, filters.LAPLACIAN_8):
        assert k.dtype == np.float32
        with pytest.raises(ValueError):
            k[0, 0] = 5.0


# ----------------------------------------------------------------------------- textbook responses


def test_vertical_step_edge():
    img = vertical_step()
    gx = filters.sobel_x(img).numpy()
    gy = filters.sobel_y(img).numpy()
    mag = filters.gradient_magnitude(img).numpy()
    expected = np.zeros((H, W))
    # dark -> bright left to right: positive, on both columns beside the edge
    expected[:, K - 1 : K + 1] = 4.0
    assert_close(gx[INTERIOR], expected[INTERIOR], atol=0, rtol=0, name="Gx")
    assert_close(gy[INTERIOR], np.zeros((H - 2, W - 2)), atol=0, rtol=0, name="Gy")
    assert_close(mag[INTERIOR], np.abs(gx)[INTERIOR], atol=1e-12, rtol=0, name="|G|")


def test_horizontal_step_edge_is_the_transpose():
    img = np.ascontiguousarray(vertical_step().T)  # rows < K dark, rows >= K bright
    gx = filters.sobel_x(img).numpy()
    gy = filters.sobel_y(img).numpy()
    expected = np.zeros((W, H))
    expected[K - 1 : K + 1, :] = 4.0  # dark -> bright top to bottom: positive
    assert_close(gy[INTERIOR], expected[INTERIOR], atol=0, rtol=0, name="Gy")
    assert_close(gx[INTERIOR], np.zeros((W - 2, H - 2)), atol=0, rtol=0, name="Gx")
    assert_close(filters.gradient_magnitude(img).numpy()[INTERIOR], np.abs(gy)[INTERIOR], atol=1e-12, rtol=0)


def test_bright_to_dark_edge_is_negative():
    gx = filters.sobel_x(1.0 - vertical_step()).numpy()
    assert gx[INTERIOR].min() == -4.0 and gx[INTERIOR].max() == 0.0


@pytest.mark.parametrize("neighbours,kernel", [(4, filters.LAPLACIAN_4), (8, filters.LAPLACIAN_8)])
def test_laplacian_of_an_impulse_is_the_kernel(neighbours, kernel):
    out = filters.laplacian(impulse(), neighbours=neighbours).numpy()
    expected = np.zeros((7, 7))
    expected[2:5, 2:5] = kernel  # symmetric, so the 180-degree rotation is the kernel itself
    assert_close(out, expected, atol=0, rtol=0)
    assert out[3, 3] == -neighbours


@pytest.mark.parametrize("fn,kernel", [(filters.sobel_x, filters.SOBEL_X),
                                       (filters.sobel_y, filters.SOBEL_Y)])
def test_sobel_of_an_impulse_is_the_kernel_rotated_180_degrees(fn, kernel):
    # cross-correlation: out[p + di, q + dj] = K[1 - di, 1 - dj]; for Sobel the rotation is the negation
    out = fn(impulse()).numpy()
    expected = np.zeros((7, 7))
    expected[2:5, 2:5] = kernel[::-1, ::-1]
    assert_close(out, expected, atol=0, rtol=0)
    assert_close(out[2:5, 2:5], -kernel, atol=0, rtol=0)
    assert out[3, 2] == (2.0 if fn is filters.sobel_x else 0.0)  # left of a bright pixel: rising


@pytest.mark.parametrize("name", list(ALL_FILTERS))
def test_constant_image_gives_zero_in_the_interior(name):
    out = ALL_FILTERS[name](np.full((2, 8, 7), 3.5)).numpy()
    assert_close(out[:, 1:-1, 1:-1], np.zeros((2, 6, 5)), atol=1e-12, rtol=0)


def test_linear_ramp():
    a = 0.75
    img = a * np.tile(np.arange(W, dtype=np.float64), (H, 1))  # I = a * x
    gx, gy = filters.sobel_x(img).numpy(), filters.sobel_y(img).numpy()
    assert_close(gx[INTERIOR], np.full((H - 2, W - 2), 8 * a), atol=1e-12, rtol=0, name="Gx")
    assert_close(gy[INTERIOR], np.zeros((H - 2, W - 2)), atol=1e-12, rtol=0, name="Gy")
    for n in (4, 8):
        lap = filters.laplacian(img, neighbours=n).numpy()
        assert_close(lap[INTERIOR], np.zeros((H - 2, W - 2)), atol=1e-12, rtol=0, name=f"laplacian{n}")


# ----------------------------------------------------------------------------- against the oracle


@pytest.mark.parametrize("dtype,atol,rtol", TOLS, ids=TOL_IDS)
@pytest.mark.parametrize("padding", [1, 0])
def test_matches_sliding_window_oracle(dtype, atol, rtol, padding):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 13, 11)).astype(dtype)
    gx = correlate(x, filters.SOBEL_X, padding)
    gy = correlate(x, filters.SOBEL_Y, padding)
    expected = {
        "sobel_x": gx,
        "sobel_y": gy,
        "gradient_magnitude": np.sqrt(gx**2 + gy**2),
        "laplacian4": correlate(x, filters.LAPLACIAN_4, padding),
        "laplacian8": correlate(x, filters.LAPLACIAN_8, padding),
    }
    for name, fn in ALL_FILTERS.items():
        for images in (x, gk.tensor(x)):  # NumPy arrays and Tensors alike
            out = fn(images, padding=padding)
            assert isinstance(out, gk.Tensor)
            assert out.dtype == dtype, f"{name}: dtype {out.dtype}"
            assert_close(out, expected[name], atol=atol * 10, rtol=rtol, name=name)


def test_gradient_magnitude_eps():
    x = np.random.default_rng(2).standard_normal((1, 1, 6, 7))
    gx, gy = correlate(x, filters.SOBEL_X), correlate(x, filters.SOBEL_Y)
    out = filters.gradient_magnitude(x, eps=1e-3)
    assert_close(out, np.sqrt(gx**2 + gy**2 + 1e-3), atol=1e-12, rtol=1e-12)
    flat = filters.gradient_magnitude(np.ones((5, 5)), eps=0.25).numpy()
    assert flat[2, 2] == pytest.approx(0.5)  # flat patches read sqrt(eps)


@pytest.mark.parametrize("shape", [(13, 11), (4, 13, 11), (2, 3, 13, 11)])
@pytest.mark.parametrize("padding", [1, 0, (0, 2)])
def test_input_ranks_are_preserved(shape, padding):
    x = np.random.default_rng(3).standard_normal(shape)
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    out_shape = shape[:-2] + (shape[-2] + 2 * ph - 2, shape[-1] + 2 * pw - 2)
    for name, fn in ALL_FILTERS.items():
        assert fn(x, padding=padding).shape == out_shape, name
    # the oracle slides over the last two axes of any rank, so values check the rank handling too
    assert_close(filters.laplacian(x, neighbours=8, padding=padding),
                 correlate(x, filters.LAPLACIAN_8, padding), atol=1e-12, rtol=1e-12)


def test_float32_tensor_stays_float32_and_on_the_graph():
    x = gk.tensor(np.random.default_rng(4).random((1, 2, 5, 6)).astype(np.float32), requires_grad=True)
    for fn in ALL_FILTERS.values():
        out = fn(x)
        assert out.dtype == np.float32 and out.requires_grad


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("bad", [5, 0, 3, 4.0, True, "4", None])
def test_laplacian_neighbours_must_be_4_or_8(bad):
    with pytest.raises(ValueError, match=rf"neighbours must be 4 or 8, got {bad!r}"):
        filters.laplacian(np.zeros((5, 5)), neighbours=bad)


@pytest.mark.parametrize("name", list(ALL_FILTERS))
def test_argument_errors_name_what_was_received(name):
    fn = ALL_FILTERS[name]
    with pytest.raises(ValueError, match=r"got shape \(5,\)"):
        fn(np.zeros(5))
    with pytest.raises(ValueError, match=r"got shape \(1, 1, 1, 4, 4\)"):
        fn(np.zeros((1, 1, 1, 4, 4)))
    with pytest.raises(TypeError, match="dtype int64"):
        fn(np.zeros((4, 4), dtype=np.int64))
    with pytest.raises(TypeError, match="dtype int64"):
        fn(gk.tensor(np.zeros((4, 4), dtype=np.int64)))
    with pytest.raises(TypeError, match="got list"):
        fn([[0.0] * 4] * 4)
    with pytest.raises(ValueError, match=r"padding must be >= 0, got -1"):
        fn(np.zeros((4, 4)), padding=-1)
    with pytest.raises(TypeError, match=r"padding must be an int or a pair of ints, got 1.5"):
        fn(np.zeros((4, 4)), padding=1.5)
    with pytest.raises(ValueError, match=r"shape \(2, 5\) with padding=0 are smaller than the 3x3 kernel"):
        fn(np.zeros((2, 5)), padding=0)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "0", True])
def test_gradient_magnitude_eps_validated(bad):
    with pytest.raises(ValueError, match="eps must be a finite number >= 0, got"):
        filters.gradient_magnitude(np.zeros((4, 4)), eps=bad)


# ----------------------------------------------------------------------------- gradients


def test_sobel_x_backward_is_the_transposed_correlation():
    # d/dI sum(w * Gx) = w correlated with the kernel rotated 180 degrees (the adjoint)
    rng = np.random.default_rng(5)
    x = gk.tensor(rng.standard_normal((2, 3, 7, 6)), requires_grad=True)
    w = rng.standard_normal((2, 3, 7, 6))
    (filters.sobel_x(x) * gk.tensor(w)).sum().backward()
    assert_close(x.grad, correlate(w, filters.SOBEL_X[::-1, ::-1]), atol=1e-12, rtol=1e-12)


def test_gradient_magnitude_backward_finite_difference():
    rng = np.random.default_rng(6)
    x = gk.tensor(rng.standard_normal((1, 2, 6, 5)), requires_grad=True)
    w = gk.tensor(rng.standard_normal((1, 2, 6, 5)))
    grad_check(lambda t: (filters.gradient_magnitude(t) * w).sum(), [x])
    grad_check(lambda t: (filters.gradient_magnitude(t, eps=0.1) * w).sum(), [x])


def test_gradient_magnitude_backward_is_finite_on_flat_patches():
    img = np.zeros((1, 1, 12, 12))
    img[0, 0, 4:8, 4:8] = 1.0  # a square: |G| = 0 on most pixels, > 0 around the square
    x = gk.tensor(img, requires_grad=True)
    mag = filters.gradient_magnitude(x)
    assert (mag.numpy() == 0).sum() > 50
    mag.sum().backward()
    grad = x.grad.numpy()
    assert np.isfinite(grad).all()
    assert np.abs(grad).max() > 0
    # the same with the naive sqrt through the tape would be NaN: the custom backward matters
    naive = gk.tensor(img, requires_grad=True)
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 ** -0.5 = inf, then 0 * inf = NaN
        ((filters.sobel_x(naive) ** 2 + filters.sobel_y(naive) ** 2) ** 0.5).sum().backward()
    assert np.isnan(naive.grad.numpy()).any()


def test_laplacian_backward_finite_difference():
    x = gk.tensor(np.random.default_rng(7).standard_normal((5, 6)), requires_grad=True)
    w = gk.tensor(np.random.default_rng(8).standard_normal((5, 6)))
    grad_check(lambda t: (filters.laplacian(t, neighbours=8) * w).sum(), [x])


# ----------------------------------------------------------------------------- demo


def test_demo_writes_a_png(tmp_path, capsys):
    from models import filters_demo

    out = tmp_path / "grid.png"
    assert filters_demo.main(["--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out.strip() == str(out)
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temp file left behind


def test_demo_digits(tmp_path):
    pytest.importorskip("sklearn")
    from models import filters_demo

    out = tmp_path / "digit.png"
    assert filters_demo.main(["--out", str(out), "--image", "digits", "--index", "3"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_missing_directory(tmp_path, capsys):
    from models import filters_demo

    assert filters_demo.main(["--out", str(tmp_path / "missing" / "grid.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not exist" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_demo_bad_digit_index(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from models import filters_demo

    assert filters_demo.main(["--out", str(tmp_path / "g.png"), "--image", "digits", "--index", "5000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--index must be in [0, 1796], got 5000" in err


def test_demo_without_matplotlib(tmp_path, capsys, monkeypatch):
    import sys

    from models import filters_demo

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    assert filters_demo.main(["--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "matplotlib" in err
