"""The autotuner's policy (gpukernels/triton/autotune.py) on the interpreter: which configs
each GPUKERNELS_AUTOTUNE mode compiles and times, that the fastest one is launched (and
computes the right thing), the on-disk cache that spares a second run its tuning, and what
is never cached. Compiling and timing are replaced by recorders (the interpreter has
neither a compiler nor a clock worth trusting); the launches themselves are real."""

from __future__ import annotations

import json

import numpy as np
import pytest

import gpukernels as gk
from gpukernels import backend, cuda_graph, knobs
from gpukernels.reference import activation as ref
from tests.helpers import assert_close

pytestmark = pytest.mark.skipif(not backend.interpreting(), reason="needs TRITON_INTERPRET=1")

# made-up milliseconds per BLOCK: 2048 is the fastest of activation's GPU configs
FAKE_MS = {1024: 3.0, 2048: 1.0, 4096: 2.0}


@pytest.fixture
def tuner(monkeypatch, tmp_path):
    """The activation forward kernel autotuned as on a GPU, with recorded compiles/timings."""
    gk.set_backend("interpret")
    from gpukernels.triton import activation, autotune

    tuned = activation.KERNELS["fwd"]
    monkeypatch.setattr(tuned, "fixed_config", lambda: None)
    monkeypatch.setattr(tuned, "chosen", {})
    monkeypatch.setenv("GPUKERNELS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(autotune, "DISK", autotune.DiskCache())
    log = {"compiled": [], "timed": []}

    def compile_(t, grid, args, consts, configs):
        log["compiled"].append(list(configs))

    def time_(fn, warmup_ms, rep_ms, config=None):
        fn()  # a real launch of that config
        log["timed"].append((config, warmup_ms, rep_ms))
        return FAKE_MS[config[0]] + 0.001 * config[1]

    monkeypatch.setattr(autotune, "COMPILE", compile_)
    monkeypatch.setattr(autotune, "TIME", time_)
    autotune.reset_stats()
    return activation, autotune, tuned, log, tmp_path


def _relu(activation, n=5000):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    y = activation.relu_forward(x)
    assert_close(y, ref.relu_forward(x), atol=0, rtol=0, name="relu after tuning")


def test_fast_times_at_most_three_configs_and_launches_the_fastest(tuner, monkeypatch):
    activation, autotune, tuned, log, tmp_path = tuner
    monkeypatch.setenv("GPUKERNELS_AUTOTUNE", "fast")
    _relu(activation, 5000)  # 5000 elements: fewer programs than SMs for every config
    assert len(log["compiled"]) == 1 and len(log["compiled"][0]) == autotune.FAST_CONFIGS
    assert [c for c, *_ in log["timed"]] == log["compiled"][0]
    assert all((w, r) == (autotune.FAST_WARMUP_MS, autotune.FAST_REP_MS) for _, w, r in log["timed"])
    best = min(log["compiled"][0], key=lambda c: FAKE_MS[c[0]] + 0.001 * c[1])
    assert list(tuned.chosen.values()) == [best]
    # the heuristic: few elements, so the most programs (the smallest BLOCK) first
    assert log["compiled"][0][0][0] == min(c[0] for c in tuned.configs)
    entry = next(iter(json.loads((tmp_path / "autotune.json").read_text()).values()))
    assert entry["config"] == list(best) and entry["mode"] == "fast" and len(entry["ms"]) == 3
    s = autotune.stats()
    assert (s["tunings"], s["configs_timed"], s["disk_hits"]) == (1, 3, 0)
    # the same key again: no tuning; another size: a new tuning
    _relu(activation, 5000)
    assert len(log["timed"]) == 3
    _relu(activation, 5001)
    assert len(log["timed"]) == 6


def test_full_times_every_config_with_the_default_timer(tuner, monkeypatch):
    activation, autotune, tuned, log, _ = tuner
    monkeypatch.setenv("GPUKERNELS_AUTOTUNE", "full")
    _relu(activation)
    assert sorted(log["compiled"][0]) == sorted(tuned.configs)
    assert {(w, r) for _, w, r in log["timed"]} == {(autotune.FULL_WARMUP_MS, autotune.FULL_REP_MS)}
    assert list(tuned.chosen.values()) == [(2048, 4, 1)]


def test_off_takes_the_heuristics_first_choice_untimed_and_uncached(tuner, monkeypatch):
    activation, autotune, tuned, log, tmp_path = tuner
    monkeypatch.setenv("GPUKERNELS_AUTOTUNE", "off")
    _relu(activation, 64 * 4096 * 2)  # enough programs for a full wave with every config
    assert log == {"compiled": [], "timed": []}
    assert list(tuned.chosen.values()) == [tuned.configs[0]]  # listed order wins then
    assert not (tmp_path / "autotune.json").exists()
    assert autotune.stats()["untimed"] == 1


def test_a_second_run_reads_the_disk_cache_instead_of_tuning(tuner, monkeypatch):
    activation, autotune, tuned, log, _ = tuner
    monkeypatch.setenv("GPUKERNELS_AUTOTUNE", "fast")
    _relu(activation)
    first = dict(tuned.chosen)
    # a new process: empty memory caches, the same file
    monkeypatch.setattr(tuned, "chosen", {})
    monkeypatch.setattr(autotune, "DISK", autotune.DiskCache())
    _relu(activation)
    assert len(log["timed"]) == 3 and tuned.chosen == first
    assert autotune.stats()["disk_hits"] == 1
    # a full tuning does not trust a fast one
    monkeypatch.setattr(tuned, "chosen", {})
    monkeypatch.setenv("GPUKERNELS_AUTOTUNE", "full")
    _relu(activation)
    assert len(log["timed"]) == 3 + len(tuned.configs)


def test_the_cache_key_holds_the_gpu_and_the_triton_version(tuner, monkeypatch):
    activation, autotune, tuned, log, tmp_path = tuner
    monkeypatch.setenv("GPUKERNELS_AUTOTUNE", "fast")
    _relu(activation)
    key = json.loads(next(iter(json.loads((tmp_path / "autotune.json").read_text()))))
    name, values, dtypes, candidates, gpu, version = key
    assert name == "gpukernels.triton.activation._act_fwd_kernel" and values == ["5000"]
    assert gpu == "interpreter" and version == autotune.triton_version()
    monkeypatch.setattr(autotune, "_device", {"gpu": ("NVIDIA H200 sm_90", 132)})
    monkeypatch.setattr(tuned, "chosen", {})
    _relu(activation)
    assert len(log["timed"]) == 6  # another GPU tunes again


def test_a_corrupt_cache_file_is_reported_and_ignored(tuner, monkeypatch, capsys):
    activation, autotune, tuned, log, tmp_path = tuner
    monkeypatch.setenv("GPUKERNELS_AUTOTUNE", "fast")
    (tmp_path / "autotune.json").write_text("{not json")
    _relu(activation)
    assert "ignoring the autotuning cache" in capsys.readouterr().err
    assert len(json.loads((tmp_path / "autotune.json").read_text())) == 1


def test_during_a_capture_nothing_is_timed_or_kept(tuner, monkeypatch):
    activation, autotune, tuned, log, tmp_path = tuner
    monkeypatch.setenv("GPUKERNELS_AUTOTUNE", "fast")
    monkeypatch.setattr(cuda_graph, "capturing", lambda: True)
    _relu(activation)
    assert log["timed"] == [] and tuned.chosen == {} and not (tmp_path / "autotune.json").exists()


def test_a_bad_mode_names_the_value(tuner, monkeypatch):
    activation, *_ = tuner
    monkeypatch.setenv("GPUKERNELS_AUTOTUNE", "fastest")
    with pytest.raises(ValueError, match=r"GPUKERNELS_AUTOTUNE must be one of .*'fastest'"):
        _relu(activation)


def test_rank_fills_a_wave_first_in_listed_order():
    from gpukernels.triton import autotune

    configs = ["a", "b", "c", "d"]
    assert autotune.rank(configs, [200, 50, 132, 90], 132) == ["a", "c", "d", "b"]


def test_every_family_launches_through_the_tuner_and_stays_correct(monkeypatch, tmp_path, capsys):
    """The doctor's checks (every op family, forward and backward) with each Tuned kernel
    choosing among its GPU configs as on a GPU (prune, grid heuristic, cache), the chosen
    GPU config then run by the interpreter: each family's grid and prune take the tuner's
    arguments, and a GPU tile config computes what the interpreter's one does."""
    gk.set_backend("interpret")
    from gpukernels import doctor
    from gpukernels.triton import _common, autotune

    monkeypatch.setattr(_common.Tuned, "fixed_config", lambda self: knobs.get("configs").get(self))
    monkeypatch.setenv("GPUKERNELS_AUTOTUNE", "fast")
    monkeypatch.setenv("GPUKERNELS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(autotune, "DISK", autotune.DiskCache())
    timed = []
    monkeypatch.setattr(autotune, "COMPILE", lambda *a: None)
    # the largest BLOCK "wins": the config that is furthest from the interpreter's
    monkeypatch.setattr(autotune, "TIME", lambda fn, w, r, config=None: timed.append(config) or 1.0 / config[0])
    chosen = {}
    real_choose = autotune.choose

    def spy(tuned, grid, args, consts):
        cfg = real_choose(tuned, grid, args, consts)
        chosen.setdefault(tuned.name, set()).add(cfg)
        return cfg

    monkeypatch.setattr(autotune, "choose", spy)
    autotune.reset_stats()
    assert doctor.main(["--interpret"]) == 0, capsys.readouterr().out
    families = {name.split(".")[2].removesuffix("_kernels") for name in chosen}  # batchnorm_kernels: batchnorm
    assert families >= {"conv", "linear", "activation", "pool", "batchnorm", "cross_entropy", "loss", "dropout"}
    assert timed and autotune.stats()["tunings"] > 10
