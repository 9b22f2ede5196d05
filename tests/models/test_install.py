"""The training CLI for pip users: ``models`` ships in the wheel, the console script
``gpukernels-train`` is declared and resolves to ``models.train.main``, and a run from a
directory outside the repository finds the package and the digits data through the
installed packages, not through the repository path.

(`make test` reinstalls the editable package whenever pyproject.toml changes, so the
installed metadata checked here is the current pyproject's.)"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models import train

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "gpukernels-train"
TARGET = "models.train:main"


def _pyproject() -> dict:
    try:
        import tomllib  # noqa: PLC0415 - Python >= 3.11
    except ImportError:  # pragma: no cover - Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _resolve(target: str):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _outside_env() -> dict:
    """The environment of a user's shell: no PYTHONPATH pointing into the repository."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_pyproject_declares_the_console_script_and_ships_models():
    from setuptools import find_packages  # noqa: PLC0415 - what the wheel build runs

    project = _pyproject()
    assert project["project"]["scripts"] == {SCRIPT: TARGET}
    assert _resolve(TARGET) is train.main
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    shipped = set(find_packages(str(ROOT), include=include))
    assert {"gpukernels", "gpukernels.nn", "models"} <= shipped
    assert not {p for p in shipped if p.split(".")[0] in ("tests", "benchmarks", "scripts", "docker")}


def test_the_installed_package_resolves_the_console_script_to_main():
    points = importlib.metadata.entry_points(group="console_scripts", name=SCRIPT)
    assert [p.value for p in points] == [TARGET], (
        f"the installed gpukernels declares {[p.value for p in points]}: reinstall it "
        "(`make test` does when pyproject.toml changes; by hand: pip install -e .)")
    (point,) = points
    assert point.dist.name == "gpukernels"
    assert point.load() is train.main


def test_models_and_the_digits_data_are_found_outside_the_repository(tmp_path):
    probe = (
        "import json, sys\n"
        "import models.train\n"
        "from gpukernels.data import load_dataset\n"
        "(x, y), (xt, yt) = load_dataset('digits')\n"
        "print(json.dumps({'path': sys.path, 'images': len(x) + len(xt), 'shape': list(x.shape[1:])}))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=_outside_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert str(ROOT) not in found["path"] and "" in found["path"]  # '' is tmp_path, the cwd
    assert found["images"] == 1797 and found["shape"] == [1, 8, 8]


def test_the_console_script_trains_from_another_directory(tmp_path):
    script = Path(sys.executable).with_name(SCRIPT)
    assert script.exists(), f"{script} is missing: reinstall gpukernels (make test does)"
    usage = subprocess.run([str(script), "--help"], cwd=tmp_path, env=_outside_env(),
                           capture_output=True, text=True, timeout=120)
    assert usage.returncode == 0 and usage.stdout.startswith(f"usage: {SCRIPT} "), usage.stdout[:200]
    result = subprocess.run([str(script), "--model", "mlp", "--epochs", "1", "--train-size", "64",
                             "--test-size", "32", "--no-progress", "--checkpoint", "run.ckpt"],
                            cwd=tmp_path, env=_outside_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["model"], summary["dataset"], summary["epochs"]) == ("mlp", "digits", 1)
    assert (tmp_path / "run.ckpt").is_file()


def test_digits_without_scikit_learn_is_one_error_line_naming_the_extra(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import raises ImportError
    code = train.main(["--epochs", "1", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 1
    assert err.strip().splitlines() == ["error: --dataset digits needs scikit-learn, which ships the digits "
                                        "images: pip install 'gpukernels[train]' (or scikit-learn)"]
