"""Checkpoints in safetensors (gpukernels/serialization.py, models/train.py):

- ``gk.save`` / ``gk.load`` round-trip module and optimizer state (float32, float64,
  bf16 as safetensors' BF16), PyTorch-shaped, and PyTorch reads them
  (``safetensors.torch.load_file`` into the twin of the model) and back;
- loading never unpickles; a crafted, truncated, corrupted (one flipped bit) or
  malformed checkpoint ends the CLI with one ``error:`` line naming the file, and nothing
  is trained on;
- writes are atomic (temp file, fsync, rename, fsync of the directory): a full disk
  leaves the previous checkpoint intact, stale temp files of a killed run are removed;
- faults: SIGKILL at random points during checkpoint writes, resumed each time, ends with
  the parameters of an uninterrupted run.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import gpukernels as gk
from gpukernels import serialization
from gpukernels.serialization import CheckpointError
from models import train
from tests.test_train_cli import cli, one_line_error

REPO = Path(__file__).resolve().parents[1]
# the smallest run the CLI tests use: the digits CNN, 64 images, 2 steps an epoch
RUN = ["--train-size", 64, "--batch-size", 32, "--seed", 1]


def small_model(dtype=gk.float32):
    gk.manual_seed(0)
    return train._make_model("cnn", (1, 8, 8), 10).to(dtype)


def train_steps(model, optimizer, steps=3, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        x = gk.tensor(rng.standard_normal((8, 1, 8, 8)), dtype=model.state_dict()["0.weight"].dtype)
        y = gk.tensor(rng.integers(0, 10, 8))
        optimizer.zero_grad()
        gk.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def header_of(path):
    data = Path(path).read_bytes()
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + size]), size


def rewrite_metadata(path, edit):
    """Apply ``edit(meta, table)`` to the gpukernels metadata and the tensor table of the
    file at ``path`` and write it back with a valid SHA-256 (what a crafted file can do:
    the checksum detects corruption, not intent)."""
    data = Path(path).read_bytes()
    header, size = header_of(path)
    meta = header["__metadata__"]
    del meta["sha256"]
    tree = json.loads(meta["gpukernels"])
    edit(tree, header)
    meta["gpukernels"] = json.dumps(tree)
    buffer = data[8 + size:]
    meta["sha256"] = serialization._checksum([buffer], header)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    Path(path).write_bytes(len(head).to_bytes(8, "little") + head + buffer)


# ----------------------------------------------------------------------------- the format


@pytest.mark.parametrize("dtype", [gk.float32, gk.float64])
def test_module_and_optimizer_state_round_trip_exactly(tmp_path, dtype):
    model = small_model(dtype)
    optimizer = gk.optim.Adam(model.parameters(), lr=1e-2, amsgrad=True, weight_decay=1e-4)
    train_steps(model, optimizer)
    path = tmp_path / "state.safetensors"
    gk.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3}, path)

    back = gk.load(path)
    assert back["epoch"] == 3
    own = model.state_dict()
    assert list(back["model"]) == list(own)  # PyTorch-shaped: names in order, Tensors
    for key, value in own.items():
        assert isinstance(back["model"][key], gk.Tensor) and back["model"][key].dtype == dtype
        np.testing.assert_array_equal(back["model"][key].numpy(), value.numpy(), err_msg=key)
    saved = optimizer.state_dict()
    assert back["optimizer"]["param_groups"] == saved["param_groups"]  # betas stay a tuple
    assert isinstance(back["optimizer"]["param_groups"][0]["betas"], tuple)
    assert list(back["optimizer"]["state"]) == list(saved["state"]) == list(range(6))  # int keys
    for index, state in saved["state"].items():
        assert back["optimizer"]["state"][index].keys() == state.keys()
        for name, value in state.items():
            got = back["optimizer"]["state"][index][name]
            if name == "step":
                assert got == value == 3 and type(got) is int
            else:
                assert isinstance(got, np.ndarray) and got.dtype == value.dtype
                np.testing.assert_array_equal(got, value)

    # a fresh model and optimizer loaded from the file step exactly as the originals
    model2 = small_model(dtype)
    optimizer2 = gk.optim.Adam(model2.parameters(), lr=1.0)
    model2.load_state_dict(back["model"])
    optimizer2.load_state_dict(back["optimizer"])
    train_steps(model, optimizer, 2, seed=5)
    train_steps(model2, optimizer2, 2, seed=5)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(model2.state_dict()[key].numpy(), value.numpy(), err_msg=key)


def test_bf16_is_stored_as_safetensors_bf16_and_torch_reads_it(tmp_path):
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    values = np.array([[1.5, -2.25, 3.0e-3], [65504.0, -0.0, 1e-30]], np.float32)
    state = {"w": gk.tensor(values).bfloat16(), "b": gk.tensor(values[0]).bfloat16()}
    path = tmp_path / "bf16.safetensors"
    gk.save(state, path)
    header, _ = header_of(path)
    assert header["w"]["dtype"] == header["b"]["dtype"] == "BF16" and header["w"]["shape"] == [2, 3]

    theirs = safetensors_torch.load_file(path)
    assert theirs["w"].dtype == torch.bfloat16
    assert torch.equal(theirs["w"], torch.from_numpy(values).bfloat16())

    back = gk.load(path)
    assert back["w"].dtype == gk.bfloat16
    np.testing.assert_array_equal(back["w"].numpy(), state["w"].numpy())  # the same bits

    # and a bf16 file written by PyTorch loads as gpukernels bf16
    x = torch.randn(3, 4).bfloat16()
    safetensors_torch.save_file({"x": x}, tmp_path / "torch.safetensors")
    got = gk.load(tmp_path / "torch.safetensors")["x"]
    assert got.dtype == gk.bfloat16
    np.testing.assert_array_equal(got.numpy(), x.view(torch.int16).numpy().view(np.uint16))


def test_pytorch_twin_loads_a_gpukernels_checkpoint_and_back(capsys, tmp_path):
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    from benchmarks.torch_twin import torch_twin  # noqa: PLC0415 - needs torch

    ckpt = tmp_path / "run.ckpt"
    assert cli(capsys, *RUN, "--epochs", 1, "--checkpoint", ckpt)[0] == 0
    model = small_model()
    model.load_state_dict(gk.load(ckpt)["model"])
    twin = torch_twin(model)
    with torch.no_grad():  # forget the copied weights: the file must bring them
        for p in twin.parameters():
            p.zero_()

    # the trained weights, read by PyTorch from the CLI's checkpoint (under "model.")
    theirs = safetensors_torch.load_file(ckpt)
    ours = list(model.state_dict())
    names = [k for k in twin.state_dict() if not k.endswith("num_batches_tracked")]
    assert len(names) == len(ours)
    twin.load_state_dict({t: theirs[f"model.{g}"] for g, t in zip(ours, names)})
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    with gk.no_grad():
        expected = model(gk.tensor(x)).numpy()
    np.testing.assert_allclose(twin(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-5, atol=1e-5)

    # and back: PyTorch changes the weights, saves with safetensors, gpukernels loads them
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5).add_(0.01)
    twin_state = twin.state_dict()
    safetensors_torch.save_file({g: twin_state[t].contiguous() for g, t in zip(ours, names)},
                                tmp_path / "twin.safetensors")
    model.load_state_dict(gk.load(tmp_path / "twin.safetensors"))
    for g, t in zip(ours, names):
        np.testing.assert_array_equal(model.state_dict()[g].numpy(), twin_state[t].numpy(), err_msg=g)
    with gk.no_grad():
        mine = model(gk.tensor(x)).numpy()
    np.testing.assert_allclose(mine, twin(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_save_refuses_what_it_would_have_to_pickle(tmp_path):
    with pytest.raises(TypeError, match="cannot save a object"):
        gk.save({"x": object()}, tmp_path / "x.st")
    with pytest.raises(ValueError, match="two entries map to the tensor name 'a.b'"):
        gk.save({"a.b": np.zeros(1), "a": {"b": np.zeros(1)}}, tmp_path / "x.st")
    assert not list(tmp_path.iterdir())


class _Payload:
    """Unpickling this creates ``marker``: what a crafted checkpoint could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_load_never_unpickles(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"args": _Payload(marker)}))
    with pytest.raises(CheckpointError, match="pickle") as info:
        gk.load(path)
    assert not marker.exists()
    assert str(path) in str(info.value)


