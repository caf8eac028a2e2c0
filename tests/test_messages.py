"""The typed values that cross process boundaries (raykd/orchestration/messages.py).

Each boundary type survives its trip (model -> dump -> JSON -> validate equals the original),
refuses unknown keys and assignment, and ``result.json`` written by the real finish path reads
back as a :class:`StageResult` (old files without stage times too). No Ray is started here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from raykd.orchestration.cluster import TrialResources
from raykd.orchestration.messages import (
    ROW_RESULTS,
    ChainRequest,
    ChainState,
    ContextSpec,
    FaultInjection,
    GridTrial,
    JobSummary,
    PlannedStage,
    RegisteredModel,
    RowResult,
    RunSpec,
    SearchOutcome,
    SearchTrial,
    StageResult,
    TrialOutcome,
    TrialReport,
    best_row,
)
from raykd.plan.rows import Row, grid_rows
from raykd.plan.search_space import SearchSpec
from tests.conftest import tiny_grid

RESOURCES = TrialResources(workers=2, use_gpu=False, cpus_per_worker=1, concurrency=1, threads=1)


def _row(kind: str = "std_kd", method: str | None = "at", seed: int = 42) -> Row:
    return Row(dataset="d", acceleration=4, seed=seed, kind=kind, student_depth=3, method=method)


def _ctx() -> ContextSpec:
    return ContextSpec(
        root="/runs",
        tracking_uri="sqlite:////runs/mlflow.db",
        experiment="e",
        resources=RESOURCES,
        parent_run_id="job1",
        fault_injection=FaultInjection(kill_after_epoch=1, marker="/tmp/m", kind="kd"),
        numbers={"teacher-1": 1, "kd-2": 2},
    )


def _planned(tiny_config) -> PlannedStage:
    cfg = tiny_config("student", "student-2")
    spec = RunSpec(name="std_kd-at", tags={"raykd.row": "std_kd"}, params={"seed": 42})
    return PlannedStage(
        stage=cfg, output_dir=cfg.output_dir, run_spec=spec, teacher_stage="teacher-1", announce="x"
    )


def _search() -> SearchSpec:
    return SearchSpec.model_validate(
        {
            "name": "t",
            "row": "std_kd",
            "num_samples": 2,
            "objectives": [{"metric": "val_psnr", "mode": "max"}],
            "params": {"method": {"choices": ["at", "sp"]}},
        }
    )


def _report(psnr: float = 30.0) -> TrialReport:
    return TrialReport(
        val_psnr=psnr,
        val_loss=0.1,
        val_ssim=0.8,
        student_params=100,
        seeds=2,
        stage_id="kd-a,kd-b",
        kd_run_id="r1,r2",
    )


def _samples(tiny_config, tiny_data) -> list[BaseModel]:
    rows = [_row(), _row("teacher", None)]
    done = RowResult(label=rows[0].label, row=rows[0], val={"psnr": 30.5}, stage_id="kd-2")
    failed = RowResult(label=rows[1].label, row=rows[1], error="RayTaskError: boom")
    trial = TrialOutcome(trial="t1", params={"method": "at"}, report=_report(), run_id="r")
    return [
        _ctx(),
        GridTrial(spec=tiny_grid(tiny_data), rows=rows, ctx=_ctx()),
        SearchTrial(search=_search(), base=tiny_grid(tiny_data), ctx=_ctx(), params={"m": "at"}),
        _planned(tiny_config),
        ChainRequest(stages=[_planned(tiny_config)], threads=2, root="/runs", job="job1"),
        ChainState(stage="kd-2"),
        StageResult(best_checkpoint="/b.pt", best_val_loss=0.1, best_epoch=1, metrics={}),
        done,
        failed,
        JobSummary(
            job_run_id="job1",
            wall_clock_s=1.0,
            overhead_s=0.5,
            overhead_fraction=0.5,
            stage_overhead_s=0.1,
            stages_trained=1,
            stages_resumed=0,
            stages_reused=1,
            recovery={"stage_restarts": 0},
            compute_paths={"fp32/contiguous on avx2": 1},
            rows=[done, failed],
            registered_model=RegisteredModel(name="m", version="1", label="l", run_id="r"),
        ),
        SearchOutcome(trials=[trial], study_name="s", storage="sqlite:///o.db", best=trial),
    ]


def test_every_boundary_type_round_trips_through_json(tiny_config, tiny_data):
    for model in _samples(tiny_config, tiny_data):
        data = json.loads(json.dumps(model.model_dump(mode="json")))  # what Ray carries
        assert type(model).model_validate(data) == model, type(model).__name__
        assert type(model).model_validate_json(model.model_dump_json()) == model


def test_boundary_types_refuse_unknown_keys_and_changes(tiny_config, tiny_data):
    for model in _samples(tiny_config, tiny_data):
        data = model.model_dump(mode="json") | {"surprise": 1}
        with pytest.raises(ValidationError, match="surprise"):
            type(model).model_validate(data)
        field = next(iter(type(model).model_fields))
        with pytest.raises(ValidationError, match="frozen"):
            setattr(model, field, getattr(model, field))


def test_chain_request_refuses_a_bad_stage_config(tiny_config):
    data = ChainRequest(stages=[_planned(tiny_config)], root="/runs").model_dump(mode="json")
    data["stages"][0]["stage"]["epochs"] = "many"
    with pytest.raises(ValidationError, match="epochs"):
        ChainRequest.model_validate(data)


def test_rows_metric_keeps_every_row_and_a_nan(tiny_data):
    """A multi-row trial's rows through the Tune metric: typed JSON, NaN kept as a number."""
    rows = grid_rows(tiny_grid(tiny_data, rows=["teacher", "student"]))
    results = [
        RowResult(label=r.label, row=r, val={"psnr": v, "ssim": 0.5}, mlflow_run_id="x")
        for r, v in zip(rows, [31.0, float("nan")], strict=True)
    ]
    back = ROW_RESULTS.validate_json(ROW_RESULTS.dump_json(results).decode())
    assert back[0] == results[0] and back[1].row == rows[1]
    assert back[1].psnr != back[1].psnr  # NaN, not null: the row ran and diverged


