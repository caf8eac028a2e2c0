"""Ray/Tune/MLflow layer with a real local Ray (one per session) and real sqlite MLflow.

Most runs train in-process (``local_train``) to keep the suite fast; the killed-worker resume
uses real Ray Train workers (DDP equivalence of every stage kind: tests/test_ddp.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from raykd.orchestration.cluster import TrialResources
from raykd.orchestration.identity import StageStore
from raykd.orchestration.messages import FaultInjection
from raykd.orchestration.runner import StageContext
from raykd.plan.identity import stage_identity
from raykd.plan.rows import Row, row_label
from raykd.plan.stages import stage_config
from raykd.tracking import Tracking
from raykd.tracking import schema as S
from raykd.train.checkpoint import load_checkpoint
from tests.conftest import tiny_grid

ONE_CPU = TrialResources(workers=1, use_gpu=False, cpus_per_worker=1, concurrency=1, threads=1)


def _row(kind="std_kd", method="at", seed=42, dataset="d", student_depth=2) -> Row:
    return Row(
        dataset=dataset,
        acceleration=3.0,
        seed=seed,
        kind=kind,
        student_depth=student_depth,
        method=method,
    )


def test_stage_identity(tiny_data):
    spec = tiny_grid(tiny_data)
    t42 = stage_config(spec, _row(seed=42), "teacher")
    t43 = stage_config(spec, _row(seed=43), "teacher")
    assert stage_identity(t42) != stage_identity(t43)  # seed is part of the identity
    # Where and how it is shown is not.
    moved = t42.model_copy(update={"output_dir": "/elsewhere", "progress": True})
    assert stage_identity(moved) == stage_identity(t42)
    # A teacher does not depend on the student depth; an SFT teacher does.
    d3 = stage_config(spec, _row(student_depth=3), "teacher")
    assert stage_identity(d3) == stage_identity(t42)
    sft2 = stage_config(spec, _row(), "sft")
    sft3 = stage_config(spec, _row(student_depth=3), "sft")
    assert stage_identity(sft2) != stage_identity(sft3)
    kd_at = stage_config(spec, _row(method="at"), "kd")
    kd_sp = stage_config(spec, _row(method="sp"), "kd")
    assert stage_identity(kd_at, "teacher-a") != stage_identity(kd_sp, "teacher-a")
    assert stage_identity(kd_at, "teacher-a") != stage_identity(kd_at, "teacher-b")
    with pytest.raises(ValueError):
        stage_identity(kd_at)


def test_kd_identity_tracks_loss_definitions(tiny_data, monkeypatch):
    """A KD stage trained under other loss formulas is never reused; other kinds are unaffected."""
    from raykd.plan import identity

    spec = tiny_grid(tiny_data)
    kd = stage_config(spec, _row(method="at"), "kd")
    teacher = stage_config(spec, _row(), "teacher")
    before = stage_identity(kd, "teacher-a"), stage_identity(teacher)
    monkeypatch.setattr(identity, "KD_LOSS_DEFINITIONS", identity.KD_LOSS_DEFINITIONS + 1)
    assert stage_identity(kd, "teacher-a") != before[0]
    assert stage_identity(teacher) == before[1]


def _history(record) -> list[dict]:
    text = (Path(record.output_dir) / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def _tracking(tmp_path, name="t"):
    return Tracking(f"sqlite:///{tmp_path / 'mlflow.db'}", name, tmp_path / "artifacts")


def _stage_runs(tracking, kind):
    return tracking.runs(f"tags.`{S.TAG_KIND}` = '{kind}' and tags.`{S.TAG_ROLE}` = 'stage'")


@pytest.mark.ray
def test_grid_trains_teacher_once_and_reuses_it(ray_session, tiny_data, tmp_path, monkeypatch):
    from raykd.orchestration.grid import run_grid
    from raykd.orchestration.job import finish_job, start_job

    spec = tiny_grid(tiny_data, rows=["std_kd"], methods=["at", "sp"])
    kwargs = dict(root=tmp_path, experiment="grid", local_train=True)
    job = start_job("grid-test", {"test": 1}, **kwargs)
    rows = run_grid(spec, job)
    summary = finish_job(job, rows)
    assert [r.label.split("/")[-1] for r in rows] == ["at", "sp"]
    assert all(r.ok and r.psnr > 0 for r in rows)
    teachers = _stage_runs(job.tracking, "teacher")
    kds = _stage_runs(job.tracking, "kd")
    assert len(teachers) == 1 and len(kds) == 2  # trained exactly once, used by both trials
    teacher_run = teachers[0]
    assert teacher_run.data.tags[S.TAG_STAGE_ID].startswith("teacher-")
    for kd in kds:  # lineage: each KD run names its teacher's run
        assert kd.data.tags[S.TAG_TEACHER_RUN] == teacher_run.info.run_id
        assert kd.data.tags[S.TAG_ROW] == "std_kd"
        assert kd.data.tags[S.PARENT_TAG if hasattr(S, "PARENT_TAG") else "mlflow.parentRunId"]
        assert "final_val_psnr" in kd.data.metrics
    assert summary.stages_trained == 3 and summary.stages_reused == 0
    for run in [teacher_run, *kds]:  # how many ranks, and which batches, trained each stage
        params = run.data.params
        assert params["compute.world_size"] == "1", run.info.run_name
        assert params["compute.global_batch"] == params["compute.rank_batch"] == "2"
    # The summary says how they computed (tiny_grid pins fp32: the same on every CPU).
    (path, n), *_ = summary.compute_paths.items()
    assert len(summary.compute_paths) == 1 and path.startswith("fp32/contiguous on ") and n == 3
    # The best student is in the model registry and loads back as a working model.
    reg = summary.registered_model
    best = max(rows, key=lambda r: r.psnr)
    assert reg.run_id == best.mlflow_run_id
    import mlflow.pytorch

    # mlflow.set_tracking_uri also exports $MLFLOW_TRACKING_URI, which every later job of the
    # session (and its subprocesses) would then log into: scope it to this test.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", job.tracking.uri)
    mlflow.set_tracking_uri(job.tracking.uri)
    # A torch.export program (MLflow's pt2) with one packed [B, 4, H, W] input, any batch size.
    model = mlflow.pytorch.load_model(f"models:/{reg.name}@champion")
    assert not isinstance(model, torch.jit.ScriptModule)
    assert model(torch.rand(3, 4, 32, 32)).shape == (3, 1, 32, 32)
    artifacts = {a.path for a in job.tracking.client.list_artifacts(kds[0].info.run_id)}
    assert {"eval", "examples", "checkpoints", "config.yaml"} <= artifacts
    # Running the job again trains nothing: every stage is found by its identity.
    job2 = start_job("grid-test", {"test": 2}, **kwargs)
    rows2 = run_grid(spec.model_copy(update={"trial_unit": "seed"}), job2)  # one trial, 2 rows
    summary2 = finish_job(job2, rows2)
    assert summary2.stages_trained == 0 and summary2.stages_reused >= 3
    assert len(_stage_runs(job2.tracking, "teacher")) == 1
    assert [r.psnr for r in rows2] == [r.psnr for r in rows]


@pytest.mark.ray
def test_optuna_search_logs_trials_under_parent(ray_session, tiny_data, tmp_path):
    import optuna

    from raykd.orchestration.job import finish_job, start_job
    from raykd.orchestration.search import run_search, search_rows
    from raykd.plan.search_space import SearchSpec

    search = SearchSpec.model_validate(
        {
            "name": "t",
            "row": "std_kd",
            "num_samples": 3,
            "objectives": [{"metric": "val_psnr", "mode": "max"}],
            "scheduler": {"type": "asha"},
            "params": {
                "method": {"choices": ["at", "sp"]},
                "kd_weight_scale": {"loguniform": [0.1, 10.0]},
            },
        }
    )
    base = tiny_grid(tiny_data, seeds=2)  # each trial: both seeds, objective = their mean
    job = start_job("search-test", {}, root=tmp_path, experiment="search", local_train=True)
    out = run_search(search, base, job, resume=False)
    finish_job(job, search_rows(out))
    assert len(out.trials) == 3 and out.best is not None
    trials = job.tracking.runs(f"tags.`{S.TAG_ROLE}` = 'trial'")
    assert len(trials) == 3
    finished = [r for r in trials if r.info.status == "FINISHED"]
    assert finished  # the rest were stopped early by ASHA and closed as KILLED
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == job.run_id
        assert "kd_weight_scale" in run.data.params
        assert run.info.status in ("FINISHED", "KILLED")
        assert ("val_psnr" in run.data.metrics) == (run.info.status == "FINISHED")
    # The plain teacher is shared by every trial: trained once per seed.
    teachers = _stage_runs(job.tracking, "teacher")
    assert sorted(r.data.tags[S.TAG_SEED] for r in teachers) == ["42", "43"]
    for t in out.trials:
        if not t.error and t.report is not None:
            assert len(t.report.stage_id.split(",")) == 2
    study = optuna.load_study(study_name=out.study_name, storage=out.storage)
    assert len(study.trials) == 3
    assert study.metric_names == ["val_psnr"]  # figures and optuna-dashboard name the objective
    # Early stopping is reported as such, never as a failure; trial runs are named by params.
    import re

    for t in out.trials:
        assert t.error is None
        assert (t.value("val_psnr") is None) == bool(t.stopped), t
        if t.stopped:
            assert re.fullmatch(r"stopped at epoch \d+ by ASHA", t.stopped), t
    for run in trials:
        assert run.info.run_name.startswith("method=") and "kd_weight_scale=" in run.info.run_name
        if run.info.status == "KILLED":
            assert run.data.tags["raykd.stopped"].startswith("stopped at epoch")
    # A stopped trial's unfinished KD stage run says so too (not FAILED).
    kd_runs = _stage_runs(job.tracking, "kd")
    assert all(r.info.status in ("FINISHED", "KILLED") for r in kd_runs), [
        (r.info.run_name, r.info.status) for r in kd_runs
    ]
    for r in kd_runs:
        if r.info.status == "KILLED":
            assert r.data.tags["raykd.stopped"].startswith("stopped at epoch")
    # The report on the search: the best trial's own stages and the teachers they learned from.
    from raykd.report.collect import collect

    with collect(job.tracking.uri, parent_run_id=job.run_id) as runs:
        kept = {r: runs.frame.set_index("run_id").loc[r] for r in runs.frame["run_id"]}
    best_trial = job.tracking.client.get_run(
        job.tracking.client.get_run(job.run_id).data.tags["raykd.best_run_id"]
    )
    kd_ids = set(best_trial.data.tags["raykd.kd_run_id"].split(","))
    assert {r for r, row in kept.items() if row["kind"] == "kd"} == kd_ids
    lineage = {job.tracking.client.get_run(k).data.tags[S.TAG_TEACHER_RUN] for k in kd_ids}
    assert {r for r, row in kept.items() if row["kind"] != "kd"} == lineage
    # Extending the persisted study: a new search with the same name adds to it.
    more = search.model_copy(update={"num_samples": 1})
    run_search(more, base, job, resume=False)
    assert len(optuna.load_study(study_name=out.study_name, storage=out.storage).trials) == 4


@pytest.mark.ray
@pytest.mark.parametrize("when", ["after_report", "before_report"])
def test_chain_resumes_after_killed_worker(ray_session, tiny_data, tmp_path, when):
    """Teacher -> KD in one Ray Train run; a worker dies mid-KD; nothing is retrained.

    ``before_report``: killed after epoch 1 is in metrics.jsonl and MLflow but before its
    checkpoint reached Ray, so epoch 1 trains again: still one record and one step per epoch."""
    from raykd.orchestration.runner import StageRequest, ensure_stages

    spec = tiny_grid(tiny_data, epochs={"teacher": 2, "sft": 1, "student": 1, "kd": 3})
    row = _row(dataset=str(tiny_data))
    teacher = StageRequest(stage_config(spec, row, "teacher"))
    kd = StageRequest(stage_config(spec, row, "kd"), teacher.stage_id)
    marker = tmp_path / "killed"
    ctx = StageContext(
        StageStore(tmp_path / "killed_run"),
        _tracking(tmp_path),
        ONE_CPU,
        fault_injection=FaultInjection(
            kill_after_epoch=1, marker=str(marker), kind="kd", when=when
        ),
    )
    records = ensure_stages([teacher, kd], ctx)
    assert marker.exists()  # the worker really was killed once, during the KD stage
    t_rec, kd_rec = records[teacher.stage_id], records[kd.stage_id]
    assert [h["epoch"] for h in _history(kd_rec)] == [1, 2, 3]  # one record per epoch
    client = ctx.tracking.client
    steps = [m.step for m in client.get_metric_history(kd_rec.mlflow_run_id, "train_loss")]
    assert sorted(steps) == [1, 2, 3], steps
    # The teacher finished before the failure and was not trained again after the restart.
    assert len(client.get_metric_history(t_rec.mlflow_run_id, "train_loss")) == 2
    kd_run = client.get_run(kd_rec.mlflow_run_id)
    assert kd_run.info.status == "FINISHED"
    assert kd_run.data.tags[S.TAG_TEACHER_RUN] == t_rec.mlflow_run_id  # lineage inside a chain
    assert kd_rec.teacher_stage == t_rec.stage_id
    # Same result as an uninterrupted run (in-process, same seed and threads).
    ref_ctx = StageContext(StageStore(tmp_path / "ref"), None, ONE_CPU, local=True)
    ref = ensure_stages([teacher, kd], ref_ctx)[kd.stage_id]
    a = load_checkpoint(kd_rec.best_checkpoint)["model"]
    b = load_checkpoint(ref.best_checkpoint)["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # Asking again trains nothing.
    again = ensure_stages([teacher, kd], ctx)
    assert again[kd.stage_id].finished_at == kd_rec.finished_at


def test_row_labels(tiny_data):
    assert row_label(_row()) == "d/3x/s42/std_kd/D2/at"


def test_equal_compute_control_epochs(tiny_data, tmp_path):
    """The control student trains for SFT + KD epochs and is tagged as its own row."""
    from raykd.orchestration.grid import run_row

    spec = tiny_grid(tiny_data, epochs={"teacher": 1, "sft": 2, "student": 1, "kd": 1})
    ctx = StageContext(StageStore(tmp_path / "s"), _tracking(tmp_path), ONE_CPU, local=True)
    record = run_row(spec, _row(kind="equal_compute", method=None, dataset=str(tiny_data)), ctx)
    assert [h["epoch"] for h in _history(record)] == [1, 2, 3]
    run = ctx.tracking.client.get_run(record.mlflow_run_id)
    assert run.data.tags[S.TAG_ROW] == "equal_compute" and run.data.tags[S.TAG_KIND] == "student"
    plain = run_row(spec, _row(kind="student", method=None, dataset=str(tiny_data)), ctx)
    assert plain.stage_id != record.stage_id and len(_history(plain)) == 1


def test_unreachable_ray_and_mlflow_fail_fast(monkeypatch):
    import time

    from raykd.errors import RaykdError
    from raykd.orchestration.cluster import _probe

    t0 = time.perf_counter()
    with pytest.raises(RaykdError, match="cannot reach a Ray cluster at 127.0.0.1:9"):
        _probe("127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(RaykdError, match="MLflow tracking store http://127.0.0.1:9 cannot be"):
        Tracking("http://127.0.0.1:9", "x")
    assert time.perf_counter() - t0 < 60


KILLED_SEARCH = """
import sys
# First, before anything imports Ray: the session's Ray listens on loopback only, and a Ray
# imported without raykd's single-node switch would rewrite 127.0.0.1 to the machine's address.
from raykd.orchestration.cluster import loopback_only
loopback_only()
from raykd.orchestration.job import start_job
from raykd.orchestration.search import run_search
from raykd.plan.search_space import SearchSpec
from tests.conftest import tiny_grid