def test_no_single_flipped_bit_anywhere_loads(tmp_path):
    path = tmp_path / "small.st"
    gk.save({"w": gk.tensor(np.arange(4, dtype=np.float32)), "state": {0: {"step": 3}},
             "epoch": 3, "betas": (0.9, 0.999)}, path)
    good = path.read_bytes()
    assert gk.load(io.BytesIO(good))["epoch"] == 3
    loaded = []
    for i in range(len(good)):
        for bit in range(8):
            bad = bytearray(good)
            bad[i] ^= 1 << bit
            f = io.BytesIO(bad)
            f.name = str(path)
            try:
                gk.load(f)
                loaded.append((i, bit))
            except CheckpointError as exc:
                assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
    assert loaded == []


def test_truncated_corrupted_and_malformed_files(tmp_path):
    path = tmp_path / "s.st"
    gk.save({"w": gk.tensor(np.arange(300, dtype=np.float32)), "epoch": 3}, path)
    good = path.read_bytes()
    for n in (0, 5, 8, 100, len(good) // 2, len(good) - 1):
        path.write_bytes(good[:n])
        with pytest.raises(CheckpointError, match="truncated|empty"):
            gk.load(path)

    bad = bytearray(good)
    bad[-600] ^= 0x10  # in the tensor bytes
    path.write_bytes(bad)
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        gk.load(path)

    def version(meta, table):
        meta["version"] = 99

    def missing(meta, table):
        meta["tree"]["w"]["__tensor__"] = "v"

    def extra(meta, table):
        meta["tree"]["w"] = None

    for edit, needle in ((version, "format version 99 is not one this gpukernels reads"),
                         (missing, "names tensor 'v', which the file does not hold"),
                         (extra, "holds 1 tensor.* its metadata does not name: w")):
        path.write_bytes(good)
        rewrite_metadata(path, edit)
        with pytest.raises(CheckpointError, match=needle):
            gk.load(path)


# ----------------------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_a_full_disk_leaves_the_previous_file_intact(tmp_path, monkeypatch, where):
    path = tmp_path / "s.st"
    gk.save({"w": np.zeros(1000)}, path)
    good = path.read_bytes()
    no_space = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if where == "write":
        def full(f, chunks):
            f.write(bytes(chunks[0]))  # a partial temp file, then the disk is full
            raise no_space
        monkeypatch.setattr(serialization, "_write_all", full)
    else:
        def fsync(fd):
            raise no_space
        monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError) as info:
        gk.save({"w": np.ones(1000)}, path)
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["s.st"]  # the temp file is gone


