"""MLflow a person can read, across tracking stores, with concurrent writers.

Real Ray (one per session), real sqlite MLflow stores, stages trained in-process.
"""

from __future__ import annotations

import re
import time

import pytest

from raykd.orchestration.stage_runs import TAG_SOURCE_RUN
from raykd.tracking import schema as S
from raykd.tracking.mlflow_store import EXPERIMENT_KIND_TAG, NOTE_TAG, PARENT_TAG
from tests.conftest import tiny_grid

BARE_HASH = re.compile(r"^([a-z_]+-)?[0-9a-f]{8,}$")


def _children(tracking, run_id):
    return tracking.runs(f"tags.`{PARENT_TAG}` = '{run_id}'")


def _stage_runs(tracking, kind=None):
    extra = f" and tags.`{S.TAG_KIND}` = '{kind}'" if kind else ""
    return tracking.runs(f"tags.`{S.TAG_ROLE}` = 'stage'{extra}")


@pytest.mark.ray
def test_reuse_across_tracking_stores_names_tree_and_registry(
    ray_session, tiny_data, tmp_path, monkeypatch
):
    from raykd.orchestration.grid import run_grid
    from raykd.orchestration.job import finish_job, start_job

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = tiny_grid(tiny_data, rows=["teacher", "std_kd"], methods=["at"])
    first = f"sqlite:///{tmp_path / 'first.db'}"
    second = f"sqlite:///{tmp_path / 'second.db'}"

    def job(uri: str):
        j = start_job(
            "grid-t",
            {},
            root=tmp_path,
            experiment="e",
            local_train=True,
            tracking_uri=uri,
            run_name="tiny",
        )
        rows = run_grid(spec, j)
        before = time.time()
        return j, rows, finish_job(j, rows), before

    j1, rows1, s1, _ = job(first)
    assert s1.stages_trained == 2 and s1.registered_model.version == "1"
    # Names say what a run is; the experiment opens on MLflow 3's training-runs view.
    exp = j1.tracking.client.get_experiment(j1.tracking.experiment_id)
    assert exp.tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    names = {r.info.run_name for r in j1.tracking.runs()}
    assert not [n for n in names if BARE_HASH.match(n)], names
    assert any(re.fullmatch(r"tiny-\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", n) for n in names), names
    kd_name = _stage_runs(j1.tracking, "kd")[0].info.run_name
    assert kd_name == f"std_kd-at-D2C2 · {tiny_data.name}-3x-s42", kd_name  # distinguishing first
    job_run = j1.tracking.client.get_run(j1.run_id)
    note = job_run.data.tags[NOTE_TAG]
    assert "| row |" in note and note.count("**best**") == 1 and "std_kd" in note
    best = max((r for r in rows1 if r.row.kind == "std_kd"), key=lambda r: r.psnr)
    assert job_run.data.metrics["best_val_psnr"] == pytest.approx(best.psnr)
    figures = {a.path for a in j1.tracking.client.list_artifacts(j1.run_id, "figures")}
    assert any(f.endswith("-results.png") for f in figures), figures

    # A new tracking store over the same --root: nothing retrains, nothing dies; the finished
    # stages are re-registered there with metrics, params, artifacts and lineage.
    j2, rows2, s2, before2 = job(second)
    assert s2.stages_trained == 0 and s2.stages_reused == 2
    assert [r.psnr for r in rows2] == [r.psnr for r in rows1]
    teacher = _stage_runs(j2.tracking, "teacher")
    kd = _stage_runs(j2.tracking, "kd")
    assert len(teacher) == 1 and len(kd) == 1
    t_run, kd_run = teacher[0], kd[0]
    assert kd_run.data.tags[S.TAG_TEACHER_RUN] == t_run.info.run_id
    assert kd_run.data.tags[TAG_SOURCE_RUN] == rows1[-1].mlflow_run_id
    assert kd_run.data.params["kind"] == "kd" and "final_val_psnr" in kd_run.data.metrics
    history = j2.tracking.client.get_metric_history(kd_run.info.run_id, "val_psnr")
    assert [m.step for m in history] == [1]  # one epoch, as trained
    artifacts = {a.path for a in j2.tracking.client.list_artifacts(kd_run.info.run_id)}
    assert {"eval", "checkpoints", "config.yaml"} <= artifacts
    assert {r.info.run_id for r in _children(j2.tracking, j2.run_id)} >= {
        t_run.info.run_id,
        kd_run.info.run_id,
    }
    assert s2.registered_model.run_id == kd_run.info.run_id
    # Registering leaves the run's end time (its duration) alone.
    assert j2.tracking.client.get_run(kd_run.info.run_id).info.end_time / 1000 <= before2

    # Again in the second store: no second re-registration, no new model version; the job's
    # tree still shows every row, as light links to the runs that trained them.
    j3, _, s3, _ = job(second)
    assert len(_stage_runs(j3.tracking)) == 2
    assert s3.registered_model.version == s2.registered_model.version == "1"
    links = _children(j3.tracking, j3.run_id)
    assert sorted(r.data.tags[TAG_SOURCE_RUN] for r in links) == sorted(
        [t_run.info.run_id, kd_run.info.run_id]
    )
    assert all(r.data.tags[S.TAG_ROLE] == "reuse" for r in links)
    assert all("final_val_psnr" in r.data.metrics for r in links)
    assert all(r.info.run_name.startswith("reused: ") for r in links)
    mv = j3.tracking.client.get_model_version_by_alias("e-student", "champion")
    assert mv.run_id == kd_run.info.run_id


