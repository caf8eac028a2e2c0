"""A tracking server down for longer than the client's retry budget, mid-job, then back.

Real ``mlflow server`` (sqlite behind it) on a free loopback port; stages train in-process.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from raykd.orchestration.cluster import TrialResources
from raykd.orchestration.identity import StageStore
from raykd.orchestration.runner import StageContext, StageRequest, ensure_stages
from raykd.orchestration.tracking_repair import COMPLETE_TAG, PENDING_FILE
from raykd.train.config import load_config
from tests.conftest import tiny_overrides


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
            "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
            "--default-artifact-root", (self.folder / "artifacts").as_uri(),
        ]  # fmt: skip
        log = open(self.folder / "server.log", "a")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2)
                return
            except OSError:
                assert self.proc.poll() is None, (self.folder / "server.log").read_text()[-2000:]
                time.sleep(0.5)
        raise AssertionError("mlflow server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its gunicorn/uvicorn
            self.proc.wait()


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path)
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.slow
def test_outage_longer_than_retry_budget_heals_one_run_per_stage(
    server, tiny_data, tmp_path, monkeypatch, capsys
):
    from raykd.orchestration.job import Job, finish_job
    from raykd.tracking import Tracking
    from raykd.tracking import schema as S

    # The driver's own calls keep MLflow's default budget; the stages' is short (seconds).
    tracking = Tracking(server.uri, "outage")
    job_run = tracking.start_run("job", tags={S.TAG_ROLE: "job"})
    store = StageStore(tmp_path / "root")
    ctx = StageContext(store, tracking, TrialResources(1, False, 1, 1, 1), job_run, local=True)

    def cfg(kind: str, **extra: str):
        over = {"optim.epochs": "3", **extra}
        return load_config(None, tiny_overrides(tiny_data, Path("unused"), kind, **over))

    teacher = StageRequest(cfg("teacher"))
    kd = StageRequest(
        cfg("kd", **{"kd.method": "at", "teacher_checkpoint": "set-by-the-runner"}),
        teacher.stage_id,
    )
    # A failed earlier attempt of the teacher left an empty run behind (an orphan).
    tags = {S.TAG_ROLE: "stage", S.TAG_STAGE_ID: teacher.stage_id}
    orphan = tracking.start_run("orphan", tags=tags)
    tracking.end_run(orphan, "KILLED")

    server.stop()  # down for the whole training: far past the stages' retry budget
    t0 = time.time()
    records = ensure_stages([teacher, kd], ctx)
    trained_in = time.time() - t0
    assert set(records) == {teacher.stage_id, kd.stage_id}  # training went on without MLflow
    assert trained_in < 120, f"training stalled {trained_in:.0f}s on the dead server"
    for rec in records.values():
        assert (Path(rec.output_dir) / PENDING_FILE).is_file()
    err = capsys.readouterr().err
    assert "WARNING: MLflow at" in err and "trains on" in err

    server.start()  # back: the job's end writes what is missing
    job = Job("outage", store.root, ctx, tracking, job_run, t0)
    summary = finish_job(job, [])
    out = capsys.readouterr().out
    recovery = summary.recovery
    assert set(recovery["tracking_failed"]) == set(recovery["tracking_repaired"]) == set(records)
    assert recovery["tracking_pending"] == []
    assert "2 stage run(s) repaired from the stage files" in out, out
    client = tracking.client
    for sid, rec in records.items():
        runs = tracking.runs(f"tags.`{S.TAG_STAGE_ID}` = '{sid}'")
        assert len(runs) == 1, (sid, [r.info.run_id for r in runs])  # the orphan is gone
        run = runs[0]
        assert run.info.status == "FINISHED" and run.data.tags[COMPLETE_TAG] == "1"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert sorted(steps) == [1, 2, 3]  # every epoch once
        assert "final_val_psnr" in run.data.metrics
        assert not (Path(rec.output_dir) / PENDING_FILE).exists()
    kd_run = tracking.runs(f"tags.`{S.TAG_STAGE_ID}` = '{kd.stage_id}'")[0]
    teacher_run = tracking.runs(f"tags.`{S.TAG_STAGE_ID}` = '{teacher.stage_id}'")[0]
    assert kd_run.data.tags[S.TAG_TEACHER_RUN] == teacher_run.info.run_id  # lineage rebuilt
    assert client.get_run(job_run).data.metrics["tracking_repaired"] == 2
