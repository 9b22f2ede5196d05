"""The budgeted GPU run (scripts/gpu_session.sh) rehearsed on this CPU machine with
``--dry-run``: the plan's order, the files it leaves in $OUT (at most the 8 a GPU machine
returns, each written as its step ends), the compile estimate, and the budget: a step
that overruns is stopped and leaves the earlier steps' files, and the steps with no time
left are skipped with a line naming them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = {"session.log", "env.json", "doctor.log", "headline.json", "headline.md", "smoke.log", "rest.log",
         "results.tar.gz"}

pytestmark = pytest.mark.slow


def _dry_run(out: Path, **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("TRITON_INTERPRET", "GPUKERNELS_BACKEND", "GPUKERNELS_TEST_GPU")}
    full_env.update(OUT=str(out), PYTHON=sys.executable, **env)
    return subprocess.run(["bash", "scripts/gpu_session.sh", "--dry-run"], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=400)


def _starts(log: str) -> list[str]:
    return re.findall(r"\] START (\S+)", log)


def test_the_dry_run_runs_the_plan_in_order_and_writes_the_files(tmp_path):
    result = _dry_run(tmp_path, GPUKERNELS_COMMIT="0123abc")
    log = (tmp_path / "session.log").read_text()
    assert result.returncode == 0, log + result.stderr[-3000:]
    assert _starts(log) == ["env", "doctor", "headline", "smoke", "rest-tests", "rest-bench"]
    assert {p.name for p in tmp_path.iterdir()} == FILES  # <= 8: what a GPU machine returns
    env = json.loads((tmp_path / "env.json").read_text())
    assert env["commit"] == "0123abc" and env["dry_run"] and env["autotune"] == "fast"
    assert "doctor: " in (tmp_path / "doctor.log").read_text() and "all ok" in (tmp_path / "doctor.log").read_text()
    headline = json.loads((tmp_path / "headline.json").read_text())
    assert headline["commit"] == "0123abc"
    assert list(headline["run"]["entries"]) == ["train", "conv", "cross_entropy", "optim"]
    assert {r["entry"].split()[0] for r in headline["rows"]} >= {"train", "conv2d", "cross_entropy", "optim"}
    m = re.search(r"compile estimate for the real smoke selection \((\d+) tests\).*= (\d+) compiles.*~(\d+) cold", log)
    assert m and int(m.group(1)) > 20 and int(m.group(3)) == 3 * int(m.group(2)) > 0, log
    assert "done in" in log and "failed: none; skipped: none" in log


def test_a_step_that_overruns_keeps_the_earlier_files_and_the_rest_are_skipped(tmp_path):
    # 48 s: the doctor step gets what is left after the env step (~2 s) less the 20 s of
    # grace and reserve, ~26 s, over its least of 20 s, and then sleeps until stopped
    result = _dry_run(tmp_path, GPU_BUDGET_S="48", GPU_SESSION_OVERRUN="doctor")
    log = (tmp_path / "session.log").read_text()
    assert result.returncode == 1, log
    assert json.loads((tmp_path / "env.json").read_text())["dry_run"]  # the step before it
    assert re.search(r"END doctor: TIMED OUT", log) and "SIGINT" in log
    for later in ("headline", "smoke", "rest-tests", "rest-bench"):
        assert re.search(rf"SKIPPED {later}: \d+ s of the 48 s budget left", log), log
    assert "headline.json" not in {p.name for p in tmp_path.iterdir()}
    assert len(list(tmp_path.iterdir())) <= 8
