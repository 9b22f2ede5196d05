"""Training through the Triton kernels on the interpreter gives the NumPy backend's losses."""

from __future__ import annotations

import json
import re

import pytest

from gpukernels import backend
from models import train

# e2e: whole trainings, ~90 s of interpreter time; `make test` runs them in its main pass
# only, not again under triton 3.6 (whose kernel tests run there, every one of them)
pytestmark = [pytest.mark.skipif(not backend.interpreting(), reason="needs TRITON_INTERPRET=1"),
              pytest.mark.e2e]


def _run(capsys, device, model="cnn", train_size=96, batch=32):
    code = train.main(["--device", device, "--model", model, "--dataset", "digits",
                       "--train-size", str(train_size), "--test-size", "64", "--batch-size", str(batch),
                       "--epochs", "1", "--log-every", "1", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    losses = [float(v) for v in re.findall(r"step \d+ loss (\S+)", out)]
    return losses, json.loads(out.strip().splitlines()[-1])


def test_device_interpret_gives_the_cpu_losses_for_3_steps(capsys):
    cpu, cpu_summary = _run(capsys, "cpu")
    interp, summary = _run(capsys, "interpret")
    assert len(cpu) == len(interp) == 3
    assert summary["device"] == "interpret" and cpu_summary["device"] == "cpu"
    for step, (a, b) in enumerate(zip(cpu, interp), start=1):
        assert abs(a - b) <= 1e-4, f"step {step}: cpu loss {a}, interpret loss {b}"
    assert backend.last_dispatch["conv"] == "gpukernels.triton.conv"


def test_resnet8_trains_2_steps_under_interpret_with_the_cpu_losses(capsys):
    # ResNet-8 (conv, batch norm, ReLU, residual adds, global average pool, linear) on
    # 8x8 digits: the same layers as on 32x32 CIFAR at an interpreter-sized cost
    cpu, _ = _run(capsys, "cpu", "resnet8", train_size=32, batch=16)
    interp, _ = _run(capsys, "interpret", "resnet8", train_size=32, batch=16)
    assert len(cpu) == len(interp) == 2
    for step, (a, b) in enumerate(zip(cpu, interp), start=1):
        assert abs(a - b) <= 1e-4, f"step {step}: cpu loss {a}, interpret loss {b}"


def test_fp16_training_of_the_digits_cnn_reaches_the_fp32_accuracy_band(capsys):
    # 80 steps of batch 4 (the interpreter costs ~0.08 s per image and step): about half
    # way to the CNN's final accuracy, where a precision problem would show as a gap
    argv = ["--model", "cnn", "--dataset", "digits", "--train-size", "320", "--test-size", "200",
            "--batch-size", "4", "--lr", "0.01", "--epochs", "1", "--no-progress"]

    def summary(*extra):
        assert train.main(argv + list(extra)) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    fp32 = summary("--device", "cpu", "--precision", "fp32")
    fp16 = summary("--device", "interpret", "--precision", "fp16")
    assert fp16["precision"] == "fp16" and backend.last_dispatch["conv"] == "gpukernels.triton.conv"
    assert fp32["test_accuracy"] >= 0.4, fp32  # well above chance (0.1): the run learns
    assert abs(fp16["test_accuracy"] - fp32["test_accuracy"]) <= 0.05, (fp32, fp16)
    assert abs(fp16["train_loss"] - fp32["train_loss"]) <= 0.05 * fp32["train_loss"], (fp32, fp16)
