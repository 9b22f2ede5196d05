"""``python -m gpukernels.doctor``: both commands pass on this machine, and a planted
wrong (or raising, or silently replaced) kernel makes it fail, naming the op."""

from __future__ import annotations

import importlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpukernels import backend, doctor, kernels

ROOT = Path(__file__).resolve().parents[1]
needs_interpreter = pytest.mark.skipif(not backend.interpreting(), reason="needs TRITON_INTERPRET=1")


def _doctor(*args, env_extra=None, code=None, timeout=120):
    """Run the doctor in a fresh process with neither TRITON_INTERPRET nor
    GPUKERNELS_BACKEND inherited (tests/conftest.py sets the former in this one)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "GPUKERNELS_BACKEND")}
    env.update(env_extra or {})
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "gpukernels.doctor", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _row(out: str, op: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith(op + "  ")]
    assert len(lines) == 1, f"no single table row for {op!r} in:\n{out}"
    return lines[0]


def _assert_all_ok(proc, backend_name):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for check in doctor.CHECKS:
        assert " ok " in _row(proc.stdout, check.name) + " ", _row(proc.stdout, check.name)
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(f"doctor: {len(doctor.CHECKS)} checks, all ok on backend {backend_name}"), last


def test_default_command_passes_and_prints_versions_and_the_table():
    proc = _doctor()
    expected = "cuda" if backend.cuda_available() else "numpy"
    _assert_all_ok(proc, expected)
    for label in ("python:", "numpy:", "triton:", "torch:", "cupy:", "cuda driver:", "cuda runtime:",
                  "gpu:", "backend:"):
        assert label in proc.stdout
    if expected == "numpy":
        assert "no GPU" in proc.stdout and "reference, torch" in proc.stdout
        assert "cpu.conv" in _row(proc.stdout, "conv2d+bias+relu")


def test_interpret_command_runs_the_triton_kernels_and_passes():
    proc = _doctor("--interpret")
    _assert_all_ok(proc, "interpret")
    assert "--interpret asked" in proc.stdout and "TRITON_INTERPRET=1" in proc.stdout
    for check in doctor.CHECKS:
        assert f"triton.{check.family}" in _row(proc.stdout, check.name)


def test_interpret_after_compiled_kernels_were_imported_is_a_clear_error():
    proc = _doctor(code="import sys, gpukernels.triton.activation\nfrom gpukernels import doctor\n"
                        "sys.exit(doctor.main(['--interpret']))")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "already imported" in proc.stderr and "fresh process" in proc.stderr


def test_every_triton_family_has_a_check():
    assert set(kernels.FAMILIES) <= {c.family for c in doctor.CHECKS}
    assert len({c.name for c in doctor.CHECKS}) == len(doctor.CHECKS)


@needs_interpreter
def test_a_wrong_triton_kernel_is_a_mismatch(monkeypatch, capsys):
    activation = importlib.import_module("gpukernels.triton.activation")
    right = activation.relu_forward
    monkeypatch.setattr(activation, "relu_forward", lambda x: right(x) + 1e-3)
    assert doctor.main(["--interpret", "--only", "relu,sigmoid"]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH: " in _row(out, "relu") and " vs reference" in _row(out, "relu")
    assert " ok " in _row(out, "sigmoid") + " "
    assert out.strip().splitlines()[-1].startswith("doctor: 1 of 2 checks FAILED on backend interpret")
    assert "relu (MISMATCH)" in out.strip().splitlines()[-1]


def test_a_wrong_cpu_kernel_is_caught_by_the_reference_on_numpy(monkeypatch, capsys):
    cpu = importlib.import_module("gpukernels.cpu.activation")
    right = cpu.relu_forward
    monkeypatch.setattr(cpu, "relu_forward", lambda x: right(x) * 1.5)
    assert doctor.main(["--backend", "numpy", "--only", "relu"]) == 1
    assert "MISMATCH: out vs reference" in _row(capsys.readouterr().out, "relu")


def test_a_wrong_reference_kernel_is_caught_by_torch_on_numpy(monkeypatch, capsys):
    reference = importlib.import_module("gpukernels.reference.activation")
    right = reference.relu_backward  # the numpy backend's small-array relu_backward calls it
    monkeypatch.setattr(reference, "relu_backward", lambda g, y: right(g, y) * 1.5)
    assert doctor.main(["--backend", "numpy", "--only", "relu"]) == 1
    row = _row(capsys.readouterr().out, "relu")
    assert "MISMATCH: grad x vs torch" in row  # the reference agrees with itself: torch does not


def test_a_raising_kernel_is_an_error_row_with_the_exception(monkeypatch, capsys):
    pool = importlib.import_module("gpukernels.cpu.pool")

    def broken(*args, **kwargs):
        raise ValueError("planted failure\nsecond line")

    monkeypatch.setattr(pool, "max_pool2d_backward", broken)
    assert doctor.main(["--backend", "numpy", "--only", "pool"]) == 1
    out = capsys.readouterr().out
    assert "ERROR: ValueError: planted failure" in _row(out, "max_pool2d 3/2/1")
    assert "second line" not in out
    assert " ok " in _row(out, "avg_pool2d 3/2/1") + " "


@needs_interpreter
def test_a_silent_fallback_to_numpy_is_an_error(monkeypatch, capsys):
    def fallback(device="cpu"):
        module = importlib.import_module("gpukernels.cpu.loss")
        backend.last_dispatch["loss"] = module.__name__
        return module

    monkeypatch.setattr(kernels.loss, "for_device", fallback)
    assert doctor.main(["--interpret", "--only", "mse_loss"]) == 1
    row = _row(capsys.readouterr().out, "mse_loss")
    assert "ERROR: ran gpukernels.cpu.loss, expected gpukernels.triton.loss" in row


def test_json_report(tmp_path, capsys):
    path = tmp_path / "doctor.json"
    assert doctor.main(["--backend", "numpy", "--json", str(path), "--seed", "5"]) == 0
    report = json.loads(path.read_text())
    assert report["ok"] is True and report["backend"] == "numpy" and report["seed"] == 5
    assert [r["op"] for r in report["rows"]] == [c.name for c in doctor.CHECKS]
    assert all(r["verdict"] == "ok" for r in report["rows"])
    assert {"python", "numpy", "triton", "torch", "cupy", "cuda driver", "gpus"} <= set(report["versions"])
    assert report["summary"] == capsys.readouterr().out.strip().splitlines()[-1]


def test_the_doctor_leaves_the_backend_as_it_found_it():
    assert backend.get_backend() == "numpy"
    doctor.main(["--backend", "numpy", "--only", "relu"])
    assert backend.get_backend() == "numpy"


def test_rich_table_on_a_terminal():
    pytest.importorskip("rich")

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    rows = [doctor.Row("relu", "activation", "cpu.activation", "float64", "reference", 0.0, 1e-10,
                       "float64", "ok"),
            doctor.Row("tanh", "activation", verdict="ERROR", detail="ValueError: planted")]
    out = Terminal()
    doctor.print_table(rows, file=out, width=160)
    text = out.getvalue()
    for words in ("cpu.activation", "1e-10 (float64)", "ERROR: ValueError: planted", "max error", "\x1b["):
        assert words in text
    plain = io.StringIO()
    doctor.print_table(rows, file=plain)
    assert plain.getvalue() == doctor.format_table(rows) + "\n"
