"""Timing, machine ceilings, the result table, and the input building and correctness
checks shared by every benchmark entry."""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

import gpukernels as gk


def timeit(fn, *, warmup: int = 2, repeat: int = 10, min_seconds: float = 0.0) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@dataclass
class Result:
    """One benchmark row: our time vs the reference's, and the work it did."""

    entry: str
    case: str
    ours_s: float
    theirs_s: float
    flops: float = 0.0  # floating-point operations of one call (0: not FLOP-bound)
    bytes: float = 0.0  # bytes one call must move at least (0: not counted)
    unit: str = "s"
    ceiling_note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Speed of ours relative to theirs: > 1 means ours is faster."""
        return self.theirs_s / self.ours_s


@dataclass
class Ceilings:
    """What this machine can do at best, measured in the same run."""

    copy_gbps: float
    gemm_gflops: float
    device: str


def measure_gpu_ceilings(quick: bool = False) -> Ceilings:
    """Device copy bandwidth (a 1 GiB copy, read + write) and bf16 GEMM GFLOP/s (8192^3,
    float32 accumulation) with PyTorch on the current GPU."""
    import torch  # noqa: PLC0415
    import triton.testing  # noqa: PLC0415

    n = (64 if quick else 256) * 1024 * 1024
    src = torch.ones(n, device="cuda", dtype=torch.float32)
    dst = torch.empty_like(src)
    t = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median") / 1e3
    copy = 2 * src.numel() * 4 / t / 1e9
    m = 4096 if quick else 8192
    a = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
    t = triton.testing.do_bench(lambda: a @ a, return_mode="median") / 1e3
    return Ceilings(copy, 2 * m**3 / t / 1e9, f"{torch.cuda.get_device_name()} (cuda backend)")


def measure_ceilings(quick: bool = False, gpu: bool = False) -> Ceilings:
    """Copy bandwidth (a 256 MB float32 copy) and float32 GEMM GFLOP/s (2048^3) with NumPy;
    the GPU's (bf16 GEMM) with ``gpu``."""
    if gpu:
        return measure_gpu_ceilings(quick)
    n = (16 if quick else 64) * 1024 * 1024
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    t = timeit(lambda: np.copyto(dst, src), warmup=1, repeat=3 if quick else 7)
    copy = 2 * src.nbytes / t / 1e9
    m = 1024 if quick else 2048
    a = np.random.default_rng(0).standard_normal((m, m), dtype=np.float32)
    t = timeit(lambda: a @ a, warmup=1, repeat=3 if quick else 5)
    gemm = 2 * m**3 / t / 1e9
    return Ceilings(copy, gemm, f"CPU x{os.cpu_count()} (NumPy backend)")


def format_table(results: list[Result], ceilings: Ceilings) -> str:
    """A plain-text table: ours, theirs, ratio, and the rate against the ceiling."""
    head = f"{'entry':<16} {'case':<44} {'ours ms':>9} {'torch ms':>9} {'ratio':>6} {'rate':>24}"
    lines = [
        f"device: {ceilings.device}; ceilings: copy {ceilings.copy_gbps:.1f} GB/s, "
        f"GEMM {ceilings.gemm_gflops:.0f} GFLOP/s (float32 on a CPU, bf16 on a GPU)",
        "ratio = torch time / our time (> 1: ours faster)",
        head,
        "-" * len(head),
    ]
    for r in results:
        if r.flops:
            rate = r.flops / r.ours_s / 1e9
            rate_s = f"{rate:7.1f} GF/s {100 * rate / ceilings.gemm_gflops:4.0f}%"
        elif r.bytes:
            rate = r.bytes / r.ours_s / 1e9
            rate_s = f"{rate:7.1f} GB/s {100 * rate / ceilings.copy_gbps:4.0f}%"
        elif r.unit == "img/s":
            rate_s = f"{r.extra['batch'] / r.ours_s:.0f} vs {r.extra['batch'] / r.theirs_s:.0f} img/s"
        else:
            rate_s = ""
        lines.append(
            f"{r.entry:<16} {r.case:<44} {1e3 * r.ours_s:9.2f} {1e3 * r.theirs_s:9.2f} "
            f"{r.ratio:6.2f} {rate_s:>24}"
        )
    return "\n".join(lines)


def check_close(name: str, ours, theirs, atol: float, rtol: float) -> None:
    """Fail the benchmark entry loudly when ours disagrees with the reference."""
    ours = np.asarray(ours, dtype=np.float64)
    theirs = np.asarray(theirs, dtype=np.float64)
    if ours.shape != theirs.shape:
        raise AssertionError(f"{name}: shape {ours.shape} != reference {theirs.shape}")
    bad = ~np.isclose(ours, theirs, atol=atol, rtol=rtol)
    if bad.any():
        idx = np.argwhere(bad)[:3].tolist()
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{bad.size} elements differ "
            f"(max abs err {np.abs(ours - theirs).max():.3g}); first at {idx}"
        )


