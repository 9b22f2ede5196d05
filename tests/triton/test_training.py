"""Training through the Triton kernels on the interpreter gives the NumPy backend's losses."""

from __future__ import annotations

import json
import re

import pytest

from gpukernels import backend
from models import train

pytestmark = pytest.mark.skipif(not backend.interpreting(), reason="needs TRITON_INTERPRET=1")


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
