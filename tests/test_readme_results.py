"""benchmarks.readme: the README's results section (the GPU part, then the CPU part),
generated from the result folders that benchmarks.common.write_results writes (built here
with write_results itself, so the file format the generator reads can never drift from
the one the benchmarks write)."""

import json
from pathlib import Path

import pytest

from benchmarks import common, readme
from benchmarks.common import Ceilings, Result, write_results

REPO = Path(__file__).resolve().parents[1]
GPU = "NVIDIA H100 80GB HBM3 (cuda backend)"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
DATE = "2031-02-03T04:05:06Z"


def _fake_gpu_stamp(monkeypatch, commit=COMMIT, date=DATE):
    """write_results stamps with the real run_stamp, then the fields a GPU machine would
    differ in (commit, date, driver, triton, cupy) are set."""
    real = common.run_stamp

    def stamp(ceilings, argv=None, commit_=None):
        s = real(ceilings, argv, commit_)
        s.update(commit=commit, date_utc=date, gpu_driver="NVIDIA 570.86.15, CUDA driver API 12.8",
                 triton="3.4.0", cupy="13.4.1")
        return s

    monkeypatch.setattr(common, "run_stamp", stamp)


def _gpu_results(root, monkeypatch, device=GPU, **stamp):
    _fake_gpu_stamp(monkeypatch, **stamp)
    rows = [
        Result("conv2d fwd", "N32 C64 H56 K3 | bf16", 1e-3, 1.5e-3, flops=2e11,
               extra={"baseline": "cudnn"}),
        Result("relu fwd", "64M float32", 4e-4, 3.2e-4, bytes=5.12e8),
        Result("train", "resnet8 b128", 0.02, 0.025, unit="img/s", extra={"batch": 128}),
    ]
    out = write_results(rows, Ceilings(3000.0, 900000.0, device), root, ["--only", "conv"])
    monkeypatch.undo()
    return out, rows


def _cpu_results(root, name=None, argv=("--quick",), case="1M float32"):
    out = write_results([Result("relu fwd", case, 1e-3, 2e-3, bytes=8e6)],
                        Ceilings(10.0, 100.0, "CPU x2 (NumPy backend)"), root, list(argv))
    if name:
        out = out.rename(out.with_name(name))
    return out


def _readme(tmp_path, body="Intro.\n\n## Results\n\n<!-- results:begin -->\nold text\n"
                           "<!-- results:end -->\n\nCPU figures stay.\n"):
    path = tmp_path / "README.md"
    path.write_text(body)
    return path


