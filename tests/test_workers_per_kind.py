"""Workers per stage kind (issue 26): a 2-worker teacher and a 1-worker KD student in one job,
visible in MLflow, and the job's timeline artifact read back from the stage folders."""

from __future__ import annotations

import json

from raykd.orchestration.preflight import check_stages
from raykd.plan.cost import parse_workers
from raykd.plan.rows import grid_rows
from tests.conftest import tiny_grid


def test_preflight_refuses_a_batch_per_kind(tiny_data):
    spec = tiny_grid(tiny_data, rows=["std_kd"], batch_size=2)
    problems = check_stages(spec, grid_rows(spec), parse_workers("teacher=2,kd=3"))
    assert len(problems) == 1, problems
    assert problems[0].startswith("--workers kd=3: the global batch of")
    assert "cannot be split evenly over 3 workers" in problems[0]
    assert check_stages(spec, grid_rows(spec), parse_workers("teacher=2,kd=1")) == []


def test_teacher_on_two_workers_student_on_one(ray_session, tiny_data, tmp_path):
    from raykd.orchestration.grid import run_rows
    from raykd.orchestration.job import finish_job, start_job
    from raykd.orchestration.timeline import log_timeline

    spec = tiny_grid(tiny_data, rows=["std_kd"], batch_size=2, workers={"teacher": 2, "kd": 1})
    workers = parse_workers(spec.workers)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = start_job(
        "grid-workers",
        {"workers_per_kind": "teacher=2,kd=1"},
        root=tmp_path,
        tracking_uri=uri,
        experiment="workers",
        workers=workers,
    )
    assert "teacher 2 × 1 CPU" in job.resources.describe()
    assert "kd 1 × 2 CPU" in job.resources.describe()
    (record,) = run_rows(spec, grid_rows(spec), job.ctx)
    stats = log_timeline(job)
    finish_job(job, [], quiet=True)
    runs = job.tracking.runs("tags.`raykd.role` = 'stage'")
    world = {r.data.tags["raykd.kind"]: r.data.params["compute.world_size"] for r in runs}
    assert world == {"teacher": "2", "kd": "1"}
    assert record.compute["compute.world_size"] == "1"
    # The timeline: both stages, the KD student after its teacher, logged on the job run.
    job_run = job.tracking.client.get_run(job.run_id)
    assert job_run.data.params["workers_per_kind"] == "teacher=2,kd=1"
    assert stats["stages"] == 2 and stats["peak_concurrency"] == 1
    assert stats["makespan_over_critical_path"] >= 1.0  # the KD student waited for its teacher
    arts = {a.path for a in job.tracking.client.list_artifacts(job.run_id, "timeline")}
    assert any(p.endswith("-timeline.png") for p in arts), arts
    timeline = json.loads(next(tmp_path.glob("*-timeline.json")).read_text())
    kinds = [s["kind"] for s in timeline["stages"]]
    assert kinds == ["teacher", "kd"]
    teacher, kd = timeline["stages"]
    assert kd["start"] >= teacher["end"] and teacher["world_size"] == 2 and kd["node"]
    assert job_run.data.metrics["schedule.peak_concurrency"] == 1.0
