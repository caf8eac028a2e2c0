"""Node loss: a Ray worker node dies while a 2-worker DDP stage trains on it.

Two Ray nodes on this one host, as ``scripts/two_node_smoke.sh`` starts them (``ray start
--head`` and ``ray start --address``, every port from a private free range, their own temp
dirs; ``ray stop`` is never called: only processes naming these temp dirs or carrying this
test's environment tag are stopped). The head has 2 CPUs, the worker node 1. While the job's
placement group is made, a 1-CPU actor holds one head CPU, so the 2 Train workers span both
nodes (as on a cluster whose head is busy); it is released once training runs, so the head
alone can host a restarted group. Then the worker node's raylet and every process it started
are SIGKILLed mid-teacher: the machine is gone. (The raylet alone is not a node loss on one
host: its Train worker kept training over DDP's own sockets and the stage finished without a
restart, the node being marked dead only afterwards.)"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3
HOLD = """
import sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False)
hold = ray.remote(num_cpus=1, resources={"node:__internal_head__": 0.001})(
    type("Hold", (), {"ready": lambda self: True}))
held = hold.remote()  # kept: an actor whose handle is dropped ends
ray.get(held.ready.remote())
print("held", flush=True)
time.sleep(3600)
"""


def _free_base(span: int = 300) -> int:
    """A port base B with B..B+span-1 all free on this machine."""
    for _ in range(50):
        base = random.randrange(20000, 40000, 100)
        try:
            for port in range(base, base + span):
                with socket.socket() as s:
                    s.bind(("", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range")


def _pids(needle: str, where: str = "cmdline") -> list[int]:
    """Processes whose command line (or environment) contains ``needle``."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if needle.encode() in (d / where).read_bytes().replace(b"\0", b" "):
                    found.append(int(d.name))
            except OSError:
                continue
    return found


def _children(ppid: int) -> dict[int, str]:
    """``ppid``'s child processes and their titles (a raylet's: ``ray::RayTrainWorker``...)."""
    found = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == ppid:
                    found[int(d.name)] = (d / "cmdline").read_bytes().split(b"\0")[0].decode()
            except (OSError, IndexError, ValueError):
                continue
    return found


