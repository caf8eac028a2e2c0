"""SIGTERM to a running grid: one line, exit 143, job run KILLED; the rerun counts honestly.

A real job in a subprocess (private local Ray, real MLflow sqlite store) on the tiny fixture
volumes, killed as soon as its first stage has finished.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _grid(tiny_data: Path, root: Path) -> list[str]:
    return [
        sys.executable,
        str(REPO / "jobs" / "full_grid.py"),
        "--preset", "smoke", "--datasets", str(tiny_data), "--size", "32", "32",
        "--rows", "teacher", "student", "std_kd", "--methods", "at", "sp",
        "--epochs", "2", "--root", str(root), "--address", "local", "--local-train",
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.ray
def test_sigterm_ends_the_job_cleanly_and_the_rerun_counts_honestly(tiny_data, tmp_path):
    import mlflow

    root = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    # mlflow.set_tracking_uri (called in-process by earlier tests) exports MLFLOW_TRACKING_URI,
    # which would send this job to another store than the one under its --root.
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        _grid(tiny_data, root), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, cwd=tmp_path,
    )  # fmt: skip
    deadline = time.time() + 300
    while not list(root.glob("stages/*/result.json")):
        assert proc.poll() is None and time.time() < deadline, "no stage finished"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-3000:]
    assert "Traceback" not in out and "SIGTERM received" not in out, out[-3000:]
    (line,) = [x for x in out.splitlines() if x.startswith("full_grid.py: interrupted")]
    assert "interrupted by SIGTERM:" in line and "stages finished during this job" in line
    assert "rerun to resume" in line and "jobs/full_grid.py --preset smoke" in line
    finished = {p.parent.name for p in root.glob("stages/*/result.json")}
    cut = {p.parent.name for p in root.glob("stages/*/last.pt")} - finished  # resumes
    client = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")
    (exp,) = [e for e in client.search_experiments() if e.name == "raykd-smoke"]
    (killed,) = client.search_runs([exp.experiment_id], "tags.`raykd.role` = 'job'")
    assert killed.info.status == "KILLED"

    rerun = subprocess.run(
        _grid(tiny_data, root), env=env, capture_output=True, text=True, cwd=tmp_path,
        timeout=600,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = [x for x in rerun.stdout.splitlines() if x.startswith("== grid-smoke")]
    stages = 4  # teacher, student, two KD students
    reused = len(finished)
    assert summary == [
        f"== grid-smoke: 4 rows in {summary[0].split(' in ')[1].split(';')[0]}; "
        f"{stages - reused - len(cut)} stages trained, {len(cut)} resumed, {reused} reused =="
    ], rerun.stdout[-2000:]
    # The rerun's job tree lists every row's stage, whichever job trained it.
    runs = client.search_runs([exp.experiment_id], "tags.`raykd.role` = 'job'")
    job2 = next(r for r in runs if r.info.status == "FINISHED")
    children = client.search_runs(
        [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{job2.info.run_id}'"
    )
    ids = {c.data.tags.get("raykd.stage_id") or c.data.tags.get("raykd.reused_stage")
           for c in children}  # fmt: skip
    assert len(ids - {None}) == stages and finished <= ids
