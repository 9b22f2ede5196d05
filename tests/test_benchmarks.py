"""The benchmark runner stays runnable: a quick run checks every entry against PyTorch
(each entry raises on a wrong result before it times anything), prints the table and
writes the stamped result files."""

import csv
import json

import pytest

pytest.importorskip("torch")

STAMP = ("commit", "date_utc", "device", "ceilings", "python", "numpy", "torch", "triton", "cupy",
         "gpu_driver", "command")
HEADER = ["entry", "case", "ours_s", "theirs_s", "ratio", "flops", "bytes", "rate", "rate_unit",
          "pct_of_ceiling", "extra"]


def test_quick_benchmark_run_checks_and_prints_every_entry(capsys, tmp_path):
    from benchmarks import run

    assert run.main(["--quick", "--repeat", "1", "--device", "cpu", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for entry in ("conv2d fwd+bwd", "cross_entropy", "train step", "data parallel"):
        assert entry in out
    assert "ceilings: copy" in out


def test_run_stamps_every_write_with_the_commit_read_at_its_start(monkeypatch, tmp_path):
    """The result files are rewritten after each entry; where they are tracked, a commit
    read at each write would find the run's own output and say ``-dirty``."""
    import json

    from benchmarks import common, run

    reads = iter(["0123abc", "0123abc-dirty", "0123abc-dirty", "0123abc-dirty"])
    monkeypatch.setattr(run, "git_commit", lambda: next(reads))
    monkeypatch.setattr(common, "git_commit", lambda: pytest.fail("the stamp read the commit again"))
    argv = ["--tiny", "--repeat", "1", "--device", "cpu", "--only", "activation,optim", "--out", str(tmp_path)]
    assert run.main(argv) == 0
    (out,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert json.loads((out / "results.json").read_text())["commit"] == "0123abc"


def test_quick_run_writes_stamped_result_files(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    from benchmarks import run

    argv = ["--quick", "--repeat", "1", "--device", "cpu", "--only", "conv,activation", "--out", str(tmp_path)]
    assert run.main(argv) == 0
    dirs = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(dirs) == 1 and dirs[0].name.startswith("cpu-x")
    out = dirs[0]
    assert str(out) in capsys.readouterr().out
    for name in ("results.csv", "results.json", "results.md", "results.png"):
        assert (out / name).is_file(), name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left

    doc = json.loads((out / "results.json").read_text())
    for key in STAMP:
        assert key in doc, key
    assert doc["commit"] and doc["date_utc"].endswith("Z")
    assert doc["ceilings"]["copy_gbps"] > 0 and doc["ceilings"]["gemm_gflops"] > 0
    assert "benchmarks.run --quick" in doc["command"] and "conv,activation" in doc["command"]
    assert doc["gpu_driver"] == "no GPU"
    rows = doc["rows"]
    assert {r["entry"].split()[0] for r in rows} >= {"conv2d", "relu"}
    for r in rows:
        assert r["ratio"] > 0 and r["ours_s"] > 0 and r["theirs_s"] > 0
        assert isinstance(r["extra"], dict)

    lines = (out / "results.csv").read_text().splitlines()
    stamp_lines = [ln for ln in lines if ln.startswith("#")]
    assert any(ln.startswith("# commit: ") for ln in stamp_lines)
    data = list(csv.reader(ln for ln in lines if not ln.startswith("#")))
    assert data[0] == HEADER
    assert len(data) == len(rows) + 1

    md = (out / "results.md").read_text()
    assert "| entry | case |" in md and f"commit: {doc['commit']}" in md
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_device_slug():
    from benchmarks.common import device_slug

    assert device_slug("CPU x2 (NumPy backend)") == "cpu-x2-numpy"
    assert device_slug("NVIDIA H100 80GB HBM3 (cuda backend)") == "nvidia-h100-80gb-hbm3"


def test_results_without_matplotlib_skip_the_png(tmp_path, monkeypatch, capsys):
    import sys

    from benchmarks.common import Ceilings, Result, write_results

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    ceilings = Ceilings(10.0, 100.0, "CPU x2 (NumPy backend)")
    rows = [Result("relu fwd", "1M float32", 1e-3, 2e-3, bytes=8e6, extra={"baseline": "torch"})]
    out = write_results(rows, ceilings, tmp_path, ["--quick"])
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "results.json", "results.md"]
    assert "results.png skipped" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["rows"][0]["ratio"] == 2.0


def test_unknown_entry_is_a_usage_error():
    from benchmarks import run

    with pytest.raises(SystemExit):
        run.main(["--only", "nope"])


def test_terminal_table_is_rich_on_a_terminal_and_plain_otherwise():
    import io

    from benchmarks.common import Ceilings, Result, print_table

    results = [Result("relu fwd", "1M float32", 1e-3, 2e-3, bytes=8e6), Result("relu bwd", "1M", 2e-3, 1e-3, bytes=8e6)]
    ceilings = Ceilings(100.0, 1000.0, "test device")
    plain = io.StringIO()
    print_table(results, ceilings, file=plain)
    assert "ratio = torch time / our time" in plain.getvalue() and "2.00" in plain.getvalue()

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    pytest.importorskip("rich")
    tty = Terminal()
    print_table(results, ceilings, file=tty)
    text = tty.getvalue()
    assert "test device" in text and "relu fwd" in text and "0.50" in text and "2.00" in text


def test_a_failing_entry_is_reported_and_the_others_still_written(capsys, tmp_path, monkeypatch):
    from benchmarks import run

    def broken(quick=False, repeat=1):
        raise AssertionError("conv2d fwd: 3 of 10 elements differ")

    monkeypatch.setattr(run.ENTRIES["conv"], "run", broken)
    assert run.main(["--quick", "--repeat", "1", "--device", "cpu", "--only", "conv,cross_entropy",
                     "--out", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "entry conv FAILED" in captured.err and "3 of 10 elements differ" in captured.err
    assert "cross_entropy" in captured.out
    rows = json.loads(next(tmp_path.glob("*/results.json")).read_text())["rows"]
    assert {r["entry"] for r in rows} == {"cross_entropy"}


def test_timeit_pair_alternates_and_returns_each_sides_median(monkeypatch):
    """Ours and theirs take turns, the order flipping each round, so a machine whose
    speed drifts slows both alike; each side's median is its own."""
    from benchmarks import common

    calls, clock = [], [0.0]
    cost = {"a": 1.0, "b": 3.0}

    def timed(name):
        def fn():
            calls.append(name)
            clock[0] += cost[name] + 0.5 * len(calls)  # the machine slows down as it goes
        return fn

    monkeypatch.setattr(common.time, "perf_counter", lambda: clock[0])
    ta, tb = common.timeit_pair(timed("a"), timed("b"), warmup=1, repeat=4, block=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]
    # a's timed runs are calls 3, 6, 7, 10 and b's 4, 5, 8, 9 (1-based), each costing its
    # own time plus 0.5 per call so far: both medians carry the same 0.5 * 6.5 of drift
    assert ta == pytest.approx(1.0 + 0.5 * 6.5)
    assert tb == pytest.approx(3.0 + 0.5 * 6.5)

    calls.clear()
    ta, tb = common.timeit_pair(timed("a"), timed("b"), warmup=0, repeat=3, block=2)
    # turns of an untimed run then 2 timed: a a a, b b b, then the order flips
    assert calls == ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3
    # a's timed runs are calls 2, 3, 11, 12 and b's 5, 6, 8, 9: medians at 7 for both
    assert ta == pytest.approx(1.0 + 0.5 * 7) and tb == pytest.approx(3.0 + 0.5 * 7)