def test_the_directory_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    gk.save({"w": np.zeros(3)}, tmp_path / "s.st")
    assert synced == ["file", "dir"]


def _dead_pid():
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    path = tmp_path / "run.ckpt"
    stale = [f".run.ckpt.{_dead_pid()}-abcd1234.tmp", ".run.ckpt.k3j4h5g6.tmp"]  # + older name
    kept = [f".run.ckpt.{os.getppid()}-abcd1234.tmp",  # a live process is writing it
            f".run.ckpt.{os.getpid()}-abcd1234.tmp",  # ours (include_own=False)
            ".run.ckpt.bak.abcd1234.tmp", "other.tmp"]  # other files' temps
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"partial")
    gk.save({"w": np.zeros(2)}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["run.ckpt"])
    assert serialization.remove_stale_temps(path, include_own=True) == [str(tmp_path / kept[1])]


# ----------------------------------------------------------------------------- the CLI


@pytest.fixture
def ckpt(capsys, tmp_path):
    """A checkpoint of one epoch of the small run."""
    path = tmp_path / "run.ckpt"
    assert cli(capsys, *RUN, "--epochs", 1, "--checkpoint", path)[0] == 0
    return path


def resume_fails(capsys, path, *needles):
    """--resume from ``path`` is one error line naming it (and ``needles``), nothing is
    trained and the file is unchanged."""
    before = path.read_bytes()
    code, out, err = cli(capsys, *RUN, "--epochs", 2, "--checkpoint", path, "--resume")
    line = one_line_error(code, err, str(path), *needles)
    assert "Traceback" not in err and "epoch " not in out and "resumed" not in out
    assert path.read_bytes() == before
    return line


def edit_checkpoint(path, edit):
    """Load, ``edit(state)`` and save again: a well-formed file (valid SHA-256) whose
    content is wrong."""
    state = gk.load(path)
    edit(state)
    gk.save(state, path)


