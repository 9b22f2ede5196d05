"""Data-parallel training on 2 CPU processes (gloo): 2 ranks x batch B give what 1 process x
batch 2B gives, in float64 to 1e-10, after several steps (parameters, optimizer state,
batch-norm running statistics); no_sync accumulation equals one big batch; the sampler's
shards cover the data once per epoch; a rank that dies or stalls ends the job with an
error on every rank instead of a hang.

The ranks run tests/distributed/worker.py with the env:// variables torchrun sets; the
single process runs the same functions here."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.distributed import worker
from tests.helpers import assert_close

pytest.importorskip("torch.distributed")

WORKER = pathlib.Path(worker.__file__)
ROOT = WORKER.parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(scenario, out_dir, world=2, timeout_s=20, wait_s=120, kill_after=None):
    """Start ``world`` ranks of the worker; returns ``(return codes, stderr texts, seconds)``.
    ``kill_after``: rank 0 is awaited alone, the others are then killed (a stalled rank)."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                   WORLD_SIZE=str(world), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1",
                   GPUKERNELS_DIST_TIMEOUT=str(timeout_s), GPUKERNELS_BACKEND="numpy",
                   PYTHONPATH=str(ROOT))
        env.pop("TRITON_INTERPRET", None)
        procs.append(subprocess.Popen([sys.executable, str(WORKER), scenario, str(out_dir)], env=env, cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    t0 = time.perf_counter()
    try:
        if kill_after is not None:
            procs[0].wait(timeout=wait_s)
            for p in procs[1:]:
                p.kill()
        outs = [p.communicate(timeout=wait_s) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [p.returncode for p in procs], [e for _, e in outs], time.perf_counter() - t0


def error_lines(text):
    return [line for line in text.splitlines() if line.startswith("error:")]


def load(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def check_ranks_ok(codes, errs):
    assert codes == [0, 0], "ranks failed:\n" + "\n".join(errs)


def assert_same_training(dist, single, atol=1e-10):
    keys = sorted(k for k in single if k.startswith(("param/", "state/")))
    assert keys and keys == sorted(k for k in dist if k.startswith(("param/", "state/")))
    for k in keys:
        assert_close(dist[k], single[k], atol=atol, rtol=0, name=k)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_two_ranks_of_batch_b_equal_one_process_of_batch_2b(optimizer, tmp_path):
    codes, errs, _ = launch(f"train-{optimizer}", tmp_path)
    check_ranks_ok(codes, errs)
    r0, r1 = load(tmp_path / "rank0.npz"), load(tmp_path / "rank1.npz")
    assert int(r0["buckets"]) > 1  # several buckets in flight, not one all-reduce at the end
    for k in r0:  # the replicas are bit-identical: every rank applied the same averaged step
        np.testing.assert_array_equal(r0[k], r1[k], err_msg=k)
    single = worker.train(optimizer, 0, 2, distributed=False)
    # SyncBatchNorm's running statistics are in the param/ keys (state_dict buffers)
    assert any("running_var" in k for k in single)
    assert_same_training(r0, single)


def test_no_sync_accumulation_equals_one_big_batch(tmp_path):
    codes, errs, _ = launch("no-sync", tmp_path)
    check_ranks_ok(codes, errs)
    r0, r1 = load(tmp_path / "rank0.npz"), load(tmp_path / "rank1.npz")
    # inside no_sync nothing was reduced: each rank kept its own gradient
    assert np.abs(r0["local_grad"] - r1["local_grad"]).max() > 1e-3
    np.testing.assert_array_equal(r0["grad"], r1["grad"])
    single = worker.no_sync(0, 2, distributed=False)
    assert_close(r0["grad"], single["grad"], atol=1e-10, rtol=0, name="accumulated grad")
    assert_same_training(r0, single)


def test_distributed_sampler_shards_cover_the_dataset_once_per_epoch(tmp_path):
    codes, errs, _ = launch("sampler", tmp_path)
    check_ranks_ok(codes, errs)
    r0, r1 = load(tmp_path / "rank0.npz"), load(tmp_path / "rank1.npz")
    for epoch in ("epoch0", "epoch1"):
        both = np.concatenate([r0[epoch], r1[epoch]])
        assert len(r0[epoch]) == len(r1[epoch]) == 12  # 23 padded to 24: equal shards
        assert sorted(set(both.tolist())) == list(range(23))
        assert len(both) - len(set(both.tolist())) == 1  # the one padding index
    assert not np.array_equal(r0["epoch0"], r0["epoch1"])  # set_epoch reshuffles
    np.testing.assert_array_equal(r0["loader"], r0["epoch1"])  # the loader follows its sampler


def test_a_crashed_rank_ends_every_rank_with_an_error(tmp_path):
    codes, errs, seconds = launch("crash", tmp_path)
    assert codes[0] != 0 and codes[1] != 0
    assert error_lines(errs[1]) == ["error: rank 1: RuntimeError: rank 1 fails on purpose"]
    lines = error_lines(errs[0])
    assert len(lines) == 1 and lines[0].startswith("error: rank 0:"), errs[0]
    assert seconds < 60


def test_a_stalled_rank_times_the_collective_out(tmp_path):
    codes, errs, seconds = launch("stall", tmp_path, timeout_s=3, kill_after=True)
    assert codes[0] != 0
    lines = error_lines(errs[0])
    assert len(lines) == 1 and "Timed out" in lines[0], errs[0]
    assert seconds < 60
