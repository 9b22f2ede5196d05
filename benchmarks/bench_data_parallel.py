"""Data-parallel training step: ResNet-8 on 2 processes x 1 thread under
``gk.nn.parallel.DistributedDataParallel`` (gloo, through ``gk.distributed``) against
our own single process x 2 threads on the same 2 cores and the same global batch.

The step is bench_train's ResNet-8 case: 32x32x3 synthetic data, 10 classes, zero_grad,
forward, cross-entropy, backward, SGD (lr 0.05, momentum 0.9), float32, batch norm in
training mode. Global batch 2B (B = 64 per rank, bench_train's batch 128; 8 with
``--quick``, 2 with ``--tiny``):

- (a) "1 proc x 2 threads": this process, the NumPy backend's default threads (our CPU
  kernels split the batch over both cores, OpenBLAS has both), batch 2B;
- (b) "2 proc x 1 thread": two ranks of ``benchmarks/dp_worker.py`` started here with
  torchrun's env:// variables (``MASTER_ADDR``/``MASTER_PORT`` on a free port,
  ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), ``OMP_NUM_THREADS`` /
  ``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` = 1, ``torch.set_num_threads(1)``,
  threadpoolctl's limit 1 and the ``cpu_threads="serial"`` knob; batch B per rank. They
  write their timings to ``rank<r>.json``.

Rows (``ours`` = (b), the baseline column = (a), ratio = (a) / (b), > 1: data-parallel
faster), one per bucket configuration: DDP's default ``bucket_cap_mb=25`` (ResNet-8's
312 KB of gradients fit the 1 MiB first bucket: ONE bucket, which can only start when
backward has finished, so nothing can overlap) and ``bucket_cap_mb=0.0625`` (several
buckets, started as backward frees them). A last row times torch's own
``DistributedDataParallel`` of the torch twin (``benchmarks/torch_twin.py``) in the same
2 x 1 configuration, as the best alternative (ours default vs torch's default).

Each row's ``extra``: ``bytes_per_step`` (``comm_stats["bytes"]``: the gradient bytes
all-reduced per rank and step), ``buckets`` and ``bucket_bytes``; per step, of the rank
that reached the end of backward last (the other rank's wait also counts waiting for
it: that is ``wait_with_skew_ms``), the median over steps of ``comm_stats["wait_s"]``
(``wait_ms``: backward waiting for the all-reduces at its end) and of
``comm_stats["backward_end_s"]`` (``exposed_comm_ms``: that wait plus the launches still
left at the end of backward, i.e. the communication that did NOT overlap);
``allreduce_alone_ms``: the same buckets' sizes all-reduced synchronously, one after the
other, outside backward, after a barrier (the time of the rank that started last,
median over repeats);
``overlap = 1 - exposed_comm / allreduce_alone``, clipped to [0, 1]: the fraction of the
communication hidden behind backward (two medians of separate runs on a shared machine:
read it to +-0.2; with one bucket it is 0 by construction). ``no_sync_ms``: the same step
with forward and backward under ``no_sync()`` (no gradient all-reduce; DDP's buffer
broadcast at each forward stays), so ``comm_overhead_ms`` = step(b) - step(b, no_sync)
(it can come out negative within the noise), and ``dp_vs_1proc_no_sync`` = (a) /
step(b, no_sync): what 2 x 1 would gain with free communication.

Times: (a) the median of ``repeat`` steps after warm-up (bench_train's ``timeit``);
(b) per step, the slower rank's time (the ranks wait for each other in the all-reduce),
median over ``repeat`` steps after warm-up and a barrier. On a 2-core machine shared
with other jobs, read them to +-20%. The entry takes ~20 s on the 2-core dev VM (~3 s of
it starting the ranks), ~4 s with ``--quick --repeat 1`` or ``--tiny``.

Correctness before timing, two single steps from the same initial weights on the same
global batch, each checked against one process, in float64 on the CPU (the timed steps
are float32):

- the timed model (plain ``BatchNorm2d``, PyTorch DDP's default: batch norm normalises
  over each rank's B examples, so (b) is the mean of the two shards' losses, not the
  loss over 2B in one batch norm) against one process that runs the two B-shards, each
  its own forward, and averages their losses;
- the same model with ``SyncBatchNorm`` (``convert_sync_batchnorm``) against one
  process stepping on the whole 2B batch in one forward: (a)'s step itself.

After each step the ranks' parameters must be bit-identical (each applied the same
averaged gradient), every averaged gradient within ``GRAD_TOL`` = 1e-9 x its tensor's
max |value| and every parameter within ``PARAM_TOL`` = 1e-9 x its tensor's max |value|
+ ``PARAM_ATOL`` = 1e-12 of the one process's (seen: up to 9e-15 over 3 seeds and the
full runs, the summation orders' float64 rounding; a missing all-reduce or wrong average is >= 1e-3),
and the losses within rtol 1e-4; torch's DDP (float32) must give our first loss (rtol
1e-4, as bench_train). The largest scaled errors are in ``extra``
(``max_*_err_scaled``). Any failure fails the entry.

Why float64: a float32 step is chaotic at the 1e-7 level. Two summation orders of the
same float32 sums (SyncBatchNorm's all-reduced statistics against the one-process
kernel's, or one conv path against another) move pre-activations by ~1e-7, enough to
flip a ReLU whose input is that close to 0 (ResNet-8 at batch 128 has ~2M per layer);
each flip moves a cancelling sum such as a batch-norm bias gradient by 1e-4..1e-3 of its
max. Measured with float32 checks, seeds 0-6 of ``_inputs``: seeds 3 and 4 put the
SyncBatchNorm gradients 1.2e-3 and 3.4e-4 x max away from the one process (the others
~3e-6), and the one process's own float32 step is 3e-3 x max from its float64 step. In
float64 the same perturbations are ~1e-16 and no flip occurs.

GPU (``run_gpu``): fewer than 2 GPUs: "not measured on a GPU: data-parallel entry
needs >= 2 GPUs", no rows. With n >= 2: n ranks, one per GPU, nccl, batch B = 256 per
GPU against this process on one GPU at batch n x B (ratio = speed-up, ideal n), the
same checks with float32 TF32 tolerances. That path is written but has not run: no
machine with 2 GPUs was available.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import gpukernels as gk
from gpukernels import functional as F
from models.resnet import resnet8

from .common import OPTIONS, Result, check_close, timeit

ROOT = Path(__file__).resolve().parents[1]
LR, MOMENTUM = 0.05, 0.9  # bench_train's "momentum" optimizer (dp_worker uses the same)
BATCH = {"full": 64, "quick": 8, "tiny": 2}  # per rank; the single process takes 2x
GPU_BATCH = 256
#: bucket_cap_mb of the timed configurations: DDP's default (one bucket for ResNet-8),
#: then small buckets (several, overlapping backward)
BUCKET_CAPS = (25, 0.0625)
GRAD_TOL, PARAM_TOL = 1e-9, 1e-9  # x the tensor's max |value| (float64 check steps, CPU)
PARAM_ATOL = 1e-12  # added to the params' tolerance (float64)
GPU_TOL = 1e-3  # TF32 convolutions
GPU_PARAM_ATOL = 1e-7
LOSS_RTOL = 1e-4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(spec: dict, world: int, out: Path, device: str, timeout_s: float) -> list[dict]:
    """Run ``world`` ranks of dp_worker on ``spec``; their JSON results and npz arrays."""
    (out / "spec.json").write_text(json.dumps(spec))
    port = _free_port()
    threads = str(spec["threads"])
    procs = []
    for rank in range(world):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                   WORLD_SIZE=str(world), LOCAL_RANK=str(rank), OMP_NUM_THREADS=threads,
                   OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads, GPUKERNELS_DIST_TIMEOUT="120",
                   GPUKERNELS_BACKEND="cuda" if device == "cuda" else "numpy",
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        env.pop("TRITON_INTERPRET", None)
        procs.append(subprocess.Popen([sys.executable, "-m", "benchmarks.dp_worker", str(out / "spec.json"),
                                       str(out)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    try:
        outs = [p.communicate(timeout=timeout_s) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    codes = [p.returncode for p in procs]
    if any(codes):
        tails = "\n".join(f"--- rank {r} (exit {c}):\n{e[-2000:]}" for r, (c, (_, e)) in enumerate(zip(codes, outs)))
        raise RuntimeError(f"data_parallel: ranks failed:\n{tails}")
    ranks = []
    for rank in range(world):
        res = json.loads((out / f"rank{rank}.json").read_text())
        with np.load(out / f"rank{rank}.npz") as f:
            res["arrays"] = {k: f[k] for k in f.files}
        ranks.append(res)
    return ranks


def _reference_step(state, x, y, world, device, dtype=np.float32):
    """One SGD-momentum step of one process over the ``world`` shards of (x, y): each
    shard's own forward (its own batch-norm statistics), the mean of their losses,
    backward, step (``world=1``: the whole batch in one forward, what SyncBatchNorm on
    the ranks must give), with the model and ``x`` in ``dtype``. Returns
    ``({"grad/<name>": ..., "param/<name>": ...}`` as NumPy, the shards' losses)."""
    model = resnet8().to(dtype=dtype)
    model.load_state_dict(state)
    x = x.astype(dtype)
    opt = gk.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    n = x.shape[0] // world
    opt.zero_grad()
    losses = [F.cross_entropy(model(gk.tensor(x[r * n:(r + 1) * n], device=device)),
                              gk.tensor(y[r * n:(r + 1) * n], device=device)) for r in range(world)]
    total = losses[0]
    for loss in losses[1:]:
        total = total + loss
    (total * (1.0 / world)).backward()
    out = {f"grad/{k}": gk.backend.to_numpy(p.grad.data).copy() for k, p in model.named_parameters()}
    opt.step()
    out.update({f"param/{k}": gk.backend.to_numpy(p.data).copy() for k, p in model.named_parameters()})
    return out, [float(loss.item()) for loss in losses]


def _check(ranks, refs, grad_tol, param_tol, param_atol) -> dict:
    """The correctness checks of the module docstring; ``refs``: ``{prefix: (reference
    arrays, reference losses)}`` for the plain batch-norm step (prefix ``""``: one loss per
    shard) and the SyncBatchNorm step (``"syncbn_"``: the one loss over the whole batch).
    Returns the largest scaled errors."""
    a0 = ranks[0]["arrays"]
    for r in ranks[1:]:
        for k in a0:
            if "param/" in k and not np.array_equal(a0[k], r["arrays"][k]):
                diff = np.abs(a0[k].astype(np.float64) - r["arrays"][k]).max()
                raise AssertionError(f"data_parallel: {k} differs between rank 0 and rank {r['rank']} "
                                     f"after one step (max abs diff {diff:.3g}): the replicas diverged")
    worst = {}
    for prefix, (ref, ref_losses) in refs.items():
        for k in sorted(ref):
            kind = prefix + k.split("/")[0]
            scale = float(np.abs(ref[k]).max()) or 1.0
            tol = (param_tol * scale + param_atol) if k.startswith("param/") else grad_tol * scale
            check_close(f"data_parallel 2-rank {prefix}{k} vs 1 process", a0[prefix + k], ref[k], tol, 0.0)
            err = float(np.abs(a0[prefix + k].astype(np.float64) - ref[k]).max()) / scale
            worst[f"max_{kind}_err_scaled"] = max(worst.get(f"max_{kind}_err_scaled", 0.0), err)
        losses = [r[f"{prefix}first_loss"] for r in ranks]
        if len(ref_losses) == 1:  # one loss over the whole batch: the mean of the ranks' shards
            losses = [sum(losses) / len(losses)]
        check_close(f"data_parallel {prefix}first losses", losses, ref_losses, 0.0, LOSS_RTOL)
    for r in ranks:
        if "torch_first_loss" in r:
            check_close(f"data_parallel rank {r['rank']} torch DDP first loss", r["torch_first_loss"],
                        r["first_loss"], 0.0, LOSS_RTOL)
    return worst


def _slowest(ranks, pick) -> list[float]:
    """Per step (or repeat), the slowest rank's time."""
    return [max(vals) for vals in zip(*(pick(r) for r in ranks))]


def _rows(ranks, single_s, batch, world, label, single_label, errors, baseline, tolerance) -> list[Result]:
    no_sync = statistics.median(_slowest(ranks, lambda r: r["no_sync_step_s"]))
    rows, first = [], None
    for i, cap in enumerate(BUCKET_CAPS):
        step = statistics.median(_slowest(ranks, lambda r, i=i: r["configs"][i]["step_s"]))
        c0 = ranks[0]["configs"][i]
        stats = list(zip(*(r["configs"][i]["comm_stats"] for r in ranks)))  # per step, every rank's
        # per step, the rank that reached the end of backward last: its wait is communication
        # alone; the other ranks' also counts the wait for that rank (skew between ranks)
        wait = statistics.median(min(s["wait_s"] for s in step_stats) for step_stats in stats)
        wait_skew = statistics.median(max(s["wait_s"] for s in step_stats) for step_stats in stats)
        exposed = statistics.median(min(s["backward_end_s"] for s in step_stats) for step_stats in stats)
        alone = statistics.median(min(vals) for vals in zip(*(r["configs"][i]["allreduce_alone_s"] for r in ranks)))
        overlap = min(1.0, max(0.0, 1.0 - exposed / alone)) if alone > 0 else 0.0
        extra = {"batch": batch * world, "batch_per_rank": batch, "world": world, "bucket_cap_mb": cap,
                 "buckets": stats[0][0]["buckets"], "bytes_per_step": stats[0][0]["bytes"],
                 "bucket_bytes": "/".join(str(b) for b in c0["bucket_bytes"]),
                 "wait_ms": 1e3 * wait, "wait_with_skew_ms": 1e3 * wait_skew,
                 "exposed_comm_ms": 1e3 * exposed, "allreduce_alone_ms": 1e3 * alone, "overlap": overlap,
                 "overlap_how": "1 - exposed_comm / allreduce_alone, clipped to [0, 1]",
                 "no_sync_ms": 1e3 * no_sync, "comm_overhead_ms": 1e3 * (step - no_sync),
                 "dp_vs_1proc_no_sync": single_s / no_sync, "baseline": baseline, "tolerance": tolerance,
                 **errors}
        buckets = f"{extra['buckets']} bucket{'s' if extra['buckets'] > 1 else ''}"
        rows.append(Result("data parallel", f"{label} vs {single_label}, cap {cap:g} MB: {buckets}",
                           step, single_s, unit="img/s", extra=extra))
        first = first or step
    if all("torch_step_s" in r for r in ranks):
        torch_s = statistics.median(_slowest(ranks, lambda r: r["torch_step_s"]))
        rows.append(Result("data parallel", f"{label} vs torch DDP {label.split()[1]}", first, torch_s,
                           unit="img/s", extra={"batch": batch * world, "batch_per_rank": batch, "world": world,
                                                "baseline": "torch DistributedDataParallel of torch_twin, "
                                                            "default buckets", "ours_vs_1proc": single_s / first}))
    return rows


def _case(quick: bool):
    return "tiny" if OPTIONS["tiny"] else "quick" if quick else "full"


def _inputs(batch_global, out: Path):
    """Initial ResNet-8 weights (seed 0) and the global batch, saved for the ranks."""
    gk.manual_seed(0)
    model = resnet8()
    state = {k: gk.backend.to_numpy(v.data).copy() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch_global, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, batch_global)
    np.savez(out / "inputs.npz", x=x, y=y, **{f"state/{k}": v for k, v in state.items()})
    return state, x, y


def _single_step_time(state, x, y, device, repeat, warmup, sync=None) -> float:
    """(a): this process, one step at the whole batch, median of ``repeat`` after ``warmup``."""
    model = resnet8()
    model.load_state_dict(state)
    opt = gk.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    gx, gy = gk.tensor(x, device=device), gk.tensor(y, device=device)

    def step():
        opt.zero_grad()
        F.cross_entropy(model(gx), gy).backward()
        opt.step()
        if sync is not None:
            sync()

    return timeit(step, warmup=warmup, repeat=repeat)


def run(quick: bool = False, repeat: int = 10) -> list[Result]:
    """(b) 2 processes x 1 thread vs (a) 1 process x 2 threads on the CPU (see the module
    docstring); on a GPU ``run_gpu``."""
    if gk.get_backend() == "cuda":
        return run_gpu(quick, repeat)
    case = _case(quick)
    batch, world = BATCH[case], 2
    warmup = 1 if case == "tiny" else 2 if case == "quick" else 3
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gk-dp-") as tmp:
        out = Path(tmp)
        state, x, y = _inputs(batch * world, out)
        refs = {"": _reference_step(state, x, y, world, "cpu", np.float64),
                "syncbn_": _reference_step(state, x, y, 1, "cpu", np.float64)}
        spec = {"inputs": str(out / "inputs.npz"), "batch": batch, "threads": 1, "warmup": warmup,
                "steps": repeat, "reps": max(repeat, 5), "bucket_caps": list(BUCKET_CAPS), "torch_ddp": True,
                "device": "cpu", "check_dtype": "float64"}
        ranks = _launch(spec, world, out, "cpu", timeout_s=600)
    errors = _check(ranks, refs, GRAD_TOL, PARAM_TOL, PARAM_ATOL)
    single = _single_step_time(state, x, y, "cpu", repeat, warmup)
    label = f"ResNet-8 {world}x1 b{batch}"
    rows = _rows(ranks, single, batch, world, label, f"1x{world} b{batch * world}", errors,
                 f"ours, 1 process x {world} threads, batch {batch * world}",
                 f"grads {GRAD_TOL:g} and params {PARAM_TOL:g} x max|tensor| (float64 check step)")
    worst = ", ".join(f"{k[4:-11]} {v:.2g}" for k, v in errors.items())
    print(f"data_parallel: {time.perf_counter() - t0:.1f} s; checks passed (max error / max|tensor|: {worst})",
          file=sys.stderr)
    return rows


def run_gpu(quick: bool = False, repeat: int = 10) -> list[Result]:
    """n >= 2 GPUs: n ranks (nccl, one GPU each, batch GPU_BATCH per GPU) vs this process
    on one GPU at batch n x GPU_BATCH. Written, not yet run (no 2-GPU machine)."""
    import torch  # noqa: PLC0415

    n = torch.cuda.device_count()
    if n < 2:
        print(f"data_parallel: not measured on a GPU: data-parallel entry needs >= 2 GPUs (found {n})",
              file=sys.stderr)
        return []
    batch = 16 if OPTIONS["tiny"] else GPU_BATCH
    with tempfile.TemporaryDirectory(prefix="gk-dp-") as tmp:
        out = Path(tmp)
        state, x, y = _inputs(batch * n, out)
        refs = {"": _reference_step(state, x, y, n, "cuda"), "syncbn_": _reference_step(state, x, y, 1, "cuda")}
        spec = {"inputs": str(out / "inputs.npz"), "batch": batch, "threads": 1, "warmup": 3, "steps": max(repeat, 5),
                "reps": max(repeat, 5), "bucket_caps": list(BUCKET_CAPS), "torch_ddp": True, "device": "cuda"}
        ranks = _launch(spec, n, out, "cuda", timeout_s=600)
    errors = _check(ranks, refs, GPU_TOL, GPU_TOL, GPU_PARAM_ATOL)
    single = _single_step_time(state, x, y, "cuda", max(repeat, 5), 3, sync=torch.cuda.synchronize)
    return _rows(ranks, single, batch, n, f"ResNet-8 {n}xGPU b{batch}", f"1xGPU b{batch * n}", errors,
                 f"ours, 1 GPU, batch {batch * n}", f"{GPU_TOL:g} x max|tensor| (TF32)")