def time_both(entry: str, case: str, ours, theirs, repeat: int, **work) -> Result:
    """A Result row: ``timeit`` of ``ours()`` then of ``theirs()`` (``repeat`` runs each);
    ``work`` holds the other fields (``flops``, ``bytes``, ``extra``, ...)."""
    return Result(entry, case, timeit(ours, repeat=repeat), timeit(theirs, repeat=repeat), **work)


class CpuPair:
    """Ours (gpukernels on the current backend) and PyTorch's CPU op over the same host
    ``arrays``, each wrapped as leaves that require a gradient: the four calls a CPU entry
    checks and times. ``ours_op(*gk_tensors)`` and ``torch_op(*torch_tensors)`` compute
    one output; the backward is fed ``grad`` on both sides."""

    def __init__(self, ours_op, torch_op, arrays, grad):
        self.ours_op, self.torch_op = ours_op, torch_op
        self.ours_inputs = [gk.tensor(a, requires_grad=True) for a in arrays]
        self.torch_inputs = [torch.tensor(a, requires_grad=True) for a in arrays]
        self.ours_grad, self.torch_grad = gk.tensor(grad), torch.tensor(grad)

    def ours_fwd(self):
        """Our forward without autograd."""
        with gk.no_grad():
            return self.ours_op(*self.ours_inputs)

    def torch_fwd(self):
        """PyTorch's forward without autograd."""
        with torch.no_grad():
            return self.torch_op(*self.torch_inputs)

    def ours_fb(self):
        """Our forward + backward (the inputs' gradients cleared first)."""
        for t in self.ours_inputs:
            t.grad = None
        self.ours_op(*self.ours_inputs).backward(self.ours_grad)

    def torch_fb(self):
        """PyTorch's forward + backward (the inputs' gradients cleared first)."""
        for t in self.torch_inputs:
            t.grad = None
        self.torch_op(*self.torch_inputs).backward(self.torch_grad)

    def check_forward(self, prefix: str, atol: float, rtol: float) -> None:
        """check_close of the two forwards (``f"{prefix} forward"``)."""
        check_close(f"{prefix} forward", self.ours_fwd().numpy(), self.torch_fwd().numpy(), atol, rtol)

    def check_grads(self, prefix: str, labels, atol: float, rtol: float, scaled: bool = False) -> None:
        """Run ``ours_fb`` and ``torch_fb`` once, then check_close the inputs' gradients, one
        per label (``f"{prefix} {label}"``); with ``scaled`` the atol is ``atol * max|torch's|``."""
        self.ours_fb()
        self.torch_fb()
        for label, a, t in zip(labels, self.ours_inputs, self.torch_inputs):
            ref = t.grad.numpy()
            tol = atol * float(np.abs(ref).max()) if scaled else atol
            check_close(f"{prefix} {label}", a.grad.numpy(), ref, tol, rtol)


# ----------------------------------------------------------------------------- GPU


def gpu_time(fn, repeat: int) -> float:
    """Median time of ``fn()`` on the GPU in seconds: ``triton.testing.do_bench`` (25 ms of
    warm-up, then ``max(repeat, 20)`` ms of timed runs)."""
    import triton.testing  # noqa: PLC0415 - GPU entries only

    return triton.testing.do_bench(fn, warmup=25, rep=max(repeat, 20), return_mode="median") / 1e3


def cuda_generator(seed: int = 0):
    """A ``torch.Generator`` on the GPU seeded ``seed``: the inputs of a GPU case."""
    return torch.Generator(device="cuda").manual_seed(seed)


def cuda_randn(gen, *shape, dtype=None, scale=None, shift=None):
    """``torch.randn(*shape)`` on the GPU drawn from ``gen``, then ``scale * x`` and
    ``shift + x`` (each only when given), cast to ``dtype`` last (when given)."""
    x = torch.randn(*shape, device="cuda", generator=gen)
    if scale is not None:
        x = scale * x
    if shift is not None:
        x = shift + x
    return x if dtype is None else x.to(dtype)


def mark_compile_unavailable(bench: str, label: str, exc: Exception, rows) -> None:
    """torch.compile could not serve as a second baseline for ``label``: say why on stderr
    (``bench`` names the entry) and mark the eager ``rows`` (Results) with it."""
    print(f"{bench}: torch.compile unavailable for {label}: {type(exc).__name__}: {str(exc)[:200]}",
          file=sys.stderr)
    for row in rows:
        row.extra["torch_compile"] = "unavailable"


def check_close_gpu(name: str, ours, theirs, rtol: float, atol: float | None = None) -> None:
    """check_close of our GPU result against the torch tensor ``theirs``, both compared in
    float32 on the host. ``ours`` is a torch tensor or a CuPy array (viewed with
    ``backend.torch_from_cupy``, bf16 from uint16 bits when ``theirs`` is bf16). ``atol``
    defaults to ``rtol * max|theirs|``."""
    from gpukernels.backend import torch_from_cupy  # noqa: PLC0415

    if not isinstance(ours, torch.Tensor):
        ours = torch_from_cupy(ours, bfloat16=theirs.dtype == torch.bfloat16)
    theirs = theirs.detach().float()
    if atol is None:
        atol = rtol * float(theirs.abs().max())
    check_close(name, ours.detach().float().cpu().numpy(), theirs.cpu().numpy(), atol, rtol)
