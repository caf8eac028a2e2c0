"""One stage chain as one Ray Train run: plan each stage (config, folder, MLflow run), train
them in order on the workers (:mod:`raykd.orchestration.train_fn`), record what finished.

The workers get one :class:`~raykd.orchestration.messages.ChainRequest` (dumped at the
``TorchTrainer`` boundary, validated first thing by ``train_fn``); each finished stage leaves a
:class:`~raykd.orchestration.messages.StageResult` (``result.json``) that is read back here.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from raykd.errors import RaykdError
from raykd.orchestration.cluster import say
from raykd.orchestration.context import StageContext, announce, in_this_store
from raykd.orchestration.identity import StageRecord
from raykd.orchestration.messages import (
    RESULT_FILE,
    ChainRequest,
    PlannedStage,
    RunSpec,
    StageResult,
)
from raykd.orchestration.stage_runs import (
    TAGS_FILE,
    existing_run,
    known_runs,
    stage_run_name,
    stage_tags,
)
from raykd.orchestration.tracking_repair import pending, repair_pending, short_budget
from raykd.orchestration.train_fn import train_fn
from raykd.plan.identity import used_config
from raykd.plan.stages import StageRequest
from raykd.tracking.mlflow_store import PARENT_TAG


def prior_use(out: Path) -> str:
    """What training a stage folder now amounts to: ``reused`` (an interrupted job finished it:
    its result.json exists), ``resumed`` (its last.pt exists) or ``trained`` (from scratch)."""
    if (out / RESULT_FILE).is_file():
        return "reused"
    return "resumed" if (out / "last.pt").is_file() else "trained"


def train_chain(
    chain: list[tuple[str, StageRequest]],
    records: dict[str, StageRecord],
    ctx: StageContext,
    tune_report: bool,
    eval_splits: tuple[str, ...],
) -> None:
    """Train ``chain`` (stage id, request) in order in one Ray Train run; record each stage.

    Whatever finished is recorded even when the run fails (then the error is raised after).
    """
    planned: dict[str, PlannedStage] = {}
    # What each stage's folder holds before this chain runs, for honest accounting: finished
    # by an interrupted job (its result.json exists), or to resume (its last.pt), or nothing.
    before: dict[str, str] = {}
    for sid, req in chain:
        before[sid] = prior_use(ctx.store.pull(sid))
        planned[sid] = _plan_stage(sid, req, records, planned, ctx, before[sid])
    request = ChainRequest(
        stages=list(planned.values()),
        threads=ctx.resources.threads,
        use_gpu=ctx.resources.use_gpu,
        tracking_uri=ctx.tracking.uri if ctx.tracking else None,
        experiment=ctx.tracking.experiment_name if ctx.tracking else None,
        eval_splits=tuple(eval_splits),
        fault_injection=ctx.fault_injection,
        root=ctx.store.uri,  # each worker opens it: a folder, or an object store's URI
        job=ctx.parent_run_id,
    )
    _say_chain(request, planned, ctx)
    t0 = time.perf_counter()
    error: BaseException | None = None
    try:
        _fit(request, ctx, tune_report)
    except BaseException as exc:  # record what finished before failing; nothing is lost
        error = exc
    wall = time.perf_counter() - t0
    _record_chain(planned, before, wall, records, ctx)
    if error is not None:
        raise error
    say(f"finished {len(planned)} stage(s) in {wall:.0f}s")


def _teacher_of(
    sid: str,
    req: StageRequest,
    records: dict[str, StageRecord],
    planned: dict[str, PlannedStage],
) -> tuple[str | None, str | None, str]:
    """A KD stage's teacher: its best checkpoint, kind and run id (finished, or earlier in the
    chain: then its checkpoint is where it will be)."""
    if req.teacher_id is None:
        return None, None, ""
    if req.teacher_id in records:
        t = records[req.teacher_id]
        return t.best_checkpoint, t.kind, t.mlflow_run_id or ""
    if req.teacher_id in planned:
        p = planned[req.teacher_id]
        return str(Path(p.output_dir) / "best.pt"), p.stage.kind, p.mlflow_run_id or ""
    raise RaykdError(
        f"stage {sid}: its teacher stage {req.teacher_id} is neither finished nor requested "
        "before it"
    )


def _plan_stage(
    sid: str,
    req: StageRequest,
    records: dict[str, StageRecord],
    planned: dict[str, PlannedStage],
    ctx: StageContext,
    before: str,
) -> PlannedStage:
    """The stage's final config (its folder, its teacher's checkpoint) and the MLflow run it
    logs to: an existing one of it, or the spec rank 0 opens when the stage starts."""
    out = ctx.store.stage_dir(sid)
    checkpoint, teacher_kind, teacher_run = _teacher_of(sid, req, records, planned)
    updates: dict = {"output_dir": str(out), "progress": False, "name": sid}
    if checkpoint is not None:
        updates["teacher_checkpoint"] = checkpoint
    cfg = req.cfg.model_copy(update=updates)
    tags = stage_tags(cfg, sid, req.teacher_id, teacher_kind, teacher_run) | req.tags
    run_id, run_spec = None, None
    if ctx.tracking is not None:
        run_id = _known_run(ctx, sid, out, tags, before)
        run_spec = RunSpec(
            name=stage_run_name(cfg, tags),
            tags=tags,
            params=used_config(cfg),  # no kd.* on a teacher: one rule with identity
            parent_run_id=ctx.parent_run_id,
        )
    return PlannedStage(
        stage=cfg,
        output_dir=str(out),
        mlflow_run_id=run_id,
        run_spec=run_spec,
        teacher_stage=req.teacher_id,
        announce=announce(ctx, sid, cfg, tags),
    )


def _known_run(ctx: StageContext, sid: str, out: Path, tags: dict, before: str) -> str | None:
    """The stage's run if one exists (an interrupted job opened it; this job then adopts it);
    else None: rank 0 opens it when the stage starts, so its start time is true."""
    assert ctx.tracking is not None
    out.mkdir(parents=True, exist_ok=True)
    (out / TAGS_FILE).write_text(json.dumps(tags, indent=1))
    with short_budget():
        run_id = known_runs(out).get(ctx.tracking.uri) or existing_run(ctx.tracking, sid)
    if run_id and ctx.parent_run_id and before != "reused":
        # Opened by an interrupted job: this job finishes it, so it joins this tree.
        with contextlib.suppress(Exception), short_budget():  # repaired with it
            ctx.tracking.set_tags(run_id, {PARENT_TAG: ctx.parent_run_id})
    return run_id


def _say_chain(request: ChainRequest, planned: dict[str, PlannedStage], ctx: StageContext) -> None:
    known = [str(ctx.numbers[sid]) for sid in planned if sid in ctx.numbers]
    which = f": stage {', '.join(known)} of {len(ctx.numbers)}" if known else ""
    where = "in this process" if ctx.local else "in one Ray Train run"
    say(f"training {len(request.stages)} stage(s) {where} ({ctx.resources.describe()}){which}")


def _record_chain(
    planned: dict[str, PlannedStage],
    before: dict[str, str],
    wall: float,
    records: dict[str, StageRecord],
    ctx: StageContext,
) -> None:
    """Store a record of every stage of the chain that finished (its ``result.json``); close
    the runs of those that did not as FAILED; repair runs an outage left out."""
    for sid in planned:  # what the workers shared (trained on any node)
        ctx.store.pull(sid)
    results = {sid: r for sid, p in planned.items() if (r := StageResult.read(p.output_dir))}
    compute = sum(r.compute_s or 0.0 for r in results.values())
    overhead_each = max(0.0, wall - compute) / max(1, len(results))
    for sid, p in planned.items():
        run_id = p.mlflow_run_id
        if ctx.tracking is not None:
            run_id = known_runs(p.output_dir).get(ctx.tracking.uri) or run_id
        if sid not in results:
            if ctx.tracking is not None and run_id:
                ctx.tracking.end_run(run_id, "FAILED")
            continue
        record = _stage_record(sid, p, results[sid], run_id, overhead_each)
        if ctx.tracking is not None and run_id and not pending(p.output_dir):
            # Rank 0 ended the run when the stage finished; this does not move its end time.
            with contextlib.suppress(Exception), short_budget():  # an outage: repaired below
                ctx.tracking.log_metrics(run_id, {"wall_clock_s": record.wall_clock_s})
        record = ctx.store.put(record)
        ctx.store.log_use(sid, before[sid], job=ctx.parent_run_id)
        if before[sid] != "trained" and ctx.tracking is not None and run_id:
            # Its run was opened under the interrupted job: this job's tree must list it too.
            record = in_this_store(record, ctx)
        records[sid] = record
    if ctx.tracking is not None:
        # Stages whose MLflow writes failed (an outage): rebuilt from their files if the server
        # is back, else left for the next job (tracking_repair).
        repaired, _ = repair_pending(ctx.store, ctx.tracking, ctx.parent_run_id, ctx.parent_run_id)
        for sid in repaired:
            if sid in records:
                run = known_runs(records[sid].output_dir).get(ctx.tracking.uri)
                records[sid] = records[sid].model_copy(update={"mlflow_run_id": run})


def _stage_record(
    sid: str, p: PlannedStage, result: StageResult, run_id: str | None, overhead: float
) -> StageRecord:
    """The store's record of a finished stage; its wall-clock includes its share of the
    chain's Ray start/stop (``overhead``)."""
    return StageRecord(
        stage_id=sid,
        kind=p.stage.kind,
        output_dir=p.output_dir,
        # Where this process sees it (the worker that wrote it may have run on another node).
        best_checkpoint=str(Path(p.output_dir) / Path(result.best_checkpoint).name),
        best_val_loss=result.best_val_loss,
        best_epoch=result.best_epoch,
        mlflow_run_id=run_id,
        teacher_stage=p.teacher_stage,
        metrics=result.metrics,
        finished_at=time.time(),
        wall_clock_s=(result.compute_s or 0.0) + overhead,
        compute_s=result.compute_s,
        compute=result.compute,
    )