def test_search_trial_reads_tune_config(tiny_data):
    base = tiny_grid(tiny_data)
    fixed = SearchTrial(search=_search(), base=base, ctx=_ctx()).param_space()
    assert set(fixed) == {"search", "base", "ctx"}
    trial = SearchTrial.from_tune({**fixed, "method": "sp"})  # Optuna's sampled key on top
    assert trial.params == {"method": "sp"} and trial.base == base
    assert TrialReport.from_tune(_report().tune_metrics() | {"training_iteration": 3}) == _report()
    assert TrialReport.from_tune({"val/psnr": 30.0, "epoch": 1}) is None  # stopped early


def test_summary_file_rows_stay_flat_as_the_report_reads_them():
    row = _row()
    done = RowResult(label=row.label, row=row, val={"psnr": 30.0}, stage_id="kd", mlflow_run_id="r")
    trial = RowResult(label="t1 {}", val={"psnr": None}, trial_run_id="t", stage_run_ids=("a",))
    assert done.summary_entry() == {
        **row.model_dump(mode="json"),
        "label": row.label,
        "val_psnr": 30.0,
        "stage_id": "kd",
        "mlflow_run_id": "r",
    }
    assert trial.summary_entry() == {
        "label": "t1 {}",
        "val_psnr": None,
        "trial_run_id": "t",
        "stage_run_ids": ["a"],
    }


def test_best_row_prefers_students_and_skips_failures():
    teacher = RowResult(label="t", row=_row("teacher", None), val={"psnr": 40.0})
    kd = RowResult(label="k", row=_row(), val={"psnr": 31.0}, mlflow_run_id="r")
    bad = RowResult(label="b", row=_row(seed=1), val={"psnr": 35.0}, error="boom")
    assert best_row([teacher, kd, bad]) == kd
    assert best_row([teacher]) == teacher and best_row([bad]) is None
    assert kd.run == "r" and RowResult(label="s", trial_run_id="t").run == "t"


