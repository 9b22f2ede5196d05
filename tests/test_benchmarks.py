"""The benchmark runner stays runnable: a quick run checks every entry against PyTorch
(each entry raises on a wrong result before it times anything) and prints the table."""

import pytest

pytest.importorskip("torch")


def test_quick_benchmark_run_checks_and_prints_every_entry(capsys):
    from benchmarks import run

    assert run.main(["--quick", "--repeat", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for entry in ("conv2d fwd+bwd", "cross_entropy", "train step"):
        assert entry in out
    assert "ceilings: copy" in out


def test_unknown_entry_is_a_usage_error():
    from benchmarks import run

    with pytest.raises(SystemExit):
        run.main(["--only", "nope"])
