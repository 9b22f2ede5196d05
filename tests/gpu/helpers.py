"""What several GPU test files share. CuPy, torch and the Triton kernel modules are
imported inside the functions, so collecting the tests on a machine without a GPU (where
they are skipped) imports none of them.

CuPy <-> torch views (bf16 as uint16 bits) are ``gpukernels.backend.cupy_from_torch`` and
``torch_from_cupy`` (importing them imports neither library)."""

from __future__ import annotations

import importlib

from gpukernels import knobs
from gpukernels.backend import cupy_from_torch, torch_from_cupy


def gpu_env(family: str):
    """``(cupy, torch, module)``: what a test file's ``env`` fixture returns, ``module``
    being ``gpukernels.triton.<family>`` (compiled kernels under GPUKERNELS_TEST_GPU=1)."""
    import cupy
    import torch

    return cupy, torch, importlib.import_module(f"gpukernels.triton.{family}")


def each_config(monkeypatch, tuned, configs):
    """Yield every config of ``configs`` with ``tuned`` pinned to it
    (``knobs.override(configs=...)`` around each iteration), so a miscompiled config
    cannot hide behind autotuning."""
    for cfg in configs:
        with knobs.override(configs={tuned: cfg}):
            yield cfg


def assert_close_each(names, ours, theirs, rtol, label):
    """For each named pair of float32 torch tensors: same shape and
    max |ours - theirs| <= rtol * (max |theirs| + 1e-6)."""
    for name, a, b in zip(names, ours, theirs):
        assert a.shape == b.shape, f"{label} {name}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
        err = (a - b).abs().max().item()
        scale = b.abs().max().item() + 1e-6
        assert err <= rtol * scale, f"{label} {name}: max abs error {err:.3g}, scale {scale:.3g}"


def run_both(ours_fn, torch_fn, inputs, gy, bfloat16):
    """``(ours, theirs)``: float32 torch tensors ``[y, grad of each input]``.

    Theirs: ``torch_fn`` on clones of the torch CUDA ``inputs`` that require a gradient,
    then ``backward(gy)``. Ours: ``ours_fn(*inputs, gy)`` on CuPy views of the same tensors
    (``cupy_from_torch``), returning ``(y, *grads)`` as CuPy arrays, read back with
    ``torch_from_cupy`` (bf16 from uint16 bits when ``bfloat16``)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    y_ref = torch_fn(*leaves)
    y_ref.backward(gy)
    ours = ours_fn(*(cupy_from_torch(t) for t in (*inputs, gy)))
    return ([torch_from_cupy(a, bfloat16=bfloat16).float() for a in ours],
            [t.float() for t in (y_ref, *(leaf.grad for leaf in leaves))])
