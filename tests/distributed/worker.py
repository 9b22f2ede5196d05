"""One rank of the data-parallel tests (tests/distributed/test_ddp.py starts 2 of them with
torch's env:// variables, as torchrun would), or, with WORLD_SIZE unset, the single
process they are compared with.

    python tests/distributed/worker.py SCENARIO OUT_DIR

Scenarios (float64, NumPy backend): ``train-sgd`` / ``train-adam`` (3 steps of a small
CNN with SyncBatchNorm under DistributedDataParallel; rank r takes its slice of each
global batch), ``no-sync`` (2 micro-batches accumulated under no_sync then one synced),
``sampler`` (the DistributedSampler shard of each epoch), ``crash`` (rank 1 raises after
one step; rank 0 must fail, not hang), ``stall`` (rank 1 sleeps instead: rank 0's
collective must time out). Rank 0 writes ``OUT_DIR/result.npz`` (every
rank writes ``rank<r>.npz``)."""

from __future__ import annotations

import os
import sys
import time

import numpy as np

import gpukernels as gk
import gpukernels.distributed as dist
from gpukernels import nn

B = 4  # examples per rank and step; the single process takes world * B
STEPS = 3


def make_model():
    gk.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(5 * 3 * 3, 7, bias=False), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 3))
    # no bias before a batch norm: its exact gradient is 0, and Adam would turn the
    # rounding noise of two summation orders into steps of +-lr
    return model.double()


def data(steps, world):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((steps, world * B, 2, 6, 6))
    y = rng.integers(0, 3, (steps, world * B))
    return x, y


def shard(a, rank, world):
    """Rank ``rank``'s examples of a global batch (contiguous slices: the single process
    sees the ranks' examples in rank order)."""
    n = a.shape[0] // world
    return a[rank * n:(rank + 1) * n]


def snapshot(model, opt) -> dict:
    out = {f"param/{k}": v.numpy().copy() for k, v in model.state_dict().items()}
    for i, (p, st) in enumerate((p, opt.state[p]) for g in opt.param_groups for p in g["params"]):
        for name, value in st.items():
            out[f"state/{i}/{name}"] = np.asarray(gk.backend.to_numpy(value) if hasattr(value, "shape") else value)
    return out


def train(kind, rank, world, distributed):
    model = make_model()
    if distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=0.0005)  # ~500 B: several buckets
    else:
        net = model
    opt = (gk.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if kind == "sgd"
           else gk.optim.Adam(model.parameters(), lr=0.01))
    xs, ys = data(STEPS, world)
    for s in range(STEPS):
        x, y = (shard(xs[s], rank, world), shard(ys[s], rank, world)) if distributed else (xs[s], ys[s])
        opt.zero_grad()
        loss = gk.functional.cross_entropy(net(gk.tensor(x)), gk.tensor(y))
        loss.backward()
        opt.step()
    out = snapshot(model, opt)
    if distributed:
        out["buckets"] = np.array(len(net.buckets))
    return out


def no_sync(rank, world, distributed):
    model = make_model()
    if distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = nn.parallel.DistributedDataParallel(model)
    else:
        net = model
    opt = gk.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    xs, ys = data(2, world)  # two micro-batches
    out = {}
    for m in range(2):
        x, y = (shard(xs[m], rank, world), shard(ys[m], rank, world)) if distributed else (xs[m], ys[m])
        ctx = net.no_sync() if distributed and m == 0 else _null()
        with ctx:
            loss = gk.functional.cross_entropy(net(gk.tensor(x)), gk.tensor(y))
            loss.backward()
        if m == 0:  # after the unsynchronised backward: this rank's own gradient
            out["local_grad"] = model[0].weight.grad.numpy().copy()
    out["grad"] = model[0].weight.grad.numpy().copy()
    opt.step()
    out.update(snapshot(model, opt))
    return out


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def sampler(rank, world):
    s = gk.data.DistributedSampler(23, shuffle=True, seed=3)
    out = {}
    for epoch in range(2):
        s.set_epoch(epoch)
        out[f"epoch{epoch}"] = np.array(list(s))
    loader = gk.data.DataLoader(np.arange(23.0)[:, None], np.arange(23), batch_size=4, sampler=s)
    out["loader"] = np.concatenate([y.numpy() for _, y in loader])
    return out


def crash(rank, world, stall=False):
    model = nn.parallel.DistributedDataParallel(make_model())
    opt = gk.optim.SGD(model.parameters(), lr=0.1)
    xs, ys = data(3, world)
    for s in range(3):
        if s == 1 and rank == 1:
            if stall:
                time.sleep(120)  # alive but silent: rank 0's next collective must time out
            raise RuntimeError("rank 1 fails on purpose")
        loss = gk.functional.cross_entropy(model(gk.tensor(shard(xs[s], rank, world))),
                                           gk.tensor(shard(ys[s], rank, world)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {}


def main(scenario, out_dir):
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group()
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, int(os.environ.get("TEST_WORLD", "2"))
    try:
        if scenario.startswith("train-"):
            out = train(scenario[6:], rank, world, distributed)
        elif scenario == "no-sync":
            out = no_sync(rank, world, distributed)
        elif scenario == "sampler":
            out = sampler(rank, world)
        elif scenario in ("crash", "stall"):
            out = crash(rank, world, stall=scenario == "stall")
        else:
            raise SystemExit(f"unknown scenario {scenario!r}")
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"), **out)
        if distributed:
            dist.barrier()
    except Exception as e:  # one line per rank, then a failing exit: what the test reads
        print(f"error: rank {rank}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