address, root, data, spec = sys.argv[1:5]
job = start_job("search-kill", {}, root=root, experiment="search", local_train=True,
                address=address)
base = tiny_grid(data, epochs={"teacher": 1, "sft": 1, "student": 1, "kd": 4})
run_search(SearchSpec.model_validate_json(spec), base, job, resume=False)
"""


@pytest.mark.ray
def test_search_restores_after_driver_is_killed(ray_session, tiny_data, tmp_path):
    """SIGKILL the search driver after its first trial; the next run restores the Tune
    experiment (Tuner.restore) and finishes the search instead of starting over."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from raykd.orchestration.job import finish_job, start_job
    from raykd.orchestration.search import run_search
    from raykd.plan.search_space import SearchSpec

    search = SearchSpec.model_validate(
        {
            "name": "killed",
            "row": "std_kd",
            "num_samples": 3,
            "objectives": [{"metric": "val_psnr", "mode": "max"}],
            "scheduler": {"type": "none"},
            "params": {"kd_weight_scale": {"loguniform": [0.1, 10.0]}},
        }
    )
    address = ray_session.get_runtime_context().gcs_address
    repo = Path(__file__).resolve().parents[1]
    driver = subprocess.Popen(
        [
            sys.executable,
            "-c",
            KILLED_SEARCH,
            address,
            str(tmp_path),
            str(tiny_data),
            search.model_dump_json(),
        ],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
        start_new_session=True,
    )
    experiment = tmp_path / "tune" / "raykd-killed"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:  # wait for one finished trial in the saved state
            done = [p for p in experiment.glob("*/result.json") if "val_psnr" in p.read_text()]
            if done and list(experiment.glob("experiment_state-*.json")):
                break
            assert driver.poll() is None, "the search driver exited before it was killed"
            time.sleep(0.5)
        else:
            pytest.fail("no trial finished within 240 s")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    job = start_job("search-kill", {}, root=tmp_path, experiment="search", local_train=True)
    base = tiny_grid(tiny_data, epochs={"teacher": 1, "sft": 1, "student": 1, "kd": 4})
    out = run_search(search, base, job, resume=True)
    finish_job(job, [])
    assert len(out.trials) == 3  # the restored experiment, not a new one of 3 more
    assert all(t.value("val_psnr") is not None and not t.error for t in out.trials)
    # One MLflow run per stage: nothing finished before the kill was trained again. (How
    # many KD stages there are depends on where the kill fell relative to Tune's periodic
    # experiment snapshot: a trial the snapshot missed is sampled anew.)
    kds = _stage_runs(job.tracking, "kd")
    assert len({r.data.tags[S.TAG_STAGE_ID] for r in kds}) == len(kds) >= 3
    teachers = [
        (r.data.tags[S.TAG_STAGE_ID], r.info.status, r.data.tags.get("mlflow.parentRunId"))
        for r in _stage_runs(job.tracking, "teacher")
    ]
    assert len(teachers) == 1, teachers