def test_stage_result_reads_what_the_finish_path_writes(tiny_config, tmp_path):
    """A real (tiny) stage trains through run_training -> finish_stage; its result.json reads
    back through the model, and so does one written before stage times were recorded."""
    from raykd.orchestration.train_fn import run_training

    cfg = tiny_config("student", "student-x")
    stage = PlannedStage(stage=cfg, output_dir=cfg.output_dir)
    run_training(ChainRequest(stages=[stage], root=str(tmp_path)), stage, 0, None, None)
    written = json.loads(stage.result_path.read_text())
    result = StageResult.read(cfg.output_dir)
    assert result is not None and result.model_dump(mode="json") == written
    assert Path(result.best_checkpoint).is_file() and result.metrics["val"]["psnr"] > 0
    assert result.started_at is not None and result.finished_at >= result.started_at
    old = {k: written[k] for k in written if k not in ("started_at", "finished_at", "host")}
    for k in ("node_id", "pid"):
        old.pop(k)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "result.json").write_text(json.dumps(old))
    assert StageResult.read(tmp_path / "old").started_at is None
    assert StageResult.read(tmp_path / "missing") is None


def test_stage_record_round_trips_and_reads_done_json_of_older_stages(tmp_path):
    """``done.json`` is read by every process that reuses a stage: typed, frozen, and the
    files written before the checkpoint digests existed still load."""
    from pydantic import ValidationError

    from raykd.orchestration.identity import StageRecord, StageStore

    store = StageStore(tmp_path)
    out = store.stage_dir("teacher-abc")
    out.mkdir(parents=True)
    (out / "best.pt").write_bytes(b"weights")
    old = {  # a done.json as stages stored before 2026-12 wrote it
        "stage_id": "teacher-abc",
        "kind": "teacher",
        "output_dir": str(out),
        "best_checkpoint": str(out / "best.pt"),
        "best_val_loss": 0.03,
        "best_epoch": 4,
        "mlflow_run_id": None,
        "teacher_stage": None,
        "metrics": {"val": {"psnr": 30.1}},
        "finished_at": 1.0,
    }
    (out / "done.json").write_text(json.dumps(old))
    record = store.get("teacher-abc")
    assert record is not None and record.metrics == {"val": {"psnr": 30.1}}
    assert record.checkpoints is None
    assert StageRecord.model_validate_json(record.to_json()) == record
    with pytest.raises(ValidationError):
        record.best_epoch = 5  # frozen
    with pytest.raises(ValidationError):
        StageRecord.model_validate({**old, "surprise": 1})
    stored = store.put(record)
    assert stored.checkpoints is not None and "best.pt" in stored.checkpoints
    assert store.get("teacher-abc") == stored


def test_short_mlflow_retry_budget_only_while_the_chain_runs(tiny_config, tmp_path, monkeypatch):
    """Rank 0 of a chain fails MLflow calls in seconds while it trains; an in-process trial
    gets its usual budget back afterwards (the settings were leaking into it)."""
    import os

    from raykd.orchestration.tracking_repair import WORKER_HTTP_ENV
    from raykd.orchestration.train_fn import run_chain

    for key in WORKER_HTTP_ENV:
        monkeypatch.delenv(key, raising=False)
    cfg = tiny_config("student", "student-env")
    stage = PlannedStage(stage=cfg, output_dir=cfg.output_dir)
    request = ChainRequest(
        stages=[stage],
        root=str(tmp_path),
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        experiment="env",
    )
    seen = []

    def report(metrics, last_path, name):
        seen.append({k: os.environ.get(k) for k in WORKER_HTTP_ENV})

    run_chain(request, 0, report, None)
    assert seen and all(s == WORKER_HTTP_ENV for s in seen)
    assert all(k not in os.environ for k in WORKER_HTTP_ENV)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "99")  # the user's own setting wins
    run_chain(request, 0, report, None)  # finished: skipped, the setting untouched
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "99"
