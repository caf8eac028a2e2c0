"""GPU scheduling on a Ray cluster that *declares* a logical GPU (no GPU needed).

Two Ray nodes on this host, as ``tests/test_node_loss.py`` starts them (private ports and temp
dirs, only this cluster's processes stopped): a CPU-only head (2 CPUs) and a node with 4 CPUs
and ``--num-gpus 1``. Training is forced onto the CPU (``RAYKD_TRAIN_ON_CPU=1``); everything
Ray schedules is real: trial sizing from the nodes, the pre-start refusal, and four 0.25-GPU
stages running at once on the one GPU (their recorded start and end times overlap).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.test_node_loss import _free_base, _kill, _pids

REPO = Path(__file__).resolve().parents[1]

SIZING = """
import json, sys, ray
from raykd.errors import RaykdError
from raykd.orchestration.cluster import plan_resources
ray.init(address=sys.argv[1], log_to_driver=False)
out = {}
whole = plan_resources()
quarter = plan_resources(gpus_per_worker=0.25)
out["whole"] = [whole.use_gpu, whole.cpus_per_worker, whole.gpus_per_worker, whole.concurrency]
out["quarter"] = [quarter.cpus_per_worker, quarter.gpus_per_worker, quarter.concurrency]
for name, kwargs in (("workers", {"workers": 2}), ("cpus", {"cpus_per_worker": 8})):
    try:
        plan_resources(**kwargs)
        out[name] = None
    except RaykdError as exc:
        out[name] = str(exc)
