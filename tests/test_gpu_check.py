"""``benchmarks/gpu_check.py``: one line and exit 0 without CUDA; its helpers; on a GPU (marked
``gpu``) its training-step timing."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_cuda_it_says_so_in_one_line_and_exits_0(tmp_path):
    out = tmp_path / "result.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA device on this machine")
    assert "nothing measured, nothing written" in lines[0]
    assert not out.exists()


def test_peak_concurrency_and_phantoms(tmp_path):
    check = _module()
    assert check.peak_concurrency([(0, 10), (1, 9), (2, 8), (3, 7)]) == 4
    assert check.peak_concurrency([(0, 1), (1, 2), (2, 3)]) == 1  # back to back: one at a time
    data = check.phantoms(tmp_path / "d", volumes=2, slices=2, size=16)
    assert sorted(p.name for p in data.iterdir()) == ["vol0.h5", "vol1.h5"]


@pytest.mark.gpu
def test_on_gpu_train_step_times_both_precisions(tmp_path):
    check = _module()
    data = check.phantoms(tmp_path / "data", volumes=4, slices=4, size=150)
    out = check.train_step(tmp_path, data)
    assert out["fp32"]["compute.tf32"] == "off" and out["fp32"]["ms_per_step"] > 0
    assert out["auto"]["compute.precision"] in ("bf16", "fp16")
    assert out["fp32"]["compute.device"].startswith("cuda:0")
