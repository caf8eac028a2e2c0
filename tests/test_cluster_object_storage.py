"""A cluster without a shared filesystem: two Ray nodes on this host, each with a private
working folder (its own ``RAYKD_CACHE``; nothing in ``--root`` is a path), the run root on an
S3 API server (moto, loopback) and tracking on ``mlflow server`` backed by PostgreSQL with
proxied artifacts on the same bucket. Every server is started here and stopped after.

One job trains the smoke grid's teacher and student on the worker node while their trials run on
the head (a Train worker is SIGKILLed mid-stage: the stage resumes from Ray's checkpoint in the
bucket); a rerun after every node's folder is wiped
reuses both from the bucket alone; the champion loads by alias in a fresh folder with no bucket
credentials; the secret key appears in no output, param or tag."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.servers import SECRET_KEY, MlflowServer, Postgres, S3Server, s3_env
from tests.test_node_loss import _free_base, _kill, _pids

REPO = Path(__file__).resolve().parents[1]
BUCKET, ROOT = "raykd-runs", "s3://raykd-runs/runs"
LOAD = """
import sys, mlflow
model = mlflow.pytorch.load_model(sys.argv[1])
print("champion loaded", type(model).__name__, sum(p.numel() for p in model.parameters()))
"""


@contextlib.contextmanager
def private_nodes(tmp: Path, creds: dict[str, str]):
    """(GCS address, env of a client): a head with no CPU (the job's trials run there, their
    Train workers cannot) and a 2-CPU worker node, each with its own RAYKD_CACHE; only this
    cluster's processes are stopped afterwards."""
    b = _free_base(250)
    head_tmp = tempfile.mkdtemp(prefix="raykd-os-head-", dir="/tmp")
    node_tmp = tempfile.mkdtemp(prefix="raykd-os-node-", dir="/tmp")
    env = {**os.environ, **creds, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": str(REPO), "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}  # fmt: skip
    tag = env["RAYKD_OBJECT_STORE_TEST"] = os.path.basename(head_tmp)
    for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL"):
        env.pop(k, None)
    ray = str(Path(sys.executable).with_name("ray"))
    head = [ray, "start", "--head", "--num-cpus", "0", "--temp-dir", head_tmp,
            "--node-ip-address", "127.0.0.1",
            "--dashboard-host", "127.0.0.1", "--include-dashboard", "true", "--port", str(b),
            "--dashboard-port", str(b + 1), "--ray-client-server-port", str(b + 2),
            "--dashboard-agent-listen-port", str(b + 3), "--dashboard-agent-grpc-port",
            str(b + 4), "--node-manager-port", str(b + 5), "--object-manager-port", str(b + 6),
            "--runtime-env-agent-port", str(b + 7), "--metrics-export-port", str(b + 8),
            "--min-worker-port", str(b + 50), "--max-worker-port", str(b + 149),
            "--disable-usage-stats"]  # fmt: skip
    try:
        head_env = {**env, "RAYKD_CACHE": str(tmp / "head-node")}
        subprocess.run(head, env=head_env, check=True, capture_output=True, timeout=180)
        gcs = Path(head_tmp, "ray_current_cluster").read_text().strip()
        node = [ray, "start", "--address", gcs, "--num-cpus", "2", "--temp-dir", node_tmp,
                "--node-ip-address", "127.0.0.1",
                "--dashboard-agent-listen-port", str(b + 13), "--dashboard-agent-grpc-port",
                str(b + 14), "--node-manager-port", str(b + 15), "--object-manager-port",
                str(b + 16), "--runtime-env-agent-port", str(b + 17),
                "--metrics-export-port", str(b + 18), "--min-worker-port", str(b + 150),
                "--max-worker-port", str(b + 249), "--disable-usage-stats"]  # fmt: skip
        node_env = {**env, "RAYKD_CACHE": str(tmp / "worker-node")}
        subprocess.run(node, env=node_env, check=True, capture_output=True, timeout=180)
        yield gcs, {**env, "RAYKD_CACHE": str(tmp / "driver")}
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            _kill(_pids(head_tmp) + _pids(node_tmp) + _pids(tag, "environ"), sig)
            time.sleep(2)
        shutil.rmtree(head_tmp, ignore_errors=True)
        shutil.rmtree(node_tmp, ignore_errors=True)


def _grid(data: Path, gcs: str, tracking: str) -> list[str]:
    return [
        sys.executable, str(REPO / "jobs" / "full_grid.py"), "--preset", "smoke",
        "--datasets", str(data), "--size", "32", "32", "--rows", "teacher", "student",
        "--workers", "1", "--epochs", "3", "--precision", "fp32",
        "--root", ROOT, "--tracking-uri", tracking, "--address", gcs,
    ]  # fmt: skip


def _train_workers(tag: str) -> list[int]:
    return [p for p in _pids("ray::RayTrainWorker") if p in _pids(tag, "environ")]