def test_without_gpu_results_the_section_says_not_measured(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    section = readme.render_section(results, tmp_path)
    assert "not measured on a GPU yet" in section
    assert "make bench" in section and "docker/README.md" in section
    assert "python -m benchmarks.readme" in section
    assert "CPU results: none committed" in section
    assert "python -m benchmarks.run --device cpu" in section and "### CPU" not in section
    # a missing results folder is no GPU (and no CPU) results either
    missing = readme.render_section(tmp_path / "nope", tmp_path)
    assert "not measured on a GPU yet" in missing and "CPU results: none committed" in missing


def test_cpu_results_are_told_apart_by_their_stamp_not_their_folder_name(tmp_path):
    results = tmp_path / "results"
    _cpu_results(results, name="mystery-box")  # a CPU run in a folder not named cpu-*
    _cpu_results(results)
    assert sorted(p.name for p in results.iterdir()) == ["cpu-x2-numpy", "mystery-box"]
    assert readme.load_gpu_results(results) == []
    assert sorted(f.name for f, _ in readme.load_cpu_results(results)) == ["cpu-x2-numpy", "mystery-box"]
    section = readme.render_section(results, tmp_path)
    assert "not measured on a GPU yet" in section  # CPU runs are no GPU results
    assert sum(line.startswith("### CPU: CPU x2 ") for line in section.splitlines()) == 2
    assert "CPU results: none committed" not in section


def test_cpu_results_are_rendered_after_the_gpu_not_measured_text(tmp_path):
    """Only CPU results: the GPU part still says not measured, then the CPU part, with the
    stamp lines and the table exactly as results.md has them."""
    results = tmp_path / "results"
    out = _cpu_results(results, argv=("--only", "relu", "--device", "cpu", "--threads", "1"))
    doc = json.loads((out / "results.json").read_text())
    section = readme.render_section(results, tmp_path)
    lines = section.splitlines()

    gpu_at = section.index("GPU results: not measured on a GPU yet")
    reproduce_at = section.index("`make bench` on a machine with a CUDA GPU")
    heading = next(line for line in lines if line.startswith("### "))
    assert gpu_at < reproduce_at < section.index("CPU results (CPU x2)") < section.index(heading)
    assert heading.startswith("### CPU: CPU x2 (NumPy backend vs PyTorch CPU, 1 thread): ")
    assert readme._nice_date(doc["date_utc"]) in heading
    assert f"`{readme.short_commit(doc['commit'])}`" in heading
    assert "CPU figures depend on the machine" in section and "development machine's (2 cores)" in section
    assert "CPU results: none committed" not in section

    md = (out / "results.md").read_text().splitlines()
    stamp_lines = [line for line in md if line.startswith("- ")]
    for line in stamp_lines:  # every stamp line results.md has but the date and device (in the heading)
        if not line.startswith(("- date_utc:", "- device:")):
            assert line in lines, line
    table = md[md.index(next(line for line in md if line.startswith("ratio ="))):]
    start = lines.index(table[0])
    assert lines[start:start + len(table)] == table  # the note and the table, verbatim
    assert "| relu fwd | 1M float32 | 1.000 | 2.000 | 2.00 | 8.0 GB/s | 80% |  |" in lines
    assert "[results.md](results/cpu-x2-numpy/results.md)" in section
    assert section.rstrip().endswith("commit the folder\nwith README.md.")


def test_cpu_heading_threads_default_to_the_cores_and_cpu_part_follows_the_gpu_part(tmp_path, monkeypatch):
    results = tmp_path / "results"
    _gpu_results(results, monkeypatch)
    _cpu_results(results, argv=("--device", "cpu"))
    section = readme.render_section(results, tmp_path)
    headings = [line for line in section.splitlines() if line.startswith("### ")]
    assert len(headings) == 2
    assert headings[0].startswith("### NVIDIA H100 80GB HBM3: ")
    assert headings[1].startswith("### CPU: CPU x2 (NumPy backend vs PyTorch CPU, 2 threads): ")
    assert "not measured on a GPU yet" not in section
    gpu_reproduce = section.index("`make bench` on a machine with a CUDA GPU")
    assert section.index(headings[0]) < gpu_reproduce < section.index("CPU results (CPU x2)")
    assert section.index("CPU results (CPU x2)") < section.index(headings[1])


def test_cpu_threads():
    cpu = "CPU x16 (NumPy backend)"
    assert readme.cpu_threads({"device": cpu, "command": "python -m benchmarks.run --threads 4"}) == 4
    assert readme.cpu_threads({"device": cpu, "command": "python -m benchmarks.run --threads=3"}) == 3
    assert readme.cpu_threads({"device": cpu, "command": "python -m benchmarks.run --device cpu"}) == 16
    assert readme.cpu_threads({"device": "Some CPU", "command": "python -m benchmarks.run"}) is None
    assert readme.cpu_backend(cpu) == "NumPy" and readme.cpu_device_name(cpu) == "CPU x16"


def test_stamp_is_gpu():
    assert readme.stamp_is_gpu({"device": GPU, "gpu_driver": "NVIDIA 570"})
    assert not readme.stamp_is_gpu({"device": "CPU x16 (NumPy backend)", "gpu_driver": "NVIDIA 570"})
    assert readme.stamp_is_gpu({"device": "CPU-looking name", "kind": "gpu"})
    assert not readme.stamp_is_gpu({"device": GPU, "kind": "cpu"})
    assert readme.stamp_is_gpu({"device": "NVIDIA A100", "gpu_driver": "NVIDIA 550"})
    assert not readme.stamp_is_gpu({"device": "NVIDIA A100", "gpu_driver": "no GPU"})


def test_gpu_results_section_names_device_date_commit_and_every_case(tmp_path, monkeypatch):
    results = tmp_path / "results"
    out, rows = _gpu_results(results, monkeypatch)
    _cpu_results(results)
    doc = json.loads((out / "results.json").read_text())
    assert doc["commit"] == COMMIT and doc["device"] == GPU  # the fake stamp reached the file

    section = readme.render_section(results, tmp_path)
    assert "not measured on a GPU yet" not in section
    heading = next(line for line in section.splitlines() if line.startswith("### "))
    assert heading.startswith("### NVIDIA H100 80GB HBM3: ") and "(cuda backend)" not in heading
    assert "2031-02-03 04:05:06 UTC" in heading and "`0123456`" in heading
    assert f"commit: {COMMIT}" in section
    assert "NVIDIA 570.86.15, CUDA driver API 12.8" in section
    assert "triton: 3.4.0" in section and "cupy: 13.4.1" in section
    assert "copy 3000.0 GB/s, GEMM 900000 GFLOP/s" in section
    assert "python -m benchmarks.run --only conv" in section
    gpu_part = section[: section.index("CPU results (CPU x2)")]
    assert "CPU x2" not in gpu_part  # the CPU folder is in the CPU part only
    for r in rows:
        assert r.entry in section
        assert r.case.replace("|", "\\|") in section
        assert f"| {r.ratio:.2f} |" in section
    assert "| 1.50 |" in section and "| 0.80 |" in section and "| 1.25 |" in section
    assert "| entry | case | ours ms | torch ms | ratio | rate | % of ceiling |" in section
    assert "200000.0 GFLOP/s | 22%" in section and "1280.0 GB/s | 43%" in section
    assert "[results.md](results/nvidia-h100-80gb-hbm3/results.md)" in section
    assert "make readme-results" in section
    if (out / "results.png").exists():
        assert "(results/nvidia-h100-80gb-hbm3/results.png)" in section


def test_several_gpus_latest_first(tmp_path, monkeypatch):
    results = tmp_path / "results"
    _gpu_results(results, monkeypatch, device="NVIDIA A100-SXM4-80GB (cuda backend)",
                 date="2030-01-01T00:00:00Z", commit=COMMIT + "-dirty")
    _gpu_results(results, monkeypatch)
    section = readme.render_section(results, tmp_path)
    headings = [line for line in section.splitlines() if line.startswith("### ")]
    assert len(headings) == 2
    assert "NVIDIA H100 80GB HBM3" in headings[0] and "NVIDIA A100-SXM4-80GB" in headings[1]
    assert "`0123456-dirty`" in headings[1]


def test_check_detects_a_stale_readme_and_passes_on_a_fresh_one(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    results.mkdir()
    path = _readme(tmp_path)
    args = ["--readme", str(path), "--results", str(results)]
    before = path.read_text()

    assert readme.main(["--check", *args]) == 1
    err = capsys.readouterr().err
    assert "out of date" in err and len(err.strip().splitlines()) == 1
    assert path.read_text() == before  # --check writes nothing

    assert readme.main(args) == 0
    text = path.read_text()
    assert "old text" not in text and "not measured on a GPU yet" in text
    assert text.startswith("Intro.\n\n## Results\n\n<!-- results:begin -->\n")
    assert text.endswith("<!-- results:end -->\n\nCPU figures stay.\n")
    assert readme.main(["--check", *args]) == 0

    # new GPU results make it stale again; regenerating makes it fresh
    _gpu_results(results, monkeypatch)
    assert readme.main(["--check", *args]) == 1
    assert readme.main(args) == 0
    assert "### NVIDIA H100 80GB HBM3" in path.read_text() and "not measured on a GPU yet" not in path.read_text()
    assert readme.main(["--check", *args]) == 0
    assert readme.main(args) == 0 and "already up to date" in capsys.readouterr().out

    # so do new CPU results
    _cpu_results(results)
    assert readme.main(["--check", *args]) == 1
    assert readme.main(args) == 0
    text = path.read_text()
    assert "### CPU: CPU x2" in text and "CPU results: none committed" not in text
    assert text.index("### NVIDIA H100 80GB HBM3") < text.index("### CPU: CPU x2")
    assert text.endswith("<!-- results:end -->\n\nCPU figures stay.\n")
    assert readme.main(["--check", *args]) == 0


def test_readme_without_markers_is_an_error(tmp_path, capsys):
    path = _readme(tmp_path, body="# no markers\n")
    assert readme.main(["--check", "--readme", str(path), "--results", str(tmp_path)]) == 2
    assert "results:begin" in capsys.readouterr().err
    assert path.read_text() == "# no markers\n"


def test_check_and_regenerate_a_copy_of_the_real_readme(tmp_path):
    """A stale copy of the real README fails --check; regenerated, it passes and only the
    text between the markers changed (the real README is never written)."""
    real = (REPO / "README.md").read_text()
    copy = tmp_path / "README.md"
    copy.write_text(real.replace(readme.END, "stale line\n" + readme.END))
    args = ["--readme", str(copy), "--results", str(REPO / "benchmarks" / "results")]
    assert readme.main(["--check", *args]) == 1
    assert readme.main(args) == 0
    assert readme.main(["--check", *args]) == 0
    new = copy.read_text()
    assert "stale line" not in new
    assert new.split(readme.BEGIN)[0] == real.split(readme.BEGIN)[0]
    assert new.split(readme.END)[1] == real.split(readme.END)[1]
    assert (REPO / "README.md").read_text() == real


def test_the_committed_readme_is_up_to_date(capsys):
    """README.md matches the result folders in the repository (`make readme-results`)."""
    code = readme.main(["--check"])
    assert code == 0, capsys.readouterr().err


def test_paragraphs_never_break_inside_a_code_span():
    text = "word " * 14 + "(`python -m benchmarks.run --device cpu`, then `make readme-results`)."
    wrapped = readme._para(text)
    assert wrapped.replace("\n", " ") == text.strip()
    for line in wrapped.splitlines():
        assert line.count("`") % 2 == 0, line


@pytest.mark.parametrize("commit, short", [(COMMIT, "0123456"), (COMMIT + "-dirty", "0123456-dirty"),
                                           ("unknown", "unknown")])
def test_short_commit(commit, short):
    assert readme.short_commit(commit) == short
