"""Shared test helpers: one verbose closeness assert, torch conversion, gradient checks.

Stable API (other test modules import it; extend with new keyword arguments only):

    from tests.helpers import TOLS, assert_close, grad_check, pair, to_numpy, to_torch

- ``assert_close(actual, expected, *, atol, rtol, name="", equal_nan=True)``: elementwise
  ``|actual - expected| <= atol + rtol * |expected|`` (as ``numpy.isclose``), after checking
  that the shapes are equal and the dtypes are of the same kind (float with float, int with
  int, bool with bool; float32 against a float64 reference is fine; Python numbers and
  lists are not kind-checked). Either side may be a
  ``gk.Tensor``, a ``numpy.ndarray``/scalar, a ``torch.Tensor`` or a Python number. NaN
  equals NaN (unless ``equal_nan=False``), +-inf must match exactly. On failure the
  AssertionError names ``name``, the shapes, how many elements are off out of how many,
  the max abs and max rel error, and the first (up to 5) bad indices with both values.
- ``to_numpy(x)``: a host ``numpy.ndarray`` from any of the above (``None`` stays ``None``).
- ``to_torch(x, requires_grad=False)``: a fresh torch tensor copy; floating data becomes
  float64, integer data int64, bool stays bool.
- ``pair(array, dtype, requires_grad=True)``: ``(gk tensor in dtype, torch float64 tensor)``
  holding the SAME values (the array rounded to ``dtype`` first), both leaves.
- ``grad_check(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)``: central finite differences
  in float64 of a scalar function of gk tensors against autograd; returns the autograd
  gradients as numpy arrays.
- ``TOLS``: ``[(dtype, atol, rtol), ...]`` for ``@pytest.mark.parametrize`` over dtypes;
  ``TOL_IDS`` are matching ids (``ids=TOL_IDS``).
"""

from __future__ import annotations

import numpy as np

import gpukernels as gk

__all__ = ["TOLS", "TOL_IDS", "assert_close", "grad_check", "pair", "to_numpy", "to_torch"]

#: (dtype, atol, rtol) to parametrise forward/backward comparisons against a float64
#: reference: float64 is tight, float32 loose (single rounding plus float32 accumulation).
TOLS = [(np.float64, 1e-10, 1e-8), (np.float32, 1e-5, 1e-4)]
TOL_IDS = ["float64", "float32"]


def to_numpy(x):
    """A host ``numpy.ndarray`` from a gk Tensor, torch tensor, array or number."""
    if x is None:
        return None
    if isinstance(x, gk.Tensor):
        return np.asarray(x.numpy())
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _kind(dtype):
    if dtype.kind in "fc":
        return "floating"
    if dtype.kind in "iu":
        return "integer"
    if dtype.kind == "b":
        return "bool"
    return dtype.kind


def _describe(x):
    if isinstance(x, gk.Tensor):
        return "gk.Tensor"
    if type(x).__module__.startswith("torch"):
        return "torch.Tensor"
    return type(x).__name__


def assert_close(actual, expected, *, atol, rtol, name="", equal_nan=True):
    """Assert ``|actual - expected| <= atol + rtol * |expected|`` elementwise, verbosely.

    Args:
        actual: the value under test (gk Tensor, numpy array/scalar, torch tensor, number).
        expected: the reference, same kinds accepted.
        atol, rtol: absolute and relative tolerance (keyword-only, always explicit).
        name: what is compared ("y", "x.grad", ...), printed first in the failure message.
        equal_nan: NaN in both at the same place counts as equal.

    Raises:
        AssertionError: on a missing value, a shape or dtype-kind mismatch, or values
            out of tolerance (with the details listed in the module docstring).
    """
    label = f"{name}: " if name else ""
    if actual is None or expected is None:
        which = "actual" if actual is None else "expected"
        raise AssertionError(f"{label}{which} is None (no gradient computed?)")
    a, e = to_numpy(actual), to_numpy(expected)
    if a.shape != e.shape:
        raise AssertionError(
            f"{label}shape mismatch: actual {a.shape} ({_describe(actual)}, {a.dtype}) vs "
            f"expected {e.shape} ({_describe(expected)}, {e.dtype})"
        )
    # Python numbers and lists carry no intended dtype: only arrays/tensors are kind-checked
    if hasattr(actual, "dtype") and hasattr(expected, "dtype"):
        if _kind(a.dtype) != _kind(e.dtype):
            raise AssertionError(
                f"{label}dtype mismatch: actual {a.dtype} is {_kind(a.dtype)}, "
                f"expected {e.dtype} is {_kind(e.dtype)}"
            )
    af = a.astype(np.complex128 if a.dtype.kind == "c" else np.float64)
    ef = e.astype(np.complex128 if e.dtype.kind == "c" else np.float64)
    finite = np.isfinite(af) & np.isfinite(ef)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(finite, np.abs(af - ef), np.inf)
        ok = diff <= atol + rtol * np.abs(np.where(finite, ef, 0))
    same_special = ~finite & ((af == ef) | (equal_nan & np.isnan(af) & np.isnan(ef)))
    ok = ok | same_special
    if ok.all():
        return
    bad = np.argwhere(~ok)
    n_bad, total = int((~ok).sum()), int(ok.size)
    fin_diff = np.where(finite, diff, 0.0)
    max_abs = float(fin_diff.max()) if finite.any() else float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(finite, fin_diff / np.maximum(np.abs(np.where(finite, ef, 0)), 1e-300), 0.0)
    max_rel = float(rel.max()) if finite.any() else float("nan")
    lines = [
        f"{label}not close (atol={atol:g}, rtol={rtol:g}): {n_bad} of {total} elements differ; "
        f"shape {a.shape}, actual dtype {a.dtype}, expected dtype {e.dtype}",
        f"  max abs error {max_abs:.6g}, max rel error {max_rel:.6g}"
        + ("" if finite.all() else f" (finite elements only; {int((~finite).sum())} non-finite)"),
    ]
    for idx in bad[:5]:
        i = tuple(int(v) for v in idx)
        lines.append(
            f"  at {i}: actual {a[i].item()!r} vs expected {e[i].item()!r} (abs err {abs(af[i] - ef[i]):.3g})"
        )
    if n_bad > 5:
        lines.append(f"  ... and {n_bad - 5} more")
    raise AssertionError("\n".join(lines))


