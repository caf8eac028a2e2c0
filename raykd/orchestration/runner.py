"""Run one stage as a Ray Train ``TorchTrainer``, or reuse it if it already ran.

:func:`ensure_stage` is the stage graph's single entry: given a stage config (and, for KD, the
record of its teacher stage) it returns the finished :class:`StageRecord`, training only when
no run with the same identity has finished. The MLflow child run is created here, before
``fit``, so workers log into it and the KD run can name its teacher's run id.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from raykd.errors import RaykdError
from raykd.orchestration.cluster import TrialResources, say
from raykd.orchestration.identity import StageRecord, StageStore, stage_identity
from raykd.orchestration.train_fn import RESULT_FILE, train_fn
from raykd.tracking import Tracking
from raykd.tracking import schema as S
from raykd.train.config import StageConfig


@dataclass
class StageContext:
    """Where stages live and are tracked, and how they are run."""

    store: StageStore
    tracking: Tracking | None
    resources: TrialResources
    parent_run_id: str | None = None
    max_failures: int = 2
    local: bool = False  # train in this process instead of Ray Train workers (tests, debugging)
    fault_injection: dict | None = None  # tests: {"kill_after_epoch": k, "marker": path}


def context_to_dict(ctx: StageContext) -> dict:
    """Plain data to rebuild a StageContext inside a Tune trial (no live clients pickled)."""
    return {
        "root": str(ctx.store.root),
        "tracking_uri": ctx.tracking.uri if ctx.tracking else None,
        "experiment": ctx.tracking.experiment_name if ctx.tracking else None,
        "resources": asdict(ctx.resources),
        "parent_run_id": ctx.parent_run_id,
        "max_failures": ctx.max_failures,
        "local": ctx.local,
        "fault_injection": ctx.fault_injection,
    }


def context_from_dict(data: dict) -> StageContext:
    tracking = Tracking(data["tracking_uri"], data["experiment"]) if data["tracking_uri"] else None
    return StageContext(
        store=StageStore(data["root"]),
        tracking=tracking,
        resources=TrialResources(**data["resources"]),
        parent_run_id=data["parent_run_id"],
        max_failures=data["max_failures"],
        local=data["local"],
        fault_injection=data.get("fault_injection"),
    )


def _existing_run(ctx: StageContext, stage_id: str) -> str | None:
    """An unfinished MLflow run for this stage (driver killed earlier): continue it."""
    if ctx.tracking is None:
        return None
    for run in ctx.tracking.runs(f"tags.`raykd.stage_id` = '{stage_id}'"):
        if run.info.status in ("RUNNING", "KILLED", "FAILED"):
            return run.info.run_id
    return None


def ensure_stage(
    cfg: StageConfig,
    ctx: StageContext,
    teacher: StageRecord | None = None,
    tune_report: bool = False,
    eval_splits: tuple[str, ...] = ("val", "test"),
    tags: dict[str, str] | None = None,
) -> StageRecord:
    """The finished record of ``cfg``'s stage: reused if it exists, else trained now.

    ``tags`` (dataset name, acceleration, ...) go on the MLflow run when it is created.
    """
    if cfg.kind == "kd" and teacher is None:
        raise RaykdError("a kd stage needs the record of its teacher stage")
    stage_id = stage_identity(cfg, teacher.stage_id if teacher else None)
    if (record := ctx.store.get(stage_id)) is not None:
        ctx.store.log_use(stage_id, trained=False, job=ctx.parent_run_id)
        return record
    with ctx.store.lock(stage_id):
        if (record := ctx.store.get(stage_id)) is not None:
            ctx.store.log_use(stage_id, trained=False, job=ctx.parent_run_id)
            return record
        out = ctx.store.stage_dir(stage_id)
        updates = {"output_dir": str(out), "progress": False, "name": stage_id}
        if teacher is not None:
            updates["teacher_checkpoint"] = teacher.best_checkpoint
        cfg = cfg.model_copy(update=updates)
        run_id = None
        if ctx.tracking is not None:
            run_id = _existing_run(ctx, stage_id) or ctx.tracking.start_run(
                name=stage_id,
                parent_run_id=ctx.parent_run_id,
                params=cfg.to_dict(),
                tags=stage_tags(cfg, stage_id, teacher) | (tags or {}),
            )
        say(f"training {stage_id} ({ctx.resources.describe()})")
        t0 = time.perf_counter()
        try:
            _fit(cfg, ctx, out, run_id, tune_report, eval_splits)
        except BaseException:
            if ctx.tracking is not None and run_id:
                ctx.tracking.end_run(run_id, "FAILED")
            raise
        result = json.loads((out / RESULT_FILE).read_text())
        record = StageRecord(
            stage_id=stage_id,
            kind=cfg.kind,
            output_dir=str(out),
            best_checkpoint=result["best_checkpoint"],
            best_val_loss=result["best_val_loss"],
            best_epoch=result["best_epoch"],
            mlflow_run_id=run_id,
            teacher_stage=teacher.stage_id if teacher else None,
            metrics=result["metrics"],
            finished_at=time.time(),
            wall_clock_s=time.perf_counter() - t0,
            compute_s=result.get("compute_s"),
        )
        if ctx.tracking is not None and run_id:
            ctx.tracking.log_metrics(run_id, {"wall_clock_s": time.perf_counter() - t0})
            ctx.tracking.end_run(run_id, "FINISHED")
        ctx.store.put(record)
        ctx.store.log_use(stage_id, trained=True, job=ctx.parent_run_id)
        say(f"finished {stage_id} in {time.perf_counter() - t0:.0f}s")
        return record


def stage_tags(cfg: StageConfig, stage_id: str, teacher: StageRecord | None) -> dict[str, str]:
    kd = cfg.kind == "kd"
    return {
        S.TAG_ROLE: "stage",
        S.TAG_KIND: cfg.kind,
        S.TAG_ROW: S.stage_row(cfg.kind, teacher.kind if teacher else None, cfg.kd.init),
        S.TAG_STAGE_ID: stage_id,
        S.TAG_TEACHER_STAGE: teacher.stage_id if teacher else "",
        S.TAG_TEACHER_RUN: (teacher.mlflow_run_id or "") if teacher else "",
        S.TAG_METHOD: cfg.kd.method if kd else "",
        S.TAG_INIT: cfg.kd.init if kd else "",
        S.TAG_SEED: str(cfg.seed),
        S.TAG_ACCELERATION: f"{cfg.data.mask.acceleration:g}",
        S.TAG_TEACHER_DEPTH: str(cfg.teacher.depth) if cfg.kind != "student" else "",
        S.TAG_STUDENT_DEPTH: str(cfg.student.depth) if cfg.kind != "teacher" else "",
        S.TAG_TASK: "recon",
    }


def _fit(cfg, ctx: StageContext, out: Path, run_id, tune_report: bool, eval_splits) -> None:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    loop_config = {
        "stage": cfg.to_dict(),
        "output_dir": str(out),
        "threads": ctx.resources.threads,
        "mlflow_run_id": run_id,
        "tracking_uri": ctx.tracking.uri if ctx.tracking else None,
        "experiment": ctx.tracking.experiment_name if ctx.tracking else None,
        "eval_splits": list(eval_splits),
        "fault_injection": ctx.fault_injection,
    }
    if ctx.local:
        _fit_in_process(loop_config, tune_report)
        return
    callbacks = []
    if tune_report:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    res = ctx.resources
    scaling = ScalingConfig(
        num_workers=res.workers,
        use_gpu=res.use_gpu,
        resources_per_worker={"CPU": res.cpus_per_worker} | ({"GPU": 1} if res.use_gpu else {}),
    )
    trainer = TorchTrainer(
        train_fn,
        train_loop_config=loop_config,
        scaling_config=scaling,
        run_config=RunConfig(
            name=f"train-{cfg.name}",  # stable: a rerun resumes from its last checkpoint
            storage_path=str(ctx.store.root / "ray"),
            failure_config=FailureConfig(max_failures=ctx.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            callbacks=callbacks,
        ),
    )
    try:
        trainer.fit()
    except Exception as exc:
        raise RaykdError(
            f"stage {cfg.name} failed after {ctx.max_failures} retries: {exc}\n"
            f"logs and checkpoints: {out}"
        ) from exc


def _fit_in_process(loop_config: dict, tune_report: bool) -> None:
    """Train in this process (no Ray Train workers): tests, debugging, tiny machines."""
    from raykd.orchestration.train_fn import run_training

    report = None
    if tune_report:
        from ray import tune

        def report(metrics, _last_path):
            tune.report(metrics)

    last = Path(loop_config["output_dir"]) / "last.pt"
    run_training(loop_config, 0, report, last if last.is_file() else None)
