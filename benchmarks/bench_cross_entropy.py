"""Softmax cross-entropy forward + backward, ours (loss and gradient in one forward) vs
PyTorch on the same machine.

Bytes counted (Result.bytes), the minimum of this two-call API on a GPU (or with
``retain_graph``): the forward reads the logits once and writes the gradient once
(2*B*C*itemsize), the backward reads that gradient once and writes the scaled one
(2*B*C*itemsize): 4*B*C*itemsize per forward + backward. Targets, per-row losses and the scalar loss (O(B)) are not counted.
On the host a backward seeded with 1 (``loss.backward()``, what the CPU entry times)
hands the forward's gradient out as it is (``ops.cross_entropy``), so the CPU entry
counts the forward's 2*B*C*itemsize only. PyTorch eager moves more (log-softmax
written and read back, then the gradient).

On a GPU (``gk.get_backend() == "cuda"``) ``run`` is ``run_gpu``: our Triton kernels on
CuPy arrays vs PyTorch eager and ``torch.compile`` on the same GPU, B=8192 C=1000 and
B=4096 C=32768 in bf16 and float32, correctness checked before timing, medians of
``triton.testing.do_bench``. Otherwise the NumPy backend vs torch on the CPU.
"""

from __future__ import annotations

import numpy as np
import torch

import gpukernels as gk
from gpukernels import functional as F
from gpukernels import knobs
from gpukernels.backend import cupy_from_torch

from .common import (Result, check_close, check_close_gpu, cuda_generator, cuda_randn, gpu_time, pick_cases,
                     time_both, torch_compile)

CASES = [(8192, 1000), (512, 32768), (64, 10)]
QUICK = [(256, 1000)]
TINY = [(8, 10)]


def run(quick: bool = False, repeat: int = 10) -> list[Result]:
    """On a GPU the Triton kernels vs PyTorch CUDA (run_gpu); else the NumPy backend vs
    torch CPU, float32, reduction "mean"."""
    if gk.get_backend() == "cuda":
        return run_gpu(quick, repeat)
    results = []
    rng = np.random.default_rng(0)
    for b, c in pick_cases(CASES, QUICK, TINY, quick):
        logits = (3 * rng.standard_normal((b, c))).astype(np.float32)
        target = rng.integers(0, c, b)
        gl, gt = gk.tensor(logits, requires_grad=True), gk.tensor(target)
        tl, tt = torch.tensor(logits, requires_grad=True), torch.tensor(target)

        def ours():
            gl.grad = None
            loss = F.cross_entropy(gl, gt)
            loss.backward()
            return loss

        def theirs():
            tl.grad = None
            loss = torch.nn.functional.cross_entropy(tl, tt)
            loss.backward()
            return loss

        check_close(f"cross_entropy {b}x{c} loss", ours().numpy(), theirs().detach().numpy(), 1e-5, 1e-5)
        check_close(f"cross_entropy {b}x{c} grad", gl.grad.numpy(), tl.grad.numpy(), 1e-6, 1e-4)
        results.append(time_both("cross_entropy", f"B={b} C={c} fwd+bwd", ours, theirs, repeat,
                                 bytes=2.0 * b * c * 4))  # the backward moves nothing (docstring)
    return results


# ----------------------------------------------------------------------------- GPU

GPU_CASES = [(8192, 1000), (4096, 32768)]
GPU_QUICK = [(8192, 1000)]


def run_gpu(quick: bool = False, repeat: int = 100) -> list[Result]:
    """Forward + backward (reduction "mean", upstream gradient 1), ours vs PyTorch eager
    (``torch.nn.functional.cross_entropy`` then ``backward``), and vs ``torch.compile`` of
    the same function where it compiles (reported unavailable otherwise).

    Rows: "fwd+bwd" is the default launcher, which checks the targets with one 8-byte
    device-to-host read per call (a host sync, as ``functional.cross_entropy`` does too);
    "fwd+bwd no target check" sets the knob ``check_targets=False`` (no host sync at all; bad
    targets then give NaN rows), which is what PyTorch's device-side assert costs."""
    from gpukernels.triton import cross_entropy as tri

    results = []
    for b, c in GPU_QUICK if quick else GPU_CASES:
        for dtype in (torch.bfloat16, torch.float32):
            name = "bf16" if dtype == torch.bfloat16 else "fp32"
            label = f"B={b} C={c} {name}"
            gen = cuda_generator(0)
            z = cuda_randn(gen, b, c, dtype=dtype, scale=3)
            t = torch.randint(0, c, (b,), device="cuda", generator=gen)
            cz, ct = cupy_from_torch(z), cupy_from_torch(t)
            one = cupy_from_torch(torch.ones((), device="cuda", dtype=dtype))
            nbytes = 4.0 * b * c * z.element_size()

            def ours():
                loss, grad = tri.cross_entropy_forward(cz, ct, "mean", -100, 0.0)
                return loss, tri.cross_entropy_backward(one, grad, "mean")

            zr = z.detach().clone().requires_grad_(True)

            def eager(fn=torch.nn.functional.cross_entropy):
                zr.grad = None
                loss = fn(zr, t)
                loss.backward()
                return loss

            # correctness first (PyTorch eager is the reference)
            loss, grad = ours()
            ref = eager()
            tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
            check_close_gpu(f"cross_entropy {label} loss", loss, ref, tol, atol=tol)
            ref_grad = zr.grad.float()
            check_close_gpu(f"cross_entropy {label} grad", grad, zr.grad, tol)

            t_eager = gpu_time(eager, repeat)
            extra = {"baseline": "PyTorch eager"}
            try:
                compiled = torch_compile(torch.nn.functional.cross_entropy)

                def comp():
                    return eager(compiled)

                comp()
                check_close_gpu(f"cross_entropy {label} torch.compile grad", zr.grad, ref_grad, tol)
                t_comp = gpu_time(comp, repeat)
                extra["torch_compile_s"] = t_comp
            except Exception as exc:  # noqa: BLE001 - no compiler toolchain, unsupported build, ...
                t_comp = None
                extra["torch_compile"] = f"unavailable: {type(exc).__name__}: {exc}"[:200]

            t_ours = gpu_time(ours, repeat)
            results.append(Result("cross_entropy", f"{label} fwd+bwd", t_ours, t_eager, bytes=nbytes,
                                  extra=extra))
            if t_comp is not None:
                results.append(Result("cross_entropy", f"{label} fwd+bwd vs torch.compile", t_ours, t_comp,
                                      bytes=nbytes, extra={"baseline": "torch.compile"}))
            with knobs.override(check_targets=False):
                t_nosync = gpu_time(ours, repeat)
            results.append(Result("cross_entropy", f"{label} fwd+bwd no target check", t_nosync, t_eager,
                                  bytes=nbytes, extra={"baseline": "PyTorch eager"}))
    return results