def to_torch(x, requires_grad=False):
    """A fresh torch tensor copy of ``x``: float64 for floating data, int64 for integers,
    bool for bools. ``requires_grad`` makes it a leaf that records gradients (floats only)."""
    import torch  # noqa: PLC0415 - torch is a test-only dependency

    arr = to_numpy(x)
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float64)
    elif arr.dtype.kind in "iu":
        arr = arr.astype(np.int64)
    t = torch.tensor(np.array(arr, copy=True))
    if requires_grad:
        t.requires_grad_(True)
    return t


def pair(array, dtype=np.float64, requires_grad=True):
    """``(gk tensor of dtype, torch float64 tensor)`` holding the same values.

    The array is rounded to ``dtype`` first so that the torch float64 reference sees
    exactly what the gk op sees. Integer dtypes give no gradients.
    """
    arr = np.asarray(to_numpy(array)).astype(dtype)
    floating = arr.dtype.kind == "f"
    x = gk.tensor(arr, requires_grad=requires_grad and floating)
    return x, to_torch(arr, requires_grad=requires_grad and floating)


def grad_check(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5):
    """Central finite-difference check of autograd for a scalar function of gk tensors.

    Every input becomes a float64 leaf tensor that requires grad; ``fn(*leaves)`` must
    return a one-element gk Tensor. The autograd gradient of each leaf is compared with
    (fn(x + eps e_i) - fn(x - eps e_i)) / (2 eps) for every element i (evaluated under
    ``gk.no_grad()``). Keep the inputs small: it costs 2 * numel evaluations of fn.

    Returns:
        list of numpy arrays: the autograd gradients, one per input.
    """
    leaves = [gk.tensor(np.array(to_numpy(x), dtype=np.float64), requires_grad=True) for x in inputs]
    out = fn(*leaves)
    if not isinstance(out, gk.Tensor) or out.numel() != 1:
        raise TypeError(f"grad_check: fn must return a one-element gk Tensor, got {out!r}")
    out.backward()
    analytic = [
        leaf.grad.numpy().copy() if leaf.grad is not None else np.zeros(leaf.shape) for leaf in leaves
    ]
    for k, leaf in enumerate(leaves):
        numeric = np.zeros(leaf.shape)
        flat = leaf.data.reshape(-1)  # a view: perturbs the leaf in place
        num_flat = numeric.reshape(-1)
        for i in range(flat.size):
            orig = flat[i]
            with gk.no_grad():
                flat[i] = orig + eps
                plus = float(fn(*leaves).item())
                flat[i] = orig - eps
                minus = float(fn(*leaves).item())
            flat[i] = orig
            num_flat[i] = (plus - minus) / (2 * eps)
        assert_close(analytic[k], numeric, atol=atol, rtol=rtol, name=f"grad_check input {k}")
    return analytic


def assert_twin_matches(model, x_shape, classes, *, logits_atol, grad_atol, seed=0):
    """A float64 gk model vs its torch twin (``benchmarks.torch_twin``), in train then eval
    mode (eval uses the running statistics train updated): logits, every parameter's
    gradient for one random upstream gradient, and the buffers (running statistics)."""
    import torch  # noqa: PLC0415 - the tests that call this importorskip it

    from benchmarks.torch_twin import torch_twin  # noqa: PLC0415

    twin = torch_twin(model, torch.float64)
    # the twin keeps every name, so gradients can be compared key by key
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in twin.named_parameters()]
    rng = np.random.default_rng(seed)
    for mode in ("train", "eval"):
        model.train(mode == "train")
        twin.train(mode == "train")
        model.zero_grad()
        twin.zero_grad()
        x = rng.standard_normal(x_shape)
        g = rng.standard_normal((x_shape[0], classes))
        out = model(gk.tensor(x))
        tout = twin(torch.tensor(x))
        assert_close(out, tout, atol=logits_atol, rtol=1e-9, name=f"{mode}: logits")
        out.backward(gk.tensor(g))
        tout.backward(torch.tensor(g))
        tparams = dict(twin.named_parameters())
        for name, p in model.named_parameters():
            assert_close(p.grad, tparams[name].grad, atol=grad_atol, rtol=1e-8, name=f"{mode}: {name}.grad")
        tbuffers = dict(twin.named_buffers())
        for name, b in model.named_buffers():
            if not name.endswith("num_batches_tracked"):
                assert_close(b, tbuffers[name], atol=1e-12, rtol=1e-9, name=f"{mode}: {name}")
