"""One rank of the data-parallel benchmark (``benchmarks/bench_data_parallel.py`` starts
``WORLD_SIZE`` of them with the env:// variables torchrun sets: ``MASTER_ADDR``,
``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

    python -m benchmarks.dp_worker SPEC.json OUT_DIR

``SPEC.json`` says: ``inputs`` (an .npz with the model's initial ``state/<key>`` arrays and
the global batch ``x``, ``y``), ``batch`` (examples per rank: rank r takes
``x[r * batch:(r + 1) * batch]``), ``threads`` (1: our CPU kernels stay on the calling
thread, BLAS and torch get one thread; the parent also sets ``OMP_NUM_THREADS`` and
``OPENBLAS_NUM_THREADS`` before the process starts), ``warmup``, ``steps``, ``reps`` (of
the all-reduce-alone timing), ``bucket_caps`` (``bucket_cap_mb`` of each timed DDP
configuration), ``torch_ddp`` (also time torch's DDP on the torch twin), ``device``
(``cpu`` or ``cuda``), ``check_dtype`` (the correctness steps' dtype, default float32;
the timed steps are float32).

What each rank does, in this order, and writes to ``OUT_DIR/rank<r>.json`` (timings) and
``OUT_DIR/rank<r>.npz`` (parameters and averaged gradients after the first step):

1. one training step (zero_grad, forward, cross-entropy, backward, SGD momentum step)
   under ``gk.nn.parallel.DistributedDataParallel`` in ``check_dtype``, with plain batch
   norm and then with SyncBatchNorm: the correctness check's steps;
2. for each bucket cap: a fresh DDP of a fresh model, ``warmup`` steps, a barrier, then
   ``steps`` timed steps, each with its ``comm_stats``; then the same buckets' sizes
   all-reduced alone (``op="avg"``, synchronous, one after the other, outside any
   backward), ``reps`` times after a barrier each;
3. ``steps`` steps whose forward and backward run under ``no_sync()`` (no gradient
   all-reduce; the buffers' broadcast at each forward stays);
4. with ``torch_ddp``: torch's ``DistributedDataParallel`` of ``torch_twin`` of the same
   initial model, same shard, same optimizer, its first loss and its step times.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

LR, MOMENTUM = 0.05, 0.9  # bench_train's "momentum" optimizer


def _limit_threads(threads: int):
    """Threads of everything that computes in this process: torch, BLAS (threadpoolctl),
    and our CPU kernels (the ``cpu_threads`` knob: ``serial`` for one thread). Returns the
    context that holds the knob."""
    import torch  # noqa: PLC0415

    from gpukernels import knobs  # noqa: PLC0415

    torch.set_num_threads(threads)
    try:
        import threadpoolctl  # noqa: PLC0415

        threadpoolctl.threadpool_limits(limits=threads)  # process-wide, kept
    except ImportError:
        pass
    return knobs.override(cpu_threads="serial") if threads == 1 else contextlib.nullcontext()


def main(spec_path: str, out_dir: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    with _limit_threads(spec["threads"]):
        result, arrays = _run(spec)
    out = Path(out_dir)
    np.savez(out / f"rank{result['rank']}.npz", **arrays)
    (out / f"rank{result['rank']}.json").write_text(json.dumps(result))


def _run(spec: dict):
    import torch  # noqa: PLC0415

    import gpukernels as gk  # noqa: PLC0415
    import gpukernels.distributed as dist  # noqa: PLC0415
    from gpukernels import functional as F  # noqa: PLC0415
    from gpukernels import nn  # noqa: PLC0415
    from models.resnet import resnet8  # noqa: PLC0415

    on_gpu = spec["device"] == "cuda"
    gk.set_backend("cuda" if on_gpu else "numpy")
    dist.init_process_group()
    rank, world = dist.get_rank(), dist.get_world_size()
    with np.load(spec["inputs"]) as f:
        state = {k[len("state/"):]: f[k] for k in f.files if k.startswith("state/")}
        lo, hi = rank * spec["batch"], (rank + 1) * spec["batch"]
        x_np, y_np = f["x"][lo:hi], f["y"][lo:hi]
    device = "cuda" if on_gpu else "cpu"
    x, y = gk.tensor(x_np, device=device), gk.tensor(y_np, device=device)

    def sync():
        if on_gpu:
            torch.cuda.synchronize()

    def fresh(cap, sync_bn=False, dtype=np.float32):
        model = resnet8().to(dtype=dtype)
        if sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.load_state_dict(state)  # made on the backend's device
        ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=cap)
        return model, ddp, gk.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)

    def step(ddp, opt, quiet=False):
        opt.zero_grad()
        with ddp.no_sync() if quiet else contextlib.nullcontext():
            loss = F.cross_entropy(ddp(x), y)
            loss.backward()
        opt.step()
        return loss

    def timed(fn, n):
        times = []
        for _ in range(n):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        return times

    result = {"rank": rank, "world": world, "configs": []}
    # 1. the correctness steps (default buckets, spec["check_dtype"]): plain batch norm,
    # then SyncBatchNorm
    arrays = {}
    check_dtype = np.dtype(spec.get("check_dtype", "float32"))
    cx = gk.tensor(x_np.astype(check_dtype), device=device)
    for prefix, sync_bn in (("", False), ("syncbn_", True)):
        model, ddp, opt = fresh(spec["bucket_caps"][0], sync_bn, check_dtype)
        opt.zero_grad()
        loss = F.cross_entropy(ddp(cx), y)
        loss.backward()
        arrays.update({f"{prefix}grad/{n}": gk.backend.to_numpy(p.grad.data).copy()
                       for n, p in model.named_parameters()})
        opt.step()
        arrays.update({f"{prefix}param/{n}": gk.backend.to_numpy(p.data).copy() for n, p in model.named_parameters()})
        result[f"{prefix}first_loss"] = float(loss.item())

    # 2. synchronised steps, per bucket cap, and the same buckets all-reduced alone
    for cap in spec["bucket_caps"]:
        model, ddp, opt = fresh(cap)
        for _ in range(spec["warmup"]):
            step(ddp, opt)
        dist.barrier()
        times, stats = [], []
        for _ in range(spec["steps"]):
            times += timed(lambda: step(ddp, opt), 1)
            stats.append(dict(ddp.comm_stats))
        xp = gk.backend.xp_for_device(device)
        bufs = [xp.zeros(nbytes // 4, dtype=np.float32) for nbytes, _ in ddp.buckets]
        alone = []
        for _ in range(spec["reps"]):
            dist.barrier()
            alone += timed(lambda: [dist.all_reduce(b, op="avg") for b in bufs], 1)
        result["configs"].append({"bucket_cap_mb": cap, "step_s": times, "comm_stats": stats,
                                  "bucket_bytes": [nbytes for nbytes, _ in ddp.buckets],
                                  "allreduce_alone_s": alone})
    # 3. the same step without communication (gradients stay local)
    for _ in range(max(1, spec["warmup"] - 1)):
        step(ddp, opt, quiet=True)
    dist.barrier()
    result["no_sync_step_s"] = timed(lambda: step(ddp, opt, quiet=True), spec["steps"])

    # 4. torch's DDP of the torch twin, same shard, same optimizer
    if spec["torch_ddp"]:
        from benchmarks.bench_train import _torch_step_fn  # noqa: PLC0415
        from benchmarks.torch_twin import torch_twin  # noqa: PLC0415

        model = resnet8()
        model.load_state_dict(state)
        twin = torch_twin(model)
        tx, ty = torch.from_numpy(x_np), torch.from_numpy(y_np)
        if on_gpu:
            twin, tx, ty = twin.cuda(), tx.cuda(), ty.cuda()
        local = [int(os.environ.get("LOCAL_RANK", "0"))] if on_gpu else None
        tddp = torch.nn.parallel.DistributedDataParallel(twin, device_ids=local)
        topt = torch.optim.SGD(tddp.parameters(), lr=LR, momentum=MOMENTUM)

        tstep = _torch_step_fn(lambda a, b: torch.nn.functional.cross_entropy(tddp(a), b), topt, tx, ty)

        result["torch_first_loss"] = float(tstep().item())
        for _ in range(spec["warmup"] - 1):
            tstep()
        dist.barrier()
        result["torch_step_s"] = timed(tstep, spec["steps"])
    dist.barrier()
    dist.destroy_process_group()
    result["median_step_s"] = statistics.median(result["configs"][0]["step_s"])
    return result, arrays


if __name__ == "__main__":
    try:
        main(sys.argv[1], sys.argv[2])
    except Exception as e:  # one line per rank, then a failing exit: what the entry reports
        print(f"error: rank {os.environ.get('RANK', '?')}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        raise