@pytest.mark.slow
def test_registering_a_model_leaves_the_tracking_uri_alone(tmp_path, monkeypatch):
    """A finished job must not redirect the next job of the process to its store."""
    import os

    from raykd.models.dccnn import DCCNN

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking = _tracking(tmp_path)
    run_id = tracking.start_run("r")
    from raykd.deploy.registry import register_model

    assert register_model(tracking, run_id, DCCNN(2, 1, 2), "m") == "1"
    assert register_model(tracking, run_id, DCCNN(2, 1, 2), "m") == "1"  # once per run
    assert "MLFLOW_TRACKING_URI" not in os.environ


def _register_in_subprocess(db: str, artifacts: str, run_id: str, barrier) -> str:
    from raykd.deploy.registry import register_model
    from raykd.models.dccnn import DCCNN
    from raykd.tracking import Tracking

    tracking = Tracking(f"sqlite:///{db}", "t", artifacts)
    barrier.wait()
    return register_model(tracking, run_id, DCCNN(2, 1, 2), "m")


@pytest.mark.slow
def test_two_jobs_registering_the_same_run_at_once_add_one_version(tmp_path):
    """Two jobs that reuse the same best stage and finish together register it once."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    tracking = _tracking(tmp_path)
    run_id = tracking.start_run("r")
    ctx = mp.get_context("spawn")
    barrier = ctx.Manager().Barrier(2)
    args = (str(tmp_path / "mlflow.db"), str(tmp_path / "artifacts"), run_id, barrier)
    with ProcessPoolExecutor(2, mp_context=ctx) as pool:
        versions = list(pool.map(_register_in_subprocess, *zip(args, args, strict=True)))
    assert versions == ["1", "1"]
    assert len(tracking.client.search_model_versions("name='m'")) == 1
