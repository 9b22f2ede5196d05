"""Every Triton kernel and tile config compiles ahead of time for sm_80 (A100) and sm_90
(H100) on this GPU-less machine, uses tensor cores where it is a GEMM, and does not
spill registers (ptxas -v). One subprocess compiles everything: compiling needs Triton's
interpreter mode off, and this test session has it on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "rows.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "gpukernels.triton.aot", "--json", str(out)],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=1500)
    if not out.exists():
        pytest.fail(f"the compile run wrote nothing (exit {result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(out.read_text()), result


def test_every_variant_compiles_without_spills_and_with_tensor_cores(rows):
    rows, result = rows
    bad = [f"{r['name']} {r['arch']}: {'; '.join(r['problems'])}" for r in rows if r["problems"]]
    assert not bad, "\n".join(bad)
    assert result.returncode == 0, result.stdout[-4000:]


def test_every_gpu_config_of_every_conv_kernel_is_compiled_for_both_archs(rows):
    from gpukernels.triton import conv

    rows, _ = rows
    seen = {(r["name"], r["arch"]) for r in rows}
    for kind, configs in conv.GPU_CONFIGS.items():
        for bm, bn, bk, warps, stages in configs:
            for arch in ("sm_80", "sm_90"):
                name = f"conv.{kind}[{bm}x{bn}x{bk} w{warps} s{stages} fp32 tf32]"
                assert (name, arch) in seen, f"{name} not compiled for {arch}"
    hopper = [r for r in rows if r["arch"] == "sm_90" and r.get("wgmma")]
    assert hopper, "no kernel used Hopper's wgmma on sm_90"
    for dtype in ("fp16", "bf16"):
        assert any(dtype in r["name"] and r["mma"] for r in rows), f"no {dtype} tensor-core kernel"
