"""A walk over the training CLI's bad-argument combinations: every one ends with
exactly one ``error:`` line on stderr and a non-zero exit code, never a traceback.

(The CLI's happy paths and checkpoint errors are in tests/test_train_cli.py.)"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

from models import train

ROOT = Path(__file__).resolve().parents[1]

# argv (``{tmp}``: a scratch directory) -> words the error line must hold
BAD_ARGUMENTS = [
    # a model and a dataset that do not fit: which model needs which input
    ("--model fastcifar --dataset digits", ("--model fastcifar needs 32x32", "--dataset digits has 1x8x8")),
    # bad numbers
    ("--lr -1", ("--lr",)), ("--lr 0", ("--lr",)), ("--lr nan", ("--lr",)), ("--lr inf", ("--lr",)),
    ("--lr abc", ("--lr", "abc")), ("--batch-size 0", ("--batch-size",)), ("--batch-size -3", ("--batch-size",)),
    ("--batch-size 1.5", ("--batch-size", "1.5")), ("--epochs 0", ("--epochs",)), ("--epochs -1", ("--epochs",)),
    ("--weight-decay -1", ("--weight-decay",)), ("--weight-decay nan", ("--weight-decay",)),
    ("--train-size 0", ("--train-size",)), ("--test-size 0", ("--test-size",)),
    ("--log-every -1", ("--log-every",)), ("--seed -1", ("--seed", "-1")), ("--seed x", ("--seed",)),
    # unknown names and flags
    ("--model vgg16", ("--model", "vgg16")), ("--dataset imagenet", ("--dataset", "imagenet")),
    ("--optimizer lion", ("--optimizer", "lion")), ("--device tpu", ("--device", "tpu")),
    ("--precision fp8", ("--precision", "fp8")), ("--bogus-flag", ("--bogus-flag",)), ("--lr", ("--lr",)),
    # combinations that cannot run here
    ("--precision bf16 --device cpu", ("--precision bf16",)), ("--cuda-graph --device cpu", ("--cuda-graph",)),
    ("--resume", ("--checkpoint",)), ("--resume --checkpoint {tmp}/none.ckpt", ("no checkpoint",)),
    # paths
    ("--checkpoint /no/such/dir/x.ckpt", ("/no/such/dir",)), ("--checkpoint {tmp}", ("is a directory",)),
    ("--plot {tmp}", ("--plot",)), ("--plot /no/such/dir/x.png", ("/no/such/dir",)),
    ("--dataset mnist", ("--data-dir",)), ("--dataset mnist --data-dir {tmp}/missing", ("no such directory",)),
    ("--dataset cifar10 --data-dir {tmp}/empty", ("empty directory",)),
    ("--dataset cifar10 --data-dir {tmp}/file.txt", ("is a file",)),
]


def _run_in_process(argv):
    """(exit code, stdout, stderr, exception escaping main or None)."""
    out, err = io.StringIO(), io.StringIO()
    code, escaped = None, None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = train.main([*argv, "--no-progress"])
        except SystemExit as exc:
            code = exc.code
        except Exception as exc:  # noqa: BLE001 - the point: nothing may escape
            escaped = exc
    return code, out.getvalue(), err.getvalue(), escaped


def test_every_bad_argument_is_one_error_line_and_no_traceback(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("not a directory")
    problems = []
    for template, needles in BAD_ARGUMENTS:
        argv = template.format(tmp=tmp_path).split()
        code, out, err, escaped = _run_in_process(argv)
        lines = err.strip().splitlines()
        if escaped is not None:
            problems.append(f"{template}: raised {type(escaped).__name__}: {escaped}")
        elif code in (0, None) or "Traceback" in err + out:
            problems.append(f"{template}: exit code {code}, stderr {err!r}")
        elif len(lines) != 1 or not lines[0].startswith("error: "):
            problems.append(f"{template}: expected one 'error:' line, got {lines}")
        elif not all(n.format(tmp=tmp_path) in lines[0] for n in needles):
            problems.append(f"{template}: {lines[0]!r} lacks one of {needles}")
    assert not problems, "\n".join(problems)


def test_a_real_process_prints_no_traceback_for_a_model_that_does_not_fit():
    result = subprocess.run([sys.executable, "-m", "models.train", "--model", "fastcifar", "--dataset", "digits"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip().splitlines() == [
        "error: --model fastcifar needs 32x32 images (--dataset cifar10 or synthetic), but --dataset digits "
        "has 1x8x8 images"]