def _run_killing_a_worker(cmd, env, cwd, s3, tag) -> tuple[int, str, bool]:
    """Run the job; once Ray's first checkpoint is in the bucket, SIGKILL its Train workers."""
    job = subprocess.Popen(cmd, env=env, cwd=cwd, text=True, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(job.stdout), daemon=True)
    reader.start()
    killed, t0 = False, time.time()
    try:
        while job.poll() is None and not killed and time.time() - t0 < 400:
            listing = s3.client().list_objects_v2(Bucket=BUCKET, Prefix="runs/ray/")
            if any("checkpoint_" in o["Key"] for o in listing.get("Contents", [])):
                workers = _train_workers(tag)
                _kill(workers, signal.SIGKILL)
                killed = bool(workers)
            time.sleep(0.2)
        job.wait(timeout=600)
    finally:
        if job.poll() is None:
            job.kill()
        reader.join(timeout=10)
    return job.returncode, "".join(lines), killed


@pytest.mark.slow
@pytest.mark.ray
def test_grid_on_object_storage_with_private_nodes(tiny_data, tmp_path):
    with S3Server(tmp_path) as s3, Postgres() as pg:
        s3.bucket(BUCKET)
        creds = s3_env(s3.endpoint)
        server_env = {**creds, "MLFLOW_S3_ENDPOINT_URL": s3.endpoint}
        with (
            MlflowServer(tmp_path, pg.uri, f"s3://{BUCKET}/mlartifacts", server_env) as ml,
            private_nodes(tmp_path, creds) as (gcs, env),
        ):
            ml.wait()
            t0 = time.time()
            print(f"servers and nodes up at {t0:.0f}")
            tag = env["RAYKD_OBJECT_STORE_TEST"]
            cmd = _grid(tiny_data, gcs, ml.uri)
            rc, first, killed = _run_killing_a_worker(cmd, env, tmp_path, s3, tag)
            assert rc == 0, first[-5000:]
            assert killed and "resumed from" in first, first[-5000:]
            assert "2 stages trained, 0 resumed, 0 reused" in first, first[-3000:]
            assert f"run directory {ROOT}" in first
            print(f"first job {time.time() - t0:.0f}s")
            # Every stage trained on the worker node; its trial on the head read it from the bucket.
            on_node = {
                p.parent.name
                for p in (tmp_path / "worker-node").glob("roots/*/stages/*/result.json")
            }
            on_head = {
                p.parent.name for p in (tmp_path / "head-node").glob("roots/*/stages/*/result.json")
            }
            assert len(on_node) == 2 and on_node == on_head, (on_node, on_head)
            # Every node's private folder is wiped: the rerun has only the bucket.
            for name in ("head-node", "worker-node", "driver"):
                shutil.rmtree(tmp_path / name / "roots", ignore_errors=True)
            again = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                                   timeout=600)  # fmt: skip
            second = again.stdout + again.stderr
            assert again.returncode == 0, second[-5000:]
            assert "0 stages trained, 0 resumed, 2 reused" in second, second[-3000:]
            print(f"rerun done {time.time() - t0:.0f}s")
            _each_stage_trained_once(env)
            champion = _load_champion(ml.uri, first, tmp_path)
            _no_secret_anywhere(ml.uri, s3, [first, second, champion, ml.log.read_text()])


def _each_stage_trained_once(env: dict[str, str]) -> None:
    probe = (
        "from raykd.orchestration.identity import StageStore\n"
        "from collections import Counter\n"
        f"u = StageStore({ROOT!r}).usage()\n"
        "print(sorted(Counter(e['stage_id'] for e in u if e['how'] == 'trained').values()))\n"
        "print(sorted({e['stage_id'] for e in u}) == sorted({e['stage_id'] for e in u "
        "if e['how'] == 'reused'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                         timeout=120, check=True)  # fmt: skip
    assert out.stdout.split() == ["[1,", "1]", "True"], out.stdout + out.stderr


def _load_champion(tracking: str, job_output: str, tmp_path: Path) -> str:
    """In a fresh folder, with only the tracking URI: no run root, no bucket credentials."""
    (line,) = [x for x in job_output.splitlines() if "registered as MLflow model" in x]
    name = line.split("'")[1]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAYKD_", "MLFLOW_"))}
    env |= {"MLFLOW_TRACKING_URI": tracking, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", LOAD, f"models:/{name}@champion"], env=env,
                         cwd=fresh, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0 and "champion loaded" in out.stdout, out.stdout + out.stderr
    return out.stdout + out.stderr


def _no_secret_anywhere(tracking: str, s3, outputs: list[str]) -> None:
    from mlflow import MlflowClient

    assert not [o for o in outputs if SECRET_KEY in o]
    client = MlflowClient(tracking)
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id]):
            assert SECRET_KEY not in repr(run.data.params) + repr(run.data.tags)
    listing = s3.client().list_objects_v2(Bucket=BUCKET, Prefix="runs/")["Contents"]
    for obj in listing:
        if obj["Key"].endswith((".json", ".jsonl", ".yaml")):
            body = s3.client().get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
            assert SECRET_KEY.encode() not in body, obj["Key"]