def _kill(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


@pytest.fixture
def two_nodes():
    """(GCS address, worker node's node-manager port, env): head 2 CPUs, worker node 1."""
    b = _free_base()
    # Short paths: Ray's unix sockets live under the temp dir (a 107-byte limit).
    head_tmp = tempfile.mkdtemp(prefix="raykd-nl-head-", dir="/tmp")
    node_tmp = tempfile.mkdtemp(prefix="raykd-nl-node-", dir="/tmp")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    # Every process of this cluster inherits the tag, also those whose command line does not
    # name a temp dir (agents orphaned by a killed raylet, the client server).
    tag = env["RAYKD_NODE_LOSS_TEST"] = os.path.basename(head_tmp)
    env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.5"
    env.pop("RAY_ADDRESS", None)
    ray = str(Path(sys.executable).with_name("ray"))
    head = [ray, "start", "--head", "--num-cpus", "2", "--temp-dir", head_tmp,
            "--dashboard-host", "127.0.0.1", "--include-dashboard", "true", "--port", str(b),
            "--dashboard-port", str(b + 1), "--ray-client-server-port", str(b + 2),
            "--dashboard-agent-listen-port", str(b + 3), "--dashboard-agent-grpc-port",
            str(b + 4), "--node-manager-port", str(b + 5), "--object-manager-port", str(b + 6),
            "--runtime-env-agent-port", str(b + 7), "--metrics-export-port", str(b + 8),
            "--min-worker-port", str(b + 100), "--max-worker-port", str(b + 199),
            "--disable-usage-stats"]  # fmt: skip
    try:
        subprocess.run(head, env=env, check=True, capture_output=True, timeout=120)
        gcs = Path(head_tmp, "ray_current_cluster").read_text().strip()
        node = [ray, "start", "--address", gcs, "--num-cpus", "1", "--temp-dir", node_tmp,
                "--dashboard-agent-listen-port", str(b + 13), "--dashboard-agent-grpc-port",
                str(b + 14), "--node-manager-port", str(b + 15), "--object-manager-port",
                str(b + 16), "--runtime-env-agent-port", str(b + 17),
                "--metrics-export-port", str(b + 18), "--min-worker-port", str(b + 200),
                "--max-worker-port", str(b + 299), "--disable-usage-stats"]  # fmt: skip
        subprocess.run(node, env=env, check=True, capture_output=True, timeout=120)
        yield gcs, b + 15, env
    finally:  # only this cluster's processes
        for sig in (signal.SIGTERM, signal.SIGKILL):
            _kill(_pids(head_tmp) + _pids(node_tmp) + _pids(tag, "environ"), sig)
            time.sleep(2)
        shutil.rmtree(head_tmp, ignore_errors=True)
        shutil.rmtree(node_tmp, ignore_errors=True)


def _grid(data: Path, root: Path, gcs: str) -> list[str]:
    return [
        sys.executable, str(REPO / "jobs" / "full_grid.py"),
        "--preset", "smoke", "--datasets", str(data), "--size", "32", "32",
        "--rows", "teacher", "student", "--workers", "2", "--epochs", str(EPOCHS),
        "--precision", "fp32", "--root", str(root), "--address", gcs,
    ]  # fmt: skip


def test_trial_drivers_of_ray_train_stages_run_on_the_head(tmp_path):
    """Train's controller runs where its trial does: a trial on a worker node would die with
    it (seen: both rows failed with an ActorUnavailableError), so such trials pin the head."""
    from raykd.orchestration.cluster import TrialResources
    from raykd.orchestration.identity import StageStore
    from raykd.orchestration.job import HEAD_NODE, tune_trainable
    from raykd.orchestration.runner import StageContext

    def ctx(local: bool) -> StageContext:
        return StageContext(
            StageStore(tmp_path), None, TrialResources(2, False, 1, 1, 1), local=local
        )

    fn = test_trial_drivers_of_ray_train_stages_run_on_the_head
    assert HEAD_NODE in tune_trainable(fn, ctx(False))._resources.required_resources
    assert HEAD_NODE in tune_trainable(fn)._resources.required_resources  # no context: Train
    # Trials that train in their own process hold CPUs and may run on any node.
    assert HEAD_NODE not in tune_trainable(fn, ctx(True))._resources.required_resources


def _reference(stage_dir: Path, store: Path) -> dict:
    """The same teacher stage trained uninterrupted, in this process (the runner's local path,
    1 worker: ``data.batch_size`` is the global batch, so this is the 2-worker result)."""
    from raykd.orchestration.cluster import TrialResources
    from raykd.orchestration.identity import StageStore
    from raykd.orchestration.runner import StageContext, StageRequest, ensure_stages
    from raykd.train.config import load_config

    req = StageRequest(load_config(stage_dir / "config.yaml"))
    assert stage_dir.name == req.stage_id  # the same stage identity as the job's teacher
    ctx = StageContext(StageStore(store), None, TrialResources(1, False, 1, 1, 1), local=True)
    return ensure_stages([req], ctx)[req.stage_id].metrics["val"]


@pytest.mark.slow
@pytest.mark.ray
def test_worker_node_lost_mid_stage_job_finishes_on_the_head(tiny_data, tmp_path, two_nodes):
    """The worker group restarts on the head alone, the teacher resumes from its epoch-1
    checkpoint, the job ends rc 0 with every row trained and the teacher's result equal to an
    uninterrupted run."""
    gcs, node_port, env = two_nodes
    env = {**env, "PYTHONPATH": str(REPO)}
    root = tmp_path / "runs"
    hold = subprocess.Popen([sys.executable, "-c", HOLD, gcs], env=env, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    job, lines = None, []
    try:
        assert hold.stdout.readline().strip() == "held"
        t0 = time.time()
        job = subprocess.Popen(_grid(tiny_data, root, gcs), env=env, cwd=tmp_path, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
        reader = threading.Thread(
            target=lambda: lines.extend((time.time() - t0, x) for x in job.stdout), daemon=True
        )
        reader.start()
        while not any(p.read_text().strip() for p in root.glob("stages/teacher-*/metrics.jsonl")):
            if job.poll() is not None or time.time() - t0 > 300:
                reader.join(timeout=10)
                pytest.fail("the teacher never trained:\n" + "".join(x for _, x in lines)[-3000:])
            time.sleep(0.05)
        (raylet,) = [p for p in _pids(f"--node_manager_port={node_port}") if p in _pids("raylet")]
        node = _children(raylet)  # the node's Ray workers and agents
        assert "ray::RayTrainWorker" in node.values(), node  # rank 1 trains there
        hold.kill()  # the head can now host both workers
        _kill([raylet, *node], signal.SIGKILL)  # the machine is gone: all its processes
        t_kill = time.time() - t0
        job.wait(timeout=600)
        reader.join(timeout=10)
    finally:
        hold.kill()
        if job is not None and job.poll() is None:
            job.kill()
    out = "".join(x for _, x in lines)
    assert job.returncode == 0, out[-4000:]
    (t_resume,) = [t for t, x in lines if "(teacher): resuming" in x]
    print(f"node lost at {t_kill:.1f}s, teacher resumed {t_resume - t_kill:.1f}s later, "
          f"job ended at {lines[-1][0]:.1f}s")  # fmt: skip
    assert "(teacher) resumed from" in out and "at epoch 1" in out, out[-4000:]
    assert "2 stages trained, 0 resumed, 0 reused" in out  # both rows trained by this job
    assert "recovery: 1 stage restart(s) after a failure" in out
    (teacher,) = [p for p in root.glob("stages/teacher-*") if p.is_dir()]
    records = [json.loads(x) for x in (teacher / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1))  # each epoch once
    assert len([p for p in root.glob("stages/student-*") if p.is_dir()]) == 1
    assert all((p / "result.json").is_file() for p in root.glob("stages/*-*") if p.is_dir())
    got = json.loads((teacher / "result.json").read_text())["metrics"]["val"]
    ref = _reference(teacher, tmp_path / "reference")
    # fp32; 2 ranks vs 1 at the same global batch differ by reduction order only (~1e-7).
    assert got["psnr"] == pytest.approx(ref["psnr"], rel=1e-4)
    assert got["ssim"] == pytest.approx(ref["ssim"], rel=1e-4)
