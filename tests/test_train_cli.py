"""The training CLI (``python -m models.train``): its summary line, exact resume from a
checkpoint, and a one-line error (never a traceback, never a lost checkpoint) for each
thing a user can get wrong."""

from __future__ import annotations

import gzip
import json
import pickle

import numpy as np
import pytest

import gpukernels as gk
from models import train

SUMMARY_KEYS = ("model", "dataset", "device", "epochs", "test_accuracy", "train_loss",
                "seconds", "images_per_second")


def cli(capsys, *argv):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    code = train.main([*map(str, argv), "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, *needles):
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def write_cifar(folder, n_train=(24, 24, 24, 24, 24), n_test=20, seed=0):
    """Fake CIFAR-10 python batches in the real format (a dict per pickle file)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, n in zip(names, (*n_train, n_test)):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return folder


def write_idx(path, array, magic):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_mnist(folder, n_train=40, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), 0x803)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n), 0x801)
    return folder


# ----------------------------------------------------------------------------- happy paths


def test_default_run_is_make_train_and_reaches_97_percent_on_digits(capsys):
    code, out, err = cli(capsys)  # exactly what `make train` runs
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert set(SUMMARY_KEYS) <= set(summary)
    assert (summary["model"], summary["dataset"], summary["device"]) == ("cnn", "digits", "cpu")
    assert summary["epochs"] == 30 and summary["images_per_second"] > 0
    assert summary["test_accuracy"] >= 0.97, summary
    assert out.count("  test acc ") == 30  # one line per epoch


def test_plot_and_summary_on_synthetic_data(capsys, tmp_path):
    png = tmp_path / "curves.png"
    code, out, err = cli(capsys, "--model", "mlp", "--dataset", "synthetic", "--epochs", 2,
                         "--train-size", 128, "--plot", png)
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["dataset"] == "synthetic" and summary["epochs"] == 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("model", ["cnn", "resnet8"])
def test_mnist_and_cifar_from_files(capsys, tmp_path, model):
    for dataset, folder in (("mnist", write_mnist(tmp_path / "mnist")),
                            ("cifar10", write_cifar(tmp_path / "cifar"))):
        code, out, err = cli(capsys, "--model", model, "--dataset", dataset, "--data-dir", folder,
                             "--epochs", 1, "--batch-size", 16)
        assert code == 0, err
        assert json.loads(out.strip().splitlines()[-1])["dataset"] == dataset


@pytest.mark.parametrize("model, dataset, optimizer", [
    ("cnn", "digits", "adam"),
    ("resnet8", "cifar10", "momentum"),  # batch norm statistics, crop/flip augmentation
])
def test_resume_gives_the_weights_of_an_uninterrupted_run(capsys, tmp_path, model, dataset, optimizer):
    args = ["--model", model, "--dataset", dataset, "--optimizer", optimizer,
            "--train-size", 96, "--batch-size", 32, "--seed", 3]
    if dataset == "cifar10":
        args += ["--data-dir", write_cifar(tmp_path / "cifar")]
    whole, part = tmp_path / "whole.ckpt", tmp_path / "part.ckpt"
    assert cli(capsys, *args, "--epochs", 3, "--checkpoint", whole)[0] == 0
    assert cli(capsys, *args, "--epochs", 1, "--checkpoint", part)[0] == 0
    code, out, err = cli(capsys, *args, "--epochs", 3, "--checkpoint", part, "--resume")
    assert code == 0, err
    assert "resumed from" in out
    a, b = (gk.load(p) for p in (whole, part))  # safetensors files, never pickles
    assert a["epoch"] == b["epoch"] == 3
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        np.testing.assert_array_equal(a["model"][key].numpy(), b["model"][key].numpy(), err_msg=key)
    for index, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            np.testing.assert_array_equal(value, b["optimizer"]["state"][index][name])
    assert a["history"] == b["history"]


# ----------------------------------------------------------------------------- errors


def test_missing_and_empty_data_directories(capsys, tmp_path):
    missing = tmp_path / "nope"
    one_line_error(*cli(capsys, "--dataset", "mnist", "--data-dir", missing)[::2], str(missing))
    (tmp_path / "empty").mkdir()
    one_line_error(*cli(capsys, "--dataset", "cifar10", "--data-dir", tmp_path / "empty")[::2], "empty")
    one_line_error(*cli(capsys, "--dataset", "mnist")[::2], "--data-dir")


def test_truncated_and_wrong_format_files(capsys, tmp_path):
    folder = write_mnist(tmp_path / "mnist")
    images = folder / "train-images-idx3-ubyte.gz"
    data = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(data[: len(data) // 2]))
    one_line_error(*cli(capsys, "--dataset", "mnist", "--data-dir", folder)[::2], "truncated")

    folder = write_cifar(tmp_path / "cifar")
    (folder / "data_batch_2").write_bytes(b"this is not a pickle")
    one_line_error(*cli(capsys, "--dataset", "cifar10", "--data-dir", folder)[::2], "data_batch_2")


@pytest.mark.parametrize("flag, value", [("--model", "vgg16"), ("--optimizer", "lion"),
                                         ("--dataset", "imagenet"), ("--device", "tpu")])
def test_unknown_names_are_one_line_usage_errors(capsys, flag, value):
    with pytest.raises(SystemExit) as exit_:
        train.main([flag, value])
    assert exit_.value.code == 2
    one_line_error(2, capsys.readouterr().err, flag, value)


@pytest.mark.parametrize("argv, needle", [
    (["--epochs", "0"], "--epochs"),
    (["--lr", "-1"], "--lr"),
    (["--resume"], "--checkpoint"),
    (["--checkpoint", "/no/such/dir/x.ckpt"], "/no/such/dir"),
])
def test_bad_values_are_usage_errors_before_any_work(capsys, argv, needle):
    with pytest.raises(SystemExit):
        train.main(argv)
    one_line_error(2, capsys.readouterr().err, needle)


def test_diverging_loss_stops_and_keeps_the_last_good_checkpoint(capsys, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    args = ["--optimizer", "sgd", "--train-size", 128, "--checkpoint", ckpt]
    assert cli(capsys, *args, "--epochs", 1, "--lr", 0.1)[0] == 0
    good = ckpt.read_bytes()
    code, _, err = cli(capsys, *args, "--epochs", 3, "--lr", 1e6, "--resume")
    line = one_line_error(code, err, "epoch 2, step", "last good checkpoint", str(ckpt))
    assert "diverged" in line or "nan" in line or "inf" in line
    assert ckpt.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["run.ckpt"]  # no temp file left behind


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_lr_1e6_stops_at_the_step_it_diverges(capsys, tmp_path, optimizer):
    ckpt = tmp_path / "run.ckpt"
    code, out, err = cli(capsys, "--optimizer", optimizer, "--lr", 1e6, "--epochs", 3,
                         "--checkpoint", ckpt)
    one_line_error(code, err, "at epoch 1, step", "lower --lr")
    assert not ckpt.exists() and "epoch   1/3" not in out


def test_resume_refuses_a_checkpoint_of_another_run_or_a_broken_file(capsys, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    assert cli(capsys, "--epochs", 1, "--train-size", 64, "--checkpoint", ckpt)[0] == 0
    one_line_error(*cli(capsys, "--model", "mlp", "--epochs", 2, "--train-size", 64,
                        "--checkpoint", ckpt, "--resume")[::2], "--model cnn")
    one_line_error(*cli(capsys, "--epochs", 1, "--train-size", 64, "--checkpoint", ckpt,
                        "--resume")[::2], "already done 1")
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    one_line_error(*cli(capsys, "--epochs", 2, "--train-size", 64, "--checkpoint", ckpt,
                        "--resume")[::2], "not a readable checkpoint")
    one_line_error(*cli(capsys, "--epochs", 2, "--checkpoint", tmp_path / "none.ckpt",
                        "--resume")[::2], "no checkpoint")


def test_a_device_this_build_lacks_is_a_one_line_error(capsys):
    code, _, err = cli(capsys, "--device", "cuda", "--epochs", 1)
    if gk.cuda_available():
        pytest.skip("a GPU is present: --device cuda is expected to work")
    one_line_error(code, err, "--device cuda")