# What was sized fits: a task with the default worker's CPUs and a whole GPU runs.
fits = ray.remote(num_cpus=whole.cpus_per_worker, num_gpus=1)(lambda: ray.get_gpu_ids())
out["fits"] = [str(i) for i in ray.get(fits.remote(), timeout=60)]
print("SIZING " + json.dumps(out), flush=True)
"""


@pytest.fixture(scope="module")
def gpu_cluster():
    """(GCS address, env): a CPU-only head with 2 CPUs and a node with 4 CPUs + 1 GPU."""
    b = _free_base()
    head_tmp = tempfile.mkdtemp(prefix="raykd-gc-head-", dir="/tmp")
    node_tmp = tempfile.mkdtemp(prefix="raykd-gc-node-", dir="/tmp")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    tag = env["RAYKD_GPU_CLUSTER_TEST"] = os.path.basename(head_tmp)
    env.update(RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.5", RAYKD_TRAIN_ON_CPU="1")
    env["PYTHONPATH"] = str(REPO)
    # Ray refuses --num-gpus 1 when CUDA_VISIBLE_DEVICES lists fewer; unset, it declares it.
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.pop("RAY_ADDRESS", None)
    ray = str(Path(sys.executable).with_name("ray"))
    head = [ray, "start", "--head", "--num-cpus", "2", "--num-gpus", "0", "--temp-dir",
            head_tmp, "--dashboard-host", "127.0.0.1", "--include-dashboard", "true", "--port",
            str(b), "--dashboard-port", str(b + 1), "--ray-client-server-port", str(b + 2),
            "--dashboard-agent-listen-port", str(b + 3), "--dashboard-agent-grpc-port",
            str(b + 4), "--node-manager-port", str(b + 5), "--object-manager-port", str(b + 6),
            "--runtime-env-agent-port", str(b + 7), "--metrics-export-port", str(b + 8),
            "--min-worker-port", str(b + 100), "--max-worker-port", str(b + 199),
            "--disable-usage-stats"]  # fmt: skip
    try:
        subprocess.run(head, env=env, check=True, capture_output=True, timeout=120)
        gcs = Path(head_tmp, "ray_current_cluster").read_text().strip()
        node = [ray, "start", "--address", gcs, "--num-cpus", "4", "--num-gpus", "1",
                "--temp-dir", node_tmp, "--dashboard-agent-listen-port", str(b + 13),
                "--dashboard-agent-grpc-port", str(b + 14), "--node-manager-port", str(b + 15),
                "--object-manager-port", str(b + 16), "--runtime-env-agent-port", str(b + 17),
                "--metrics-export-port", str(b + 18), "--min-worker-port", str(b + 200),
                "--max-worker-port", str(b + 299), "--disable-usage-stats"]  # fmt: skip
        subprocess.run(node, env=env, check=True, capture_output=True, timeout=120)
        yield gcs, env
    finally:  # only this cluster's processes
        for sig in (signal.SIGTERM, signal.SIGKILL):
            _kill(_pids(head_tmp) + _pids(node_tmp) + _pids(tag, "environ"), sig)
            time.sleep(2)
        shutil.rmtree(head_tmp, ignore_errors=True)
        shutil.rmtree(node_tmp, ignore_errors=True)


def _grid(data: Path, root: Path, gcs: str, *extra: str) -> list[str]:
    return [
        sys.executable, str(REPO / "jobs" / "full_grid.py"),
        "--preset", "smoke", "--datasets", str(data), "--size", "32", "32",
        "--rows", "student", "--precision", "fp32", "--trial-unit", "row",
        "--root", str(root), "--address", gcs, *extra,
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.ray
def test_sizing_per_node_and_refusals_on_a_cpu_head_plus_gpu_node(gpu_cluster):
    """CPUs per worker come from the GPU node (4), not the cluster (6 CPUs ÷ 1 GPU = 6, which
    no node has: Ray Train waited forever); impossible requests are refused with numbers."""
    gcs, env = gpu_cluster
    out = subprocess.run(
        [sys.executable, "-c", SIZING, gcs], env=env, capture_output=True, text=True, timeout=300
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("SIZING ")), None)
    assert line, out.stdout[-2000:] + out.stderr[-3000:]
    got = json.loads(line.removeprefix("SIZING "))
    assert got["whole"] == [True, 4, 1.0, 1]
    assert got["quarter"] == [1, 0.25, 4]
    assert "--workers 2:" in got["workers"] and "fits 1 (GPUs 1" in got["workers"]
    assert "1 CPU-only node(s)" in got["workers"]
    assert "--cpus-per-worker 8: no GPU node has that many CPUs (the largest has 4" in got["cpus"]
    assert got["fits"] == ["0"]


@pytest.mark.slow
@pytest.mark.ray
def test_an_impossible_job_is_refused_before_anything_starts(gpu_cluster, tiny_data, tmp_path):
    gcs, env = gpu_cluster
    root = tmp_path / "runs"
    out = subprocess.run(
        _grid(tiny_data, root, gcs, "--workers", "2", "--epochs", "1"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0
    refusal = [x for x in out.stderr.splitlines() if "--workers 2:" in x]
    assert len(refusal) == 1 and "1 worker(s)" not in refusal[0], out.stderr[-3000:]
    assert "needs 2 worker(s) × 1 GPU" in refusal[0] and "fits 1 (GPUs 1" in refusal[0]
    assert not (root / "stages").exists()  # no stage store, no trial, no MLflow job run
    assert "Traceback" not in out.stderr


@pytest.mark.slow
@pytest.mark.ray
def test_four_quarter_gpu_stages_run_at_once_on_one_gpu(gpu_cluster, tiny_data, tmp_path):
    """Four student stages (seeds) with --gpus-per-worker 0.25 on the one logical GPU: each
    trial got GPU 0 from Ray, all four ran on the GPU node, and their start/end times overlap
    (the last started before the first ended)."""
    gcs, env = gpu_cluster
    root = tmp_path / "runs"
    # Tune starts the four trials some seconds apart (~10 s each on a loaded 2-core box):
    # the stages train long enough for all four to be running at once.
    argv = _grid(tiny_data, root, gcs, "--seeds", "4", "--epochs", "16")
    argv += ["--gpus-per-worker", "0.25", "--local-train"]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "4 trial(s) at once, each stage on 1 worker(s) × 0.25 GPU + 1 CPU" in out.stderr
    results = [json.loads(p.read_text()) for p in root.glob("stages/student-*/result.json")]
    assert len(results) == 4
    starts = [r["started_at"] for r in results]
    ends = [r["finished_at"] for r in results]
    assert max(starts) < min(ends), (starts, ends)  # one instant with all four running
    assert len({r["node_id"] for r in results}) == 1  # the GPU node (the head has no GPU)
    assert all(r["compute"]["compute.device"] == "cpu" for r in results)  # forced, as asked