def _writer(uri: str, experiment: str, barrier, n: int, queue) -> None:
    """One process: open the store at the same moment as the others, then write metrics."""
    from raykd.tracking import Tracking

    barrier.wait()
    tracking = Tracking(uri, experiment)
    run_id = tracking.start_run(f"writer-{experiment}")
    for step in range(n):
        tracking.log_metrics(run_id, {"m": float(step), "other": 1.0}, step=step)
    tracking.end_run(run_id)
    queue.put(run_id)


@pytest.mark.slow
def test_concurrent_jobs_on_a_fresh_store_lose_no_writes(tmp_path):
    """Four processes create one fresh sqlite store at once (MLflow's schema migration races
    without the store lock) and write at once; every metric arrives."""
    import multiprocessing as mp

    from raykd.tracking import Tracking

    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    ctx = mp.get_context("spawn")
    barrier, queue, n = ctx.Barrier(4), ctx.Queue(), 40
    procs = [
        ctx.Process(target=_writer, args=(uri, f"job{i % 2}", barrier, n, queue)) for i in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    run_ids = [queue.get(timeout=5) for _ in procs]
    tracking = Tracking(uri, "job0")
    for run_id in run_ids:
        history = tracking.client.get_metric_history(run_id, "m")
        assert sorted(int(m.step) for m in history) == list(range(n))
    names = {e.name for e in tracking.client.search_experiments()}
    assert {"job0", "job1"} <= names


def test_locked_database_is_retried():
    from raykd.tracking.mlflow_store import with_retry

    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert with_retry(flaky) == "ok" and len(calls) == 3
    with pytest.raises(ValueError):  # anything else is not retried
        with_retry(lambda: (_ for _ in ()).throw(ValueError("bad")))


def test_unregistrable_stage_says_what_to_do(tmp_path):
    """A finished stage unknown to the store whose directory lost its config: one line."""
    from raykd.errors import RaykdError
    from raykd.orchestration.identity import StageRecord, StageStore
    from raykd.orchestration.stage_runs import resolve_run
    from raykd.tracking import Tracking

    store = StageStore(tmp_path / "root")
    out = store.stage_dir("teacher-0123456789ab")
    out.mkdir(parents=True)
    record = StageRecord(
        stage_id="teacher-0123456789ab",
        kind="teacher",
        output_dir=str(out),
        best_checkpoint=str(out / "best.pt"),
        best_val_loss=0.1,
        best_epoch=0,
        mlflow_run_id="0" * 32,
    )
    tracking = Tracking(f"sqlite:///{tmp_path / 'other.db'}", "e")
    with pytest.raises(RaykdError, match="cannot be re-registered .* pass --tracking-uri") as err:
        resolve_run(record, store, tracking, None)
    assert "\n" not in str(err.value)


def test_params_keep_up_to_mlflows_limit(tmp_path):
    """A long parameter (a KD method list, a path) is stored whole up to MLflow's own limit
    (6000 characters), and cut there beyond it, not at an arbitrary shorter length."""
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    from raykd.tracking.mlflow_store import PARAM_VALUE_LIMIT, Tracking

    assert PARAM_VALUE_LIMIT == MAX_PARAM_VAL_LENGTH
    tracking = Tracking(f"sqlite:///{tmp_path / 'p.db'}", "params")
    long, longer = "x" * 3000, "y" * (PARAM_VALUE_LIMIT + 50)
    run_id = tracking.start_run("long", params={"a": {"list": long}, "b": longer})
    params = tracking.client.get_run(run_id).data.params
    assert params["a.list"] == long
    assert params["b"] == "y" * PARAM_VALUE_LIMIT