def test_cli_refuses_a_crafted_pickle_without_running_it(capsys, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "run.ckpt"
    path.write_bytes(pickle.dumps({"format": ("gpukernels.models.train", 1), "args": _Payload(marker)}))
    resume_fails(capsys, path, "not a readable checkpoint", "pickle")
    assert not marker.exists()


def test_cli_refuses_a_torch_save_file(capsys, tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "run.ckpt"
    torch.save({"model": {"0.weight": torch.zeros(2)}}, path)
    resume_fails(capsys, path, "zip archive")


def test_cli_refuses_a_truncated_checkpoint(capsys, ckpt):
    good = ckpt.read_bytes()
    for n in (0, 7, 100, len(good) // 2, len(good) - 1):
        ckpt.write_bytes(good[:n])
        resume_fails(capsys, ckpt, "not a readable checkpoint", "truncated" if n else "empty")


def test_cli_refuses_a_checkpoint_with_one_flipped_bit(capsys, ckpt):
    good = ckpt.read_bytes()
    header, size = header_of(ckpt)
    start, end = header["model.0.weight"]["data_offsets"]
    in_weights = 8 + size + (start + end) // 2
    in_metadata = good.index(b'\\"epoch\\":1') + len(b'\\"epoch\\":')  # "1" -> "0"
    for where in (in_weights, in_metadata):
        bad = bytearray(good)
        bad[where] ^= 0x01
        ckpt.write_bytes(bad)
        resume_fails(capsys, ckpt, "not a readable checkpoint", "SHA-256 mismatch")


def test_cli_refuses_another_format_version(capsys, ckpt):
    good = ckpt.read_bytes()
    rewrite_metadata(ckpt, lambda meta, table: meta.update(version=2))
    resume_fails(capsys, ckpt, "format version 2 is not one this gpukernels reads")
    ckpt.write_bytes(good)
    edit_checkpoint(ckpt, lambda s: s.update(format=("gpukernels.models.train", 3)))
    resume_fails(capsys, ckpt, "checkpoint format (3,)", "reads format 2")


@pytest.mark.parametrize("edit, needles", [
    (lambda s: s["model"].update({"0.weight": gk.zeros(16, 1, 5, 5)}),
     ("model tensor 0.weight has shape (16, 1, 5, 5), this model's has (16, 1, 3, 3)",)),
    (lambda s: s["model"].update({"0.weight": s["model"]["0.weight"].to(gk.float64)}),
     ("model tensor 0.weight has dtype float64",)),
    (lambda s: s["model"].pop("5.bias"), ("model tensors do not fit", "missing 5.bias")),
    (lambda s: s["model"].update({"6.weight": gk.zeros(3)}), ("unexpected 6.weight",)),
    (lambda s: s["model"]["0.bias"].data.__setitem__(0, np.nan), ("NaN or infinite",)),
    (lambda s: s.pop("rng"), ("lacks rng",)),
    (lambda s: s["args"].pop("seed"), ("arguments lack seed",)),
    (lambda s: s["args"].update(lr=-1.0), ("learning rate -1.0, not a positive number",)),
    (lambda s: s["optimizer"]["param_groups"][0].update(lr=-1.0),
     ("optimizer group 0 has learning rate -1.0",)),
    (lambda s: s["optimizer"]["param_groups"][0].update(betas=(0.9, 1.5)), ("does not fit this run", "beta")),
    (lambda s: s["optimizer"]["param_groups"][0].pop("eps"), ("does not fit this run", "eps")),
    (lambda s: s["optimizer"]["state"][0].update(exp_avg=np.zeros(5, np.float32)),
     ("does not fit this run", "shape")),
    (lambda s: s["optimizer"]["state"][0].update(step=-3), ("0.step is -3",)),
    (lambda s: s["optimizer"]["state"].update({9: {}}), ("does not fit this run", "9")),
    (lambda s: s.update(epoch="1"), ("epoch '1', not a count",)),
    (lambda s: s["history"]["train_loss"].append(1.0), ("history is not 1 epochs",)),
    (lambda s: s["rng"]["state"].update(state="x"), ("library RNG state is malformed",)),
    (lambda s: s["loader"]["rng"].update(bit_generator="MT19937"), ("loader RNG state is malformed",)),
    (lambda s: s["args"].update(model={"a": gk.zeros(2)}), ("was written with --model",)),
    (lambda s: s.clear(), ("not a checkpoint of models.train",)),
], ids=["wrong-shape", "wrong-dtype", "missing-key", "extra-key", "nan", "missing-rng",
        "missing-arg", "lr=-1", "group-lr=-1", "beta", "missing-eps", "state-shape",
        "negative-step", "unknown-param", "epoch-str", "history", "rng", "loader-rng",
        "arg-tensor", "empty"])
def test_cli_refuses_a_malformed_checkpoint(capsys, ckpt, edit, needles):
    edit_checkpoint(ckpt, edit)
    resume_fails(capsys, ckpt, *needles)


def test_cli_full_disk_keeps_the_previous_checkpoint(capsys, ckpt, monkeypatch):
    good = ckpt.read_bytes()

    def full(f, chunks):
        f.write(bytes(chunks[0]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(serialization, "_write_all", full)
    code, out, err = cli(capsys, *RUN, "--epochs", 2, "--checkpoint", ckpt, "--resume")
    one_line_error(code, err, f"cannot write checkpoint {ckpt}", os.strerror(errno.ENOSPC),
                   "the previous checkpoint is intact")
    assert ckpt.read_bytes() == good
    assert [p.name for p in ckpt.parent.iterdir()] == [ckpt.name]
    monkeypatch.undo()
    code, out, err = cli(capsys, *RUN, "--epochs", 2, "--checkpoint", ckpt, "--resume")
    assert code == 0 and "resumed from" in out, err


def test_cli_removes_stale_temp_files_at_start(capsys, ckpt):
    stale = [ckpt.parent / f".run.ckpt.{_dead_pid()}-abcd1234.tmp",
             ckpt.parent / f".run.ckpt.{os.getpid()}-abcd1234.tmp"]  # a restarted container's pid
    for p in stale:
        p.write_bytes(b"partial checkpoint")
    code, out, err = cli(capsys, *RUN, "--epochs", 2, "--checkpoint", ckpt, "--resume")
    assert code == 0, err
    for p in stale:
        assert f"removed {p}" in out and not p.exists()
    assert [p.name for p in ckpt.parent.iterdir()] == [ckpt.name]


# ----------------------------------------------------------------------------- faults

# Runs models.train with a checkpoint writer that writes in 8 slices with a pause after
# each (a slow disk), and prints WRITE to stdout as each write starts.
_DRIVER = textwrap.dedent("""
    import sys, time
    from gpukernels import serialization

    def slow(f, chunks):
        print("WRITE", flush=True)
        data = b"".join(bytes(c) for c in chunks)
        step = len(data) // 8 + 1
        for i in range(0, len(data), step):
            f.write(data[i:i + step])
            f.flush()
            time.sleep(%(pause)r)

    serialization._write_all = slow
    from models.train import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_sigkill_during_checkpoint_writes_resumes_to_the_uninterrupted_result(tmp_path):
    pause, epochs, kills = 0.015, 4, 3
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER % {"pause": pause})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [*map(str, RUN), "--epochs", str(epochs), "--no-progress"]

    def start(ckpt, resume):
        return subprocess.Popen([sys.executable, str(driver), *args, "--checkpoint", str(ckpt),
                                 *(["--resume"] if resume else [])], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    whole = tmp_path / "whole" / "run.ckpt"
    whole.parent.mkdir()
    reference = start(whole, False)  # the uninterrupted run, alongside

    ckpt = tmp_path / "killed" / "run.ckpt"
    ckpt.parent.mkdir()
    rng = random.Random(14)
    done = -1  # the epoch of the checkpoint on disk (0: none yet)
    for attempt in range(kills + 1):
        done = gk.load(ckpt)["epoch"] if ckpt.exists() else 0
        if done == epochs:
            break
        proc = start(ckpt, resume=done > 0)
        if attempt < kills:
            # kill during (or just after) the k-th write of this attempt
            target, seen = rng.randint(1, min(2, epochs - done)), 0
            for line in proc.stdout:
                seen += line.strip() == "WRITE"
                if seen == target:
                    time.sleep(rng.uniform(0, 10 * pause))  # the write takes ~8 pauses
                    proc.send_signal(signal.SIGKILL)
                    break
        out, err = proc.communicate(timeout=60)
        if attempt < kills:
            assert proc.returncode == -signal.SIGKILL, (out, err)
            # what is on disk is always a whole checkpoint: the last good one
            if ckpt.exists():
                assert gk.load(ckpt)["epoch"] in (done + target - 1, done + target)
        else:
            assert proc.returncode == 0, err
            assert "Traceback" not in err
            if done:
                assert f"after epoch {done}" in out
    assert gk.load(ckpt)["epoch"] == epochs
    assert [p.name for p in ckpt.parent.iterdir()] == ["run.ckpt"]  # stale temps removed

    out, err = reference.communicate(timeout=60)
    assert reference.returncode == 0, err
    a, b = gk.load(whole), gk.load(ckpt)
    assert a["history"] == b["history"] and a["rng"] == b["rng"] and a["loader"] == b["loader"]
    for key in a["model"]:
        np.testing.assert_array_equal(a["model"][key].numpy(), b["model"][key].numpy(), err_msg=key)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    for index, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            np.testing.assert_array_equal(value, b["optimizer"]["state"][index][name])
