"""``torchrun --standalone --nproc_per_node 2 -m models.train``: the training CLI data-parallel
on 2 CPU processes (gloo): it trains the digits CNN into the one-process accuracy band,
only rank 0 speaks, a resumed run continues exactly, a checkpoint of another world size
is refused, and a rank killed mid-run ends the job with one error line, not a hang."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import gpukernels as gk
from models import train

pytest.importorskip("torch.distributed")
pytest.importorskip("sklearn")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def torchrun(*argv, nproc=2, timeout=180):
    """Run the CLI under torchrun (``python -m torch.distributed.run``); (code, stdout, stderr)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", GPUKERNELS_BACKEND="numpy", PYTHONPATH=str(ROOT))
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "models.train", "--no-progress", *map(str, argv)]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def errors(text):
    return [line for line in text.splitlines() if line.startswith("error:")]


def test_digits_cnn_trains_data_parallel_to_the_one_process_band():
    code, out, err = torchrun("--model", "cnn", "--dataset", "digits")
    assert code == 0, err[-3000:]
    summaries = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(summaries) == 1, out  # rank 0 alone prints
    s = summaries[0]
    assert s["world_size"] == 2 and s["global_batch_size"] == 64
    assert s["test_accuracy"] >= 0.97, s
    assert out.count("epoch  30/30") == 1
    assert "2 ranks x batch 32 = global batch 64" in out
    assert not errors(err)


def test_resume_continues_exactly_and_needs_the_same_world_size(tmp_path, capsys):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    common = ("--model", "cnn", "--dataset", "digits", "--train-size", "512", "--optimizer", "sgd")
    assert torchrun(*common, "--epochs", "3", "--checkpoint", a)[0] == 0
    assert torchrun(*common, "--epochs", "1", "--checkpoint", b)[0] == 0
    code, out, err = torchrun(*common, "--epochs", "3", "--checkpoint", b, "--resume")
    assert code == 0, err[-3000:]
    assert "resumed from" in out
    whole, resumed = gk.load(str(a)), gk.load(str(b))
    assert resumed["epoch"] == whole["epoch"] == 3
    assert resumed["history"] == whole["history"]
    for k, v in whole["model"].items():
        np.testing.assert_array_equal(resumed["model"][k].numpy(), v.numpy(), err_msg=k)
    # one process may not continue a 2-process run: its shards and batches differ
    assert train.main([*common, "--epochs", "4", "--checkpoint", str(b), "--resume", "--no-progress"]) == 1
    assert "written by a run of 2 process(es), this run has 1" in capsys.readouterr().err


def _ranks_of(launcher_pid):
    """{rank: pid} of the workers torchrun started (their environment holds RANK)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            env = pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[1]) == launcher_pid:  # the parent pid
            values = dict(e.split(b"=", 1) for e in env if b"=" in e)
            if b"RANK" in values:
                found[int(values[b"RANK"])] = int(pid)
    return found


@pytest.mark.skipif(not pathlib.Path("/proc/self/environ").exists(), reason="needs /proc")
def test_a_killed_rank_ends_the_job_with_one_error_line():
    env = dict(os.environ, OMP_NUM_THREADS="1", GPUKERNELS_BACKEND="numpy", PYTHONPATH=str(ROOT))
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "models.train", "--model", "cnn", "--dataset", "digits", "--epochs", "500", "--no-progress",
           "--dist-timeout", "30"]
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stdout:
            if line.startswith("epoch   2/"):
                break
        ranks = _ranks_of(p.pid)
        assert set(ranks) == {0, 1}, ranks
        start = time.perf_counter()
        os.kill(ranks[1], signal.SIGKILL)  # as the OOM killer would
        out, err = p.communicate(timeout=90)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode != 0
    assert time.perf_counter() - start < 60
    lines = errors(err)
    assert len(lines) == 1 and lines[0].startswith("error: rank 0: "), err[-3000:]
    assert "epoch 500/500" not in out
