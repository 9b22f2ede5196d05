"""Elementwise activations (ReLU, leaky ReLU, sigmoid, tanh), forward and backward from
the saved output, ours vs PyTorch on the same machine.

Each is one pass over memory, so the rate that matters is bytes moved against the copy
ceiling (the issue's goal: >= 80% of copy bandwidth on the GPU). Bytes per element:
forward reads x and writes y (2 x itemsize), backward reads g and y and writes dx
(3 x itemsize). The PyTorch side is its own eager kernel for the same pass
(``torch.relu`` ..., and for the backward ``aten.threshold_backward`` /
``leaky_relu_backward`` / ``sigmoid_backward`` / ``tanh_backward``, which autograd
runs), so neither side pays autograd overhead; on a GPU also ``torch.compile`` of the
same function, reported in ``extra`` (or why it was unavailable).
"""

from __future__ import annotations

import numpy as np
import torch

import gpukernels as gk
from gpukernels.backend import cupy_from_torch, torch_from_cupy
from gpukernels.cpu import activation as ref

from .common import Result, check_close, cuda_generator, cuda_randn, gpu_time, pick_cases, time_both, torch_compile

ACTS = ["relu", "leaky_relu", "sigmoid", "tanh"]
SLOPE = 0.01


def _params(name):
    return (SLOPE,) if name == "leaky_relu" else ()


def _torch_forward(name):
    f = torch.nn.functional
    return {"relu": torch.relu, "leaky_relu": lambda x: f.leaky_relu(x, SLOPE),
            "sigmoid": torch.sigmoid, "tanh": torch.tanh}[name]


def _torch_backward(name):
    """PyTorch's backward kernel of ``name`` from the saved output (what autograd runs)."""
    aten = torch.ops.aten
    return {"relu": lambda g, y: aten.threshold_backward(g, y, 0.0),
            "leaky_relu": lambda g, y: aten.leaky_relu_backward(g, y, SLOPE, True),
            "sigmoid": aten.sigmoid_backward, "tanh": aten.tanh_backward}[name]


def run(quick: bool = False, repeat: int = 10) -> list[Result]:
    """On a GPU ours (Triton) vs PyTorch eager (run_gpu); else the NumPy backend's
    reference vs torch CPU, float32, 1M (quick) or 16M elements."""
    if gk.get_backend() == "cuda":
        return run_gpu(quick, repeat)
    n = pick_cases(16 * 1024 * 1024, 1024 * 1024, 4096, quick)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n, dtype=np.float32)
    g = rng.standard_normal(n, dtype=np.float32)
    tx, tg = torch.from_numpy(x), torch.from_numpy(g)
    results = []
    for name in ACTS:
        params = _params(name)
        fwd, bwd = getattr(ref, f"{name}_forward"), getattr(ref, f"{name}_backward")
        t_fwd, t_bwd = _torch_forward(name), _torch_backward(name)
        y = fwd(x, *params)
        ty = torch.from_numpy(y)
        # correctness first
        # torch CPU's vectorised tanh has been seen 5e-5 off NumPy's near |y| = 1 on this VM
        atol = 1e-4 if name == "tanh" else 1e-6
        check_close(f"{name} forward", y, t_fwd(tx).numpy(), atol, 1e-5)
        check_close(f"{name} backward", bwd(g, y, *params), t_bwd(tg, ty).numpy(), 1e-6, 1e-5)
        results.append(time_both(f"{name} fwd", f"{n >> 20}M float32", lambda: fwd(x, *params),
                                 lambda: t_fwd(tx), repeat, bytes=2 * n * 4))
        results.append(time_both(f"{name} bwd", f"{n >> 20}M float32", lambda: bwd(g, y, *params),
                                 lambda: t_bwd(tg, ty), repeat, bytes=3 * n * 4))
    return results


# ----------------------------------------------------------------------------- GPU


def run_gpu(quick: bool = False, repeat: int = 100) -> list[Result]:
    """64M elements (quick: 4M) in float32 and bf16: ours on CuPy arrays vs PyTorch eager
    on the same GPU, correctness checked on the device first; ``torch.compile`` of the
    same function timed too where it runs (``extra["torch_compile_s"]``)."""
    from gpukernels.triton import activation

    def compiled(fn, *args):
        """(seconds, None) for torch.compile(fn), or (None, why) when it does not run here."""
        try:
            cfn = torch_compile(fn)
            cfn(*args)  # compile outside the timing
            return gpu_time(lambda: cfn(*args), repeat), None
        except Exception as exc:  # noqa: BLE001 - no compiler toolchain, unsupported op: report it
            return None, f"unavailable: {type(exc).__name__}: {str(exc)[:120]}"

    n = (4 if quick else 64) * 1024 * 1024
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        label = f"{n >> 20}M {'fp32' if dtype == torch.float32 else 'bf16'}"
        gen = cuda_generator(0)
        x = cuda_randn(gen, n, dtype=dtype, scale=3)
        g = cuda_randn(gen, n, dtype=dtype)
        cx, cg = cupy_from_torch(x), cupy_from_torch(g)
        bf16 = dtype == torch.bfloat16
        size = x.element_size()
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
        for name in ACTS:
            params = _params(name)
            fwd, bwd = getattr(activation, f"{name}_forward"), getattr(activation, f"{name}_backward")
            t_fwd, t_bwd = _torch_forward(name), _torch_backward(name)
            y_ref = t_fwd(x)
            cy = fwd(cx, *params)
            # correctness first, on the device (64M elements: no host round trip)
            for what, ours, theirs in (("forward", torch_from_cupy(cy, bfloat16=bf16), y_ref),
                                       ("backward", torch_from_cupy(bwd(cg, cupy_from_torch(y_ref), *params),
                                                                    bfloat16=bf16), t_bwd(g, y_ref))):
                err = ((ours.float() - theirs.float()).abs() - tol * theirs.float().abs()).max().item()
                if err > tol:
                    raise AssertionError(f"{name} {what} {label}: max error {err:.3g} beyond tolerance")
            cy_ref = cupy_from_torch(y_ref)
            for kind, ours_fn, theirs_fn, args, nbytes in (
                ("fwd", lambda: fwd(cx, *params), lambda: t_fwd(x), (x,), 2 * n * size),
                ("bwd", lambda: bwd(cg, cy_ref, *params), lambda: t_bwd(g, y_ref), (g, y_ref), 3 * n * size),
            ):
                compile_s, why = compiled(t_fwd if kind == "fwd" else t_bwd, *args)
                extra = {"baseline": "torch eager"}
                extra.update({"torch_compile_s": compile_s} if compile_s is not None else {"torch_compile": why})
                results.append(Result(f"{name} {kind}", label, gpu_time(ours_fn, repeat),
                                      gpu_time(theirs_fn, repeat), bytes=nbytes, extra=extra))
    return results