def _fit(request: ChainRequest, ctx: StageContext, tune_report: bool) -> None:
    """Train the chain: in this process (``ctx.local``), else as one ``TorchTrainer`` run."""
    if ctx.local:
        _fit_in_process(request, tune_report)
        return
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_fn,
        train_loop_config=request.model_dump(mode="json"),  # train_fn validates it first
        scaling_config=_scaling(ctx.resources),
        run_config=_train_run_config(request, ctx, tune_report),
    )
    try:
        trainer.fit()
    except Exception as exc:
        dirs = "\n  ".join(p.output_dir for p in request.stages)
        raise RaykdError(
            f"stage chain starting at {request.stages[0].name} failed after {ctx.max_failures} "
            f"retries: {exc}\nfinished stages are kept; logs and checkpoints:\n  {dirs}"
        ) from exc


def _scaling(res):
    from ray.train import ScalingConfig

    return ScalingConfig(
        num_workers=res.workers,
        use_gpu=res.use_gpu,
        resources_per_worker={"CPU": res.cpus_per_worker}
        | ({"GPU": res.gpu_share(res.workers)} if res.use_gpu else {}),
    )


def _train_run_config(request: ChainRequest, ctx: StageContext, tune_report: bool):
    """Stable name: a rerun of the same chain finds Ray's checkpoints under the same folder."""
    import hashlib

    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    callbacks = []
    if tune_report:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    key = hashlib.sha256(",".join(p.name for p in request.stages).encode()).hexdigest()
    return RunConfig(
        name=f"train-{request.stages[0].name}-{key[:8]}",
        **ctx.store.ray_storage("ray"),
        failure_config=FailureConfig(max_failures=ctx.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=1),
        callbacks=callbacks,
    )


def _fit_in_process(request: ChainRequest, tune_report: bool) -> None:
    """Train in this process (no Ray Train workers): tests, debugging, tiny machines. On the
    device Ray assigned this trial (its GPU share, or the CPU even where GPUs are visible)."""
    from raykd.orchestration.devices import trial_device
    from raykd.orchestration.train_fn import run_chain

    report = None
    if tune_report:
        from ray import tune

        def report(metrics, _last_path, _stage):
            tune.report(metrics)

    run_chain(request, 0, report, None, trial_device(request.use_gpu))
