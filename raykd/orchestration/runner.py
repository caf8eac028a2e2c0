"""Run stages as Ray Train ``TorchTrainer`` runs, or reuse them if they already ran.

:func:`ensure_stages` is the stage graph's single entry: given stage requests
(:class:`~raykd.plan.stages.StageRequest`, as :mod:`raykd.plan` builds them: a typed config
and, for KD, the identity of its teacher stage) it returns the finished :class:`StageRecord` of
each, training only those with no finished run of the same identity. The stages still to train run
as one *chain*: one ``TorchTrainer`` whose workers train them one after another (a KD stage
after its teacher), so a seed's 14 stages pay Ray Train's ~15 s start/stop once instead of 14
times. Each stage keeps its own identity, directory, checkpoints and MLflow child run, created
here before ``fit`` so workers log into it and a KD run can name its teacher's run id.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from raykd.errors import RaykdError
from raykd.orchestration.cluster import TrialResources, say, worker_groups
from raykd.orchestration.console import progress
from raykd.orchestration.identity import StageRecord, StageStore
from raykd.orchestration.stage_runs import (
    TAGS_FILE,
    existing_run,
    known_runs,
    link_reuse,
    resolve_run,
    retire_damaged_run,
    stage_run_name,
    stage_tags,
)
from raykd.orchestration.tracking_repair import pending, repair_pending, short_budget
from raykd.orchestration.train_fn import RESULT_FILE, train_fn
from raykd.plan.identity import used_config
from raykd.plan.stages import StageRequest
from raykd.tracking import Tracking
from raykd.tracking.mlflow_store import PARENT_TAG
from raykd.train.config import StageConfig
from raykd.train.distributed import rank_batch


@dataclass
class StageContext:
    """Where stages live and are tracked, and how they are run."""

    store: StageStore
    tracking: Tracking | None
    resources: TrialResources
    parent_run_id: str | None = None
    max_failures: int = 2
    local: bool = False  # train in this process instead of Ray Train workers (tests, debugging)
    # tests: {"kill_after_epoch": k, "marker": path, "kind": stage kind (optional)}
    fault_injection: dict | None = None
    # Each stage's place among all the job needs (stage id -> k of "stage k/N"); empty: unknown.
    numbers: dict[str, int] = field(default_factory=dict)
    # Stages this process already announced as reused (announce each once).
    announced: set[str] = field(default_factory=set)


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
        "numbers": dict(ctx.numbers),
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
        numbers=dict(data.get("numbers") or {}),
    )


def announce(ctx: StageContext, sid: str, cfg: StageConfig, tags: dict[str, str]) -> str:
    """``stage 3/14  <run name> (kd)``: how the console names a stage (its MLflow run name)."""
    total = len(ctx.numbers) or None
    return progress(ctx.numbers.get(sid), total, stage_run_name(cfg, tags), cfg.kind)


def _reuse_line(ctx: StageContext, sid: str, req: StageRequest, record: StageRecord) -> None:
    """Say once that a stage trained by an earlier job is reused (not one this job trained)."""
    if sid in ctx.announced:
        return
    ctx.announced.add(sid)
    if any(u["stage_id"] == sid and u["trained"] for u in ctx.store.usage(ctx.parent_run_id)):
        return
    teacher = ctx.store.get(req.teacher_id) if req.teacher_id else None
    tags = stage_tags(req.cfg, sid, req.teacher_id, teacher.kind if teacher else None) | req.tags
    psnr = ((record.metrics or {}).get("val") or {}).get("psnr")
    result = f", val PSNR {psnr:.2f} dB" if psnr is not None else ""
    say(f"{announce(ctx, sid, req.cfg, tags)}: reused (trained by an earlier job{result})")


def ensure_stages(
    requests: list[StageRequest],
    ctx: StageContext,
    tune_report: bool = False,
    eval_splits: tuple[str, ...] = ("val", "test"),
) -> dict[str, StageRecord]:
    """Finished records of every requested stage, by stage id; missing ones trained as a chain.

    A KD request's teacher must be finished already or requested earlier in ``requests``.
    Stages are locked in the store while they train, so a concurrent trial needing one waits
    and then reuses it.
    """
    unique: dict[str, StageRequest] = {}
    for req in requests:
        unique.setdefault(req.stage_id, req)
    records: dict[str, StageRecord] = {}

    def reuse(sid: str) -> bool:
        record, damaged = ctx.store.get_intact(sid)
        if damaged:
            say(f"WARNING: {damaged}; training stage {sid} again")
            retire_damaged_run(ctx.tracking, sid, damaged)
        if record is None:
            return False
        _reuse_line(ctx, sid, unique[sid], record)
        records[sid] = in_this_store(record, ctx)
        ctx.store.log_use(sid, "reused", job=ctx.parent_run_id)
        return True

    pending = [sid for sid in unique if not reuse(sid)]
    if not pending:
        return records
    for sid in pending:  # refused here, not retried by Ray Train on every rank
        cfg = unique[sid].cfg
        rank_batch(
            cfg.data.batch_size, 1 if ctx.local else ctx.resources.for_kind(cfg.kind).workers
        )
    with contextlib.ExitStack() as stack:
        for sid in sorted(pending):  # one global order: no deadlock between trials
            stack.enter_context(ctx.store.lock(sid))
        pending = [sid for sid in pending if not reuse(sid)]
        # One Ray Train run per stretch of the chain with the same worker count (workers per kind).
        kinds = [(sid, unique[sid].cfg.kind) for sid in pending]
        for ids, res in worker_groups(kinds, ctx.resources) if pending else []:
            part = dataclasses.replace(ctx, resources=res)
            _train_chain(
                [(sid, unique[sid]) for sid in ids], records, part, tune_report, eval_splits
            )
    return records


def in_this_store(record: StageRecord, ctx: StageContext) -> StageRecord:
    """``record`` with the id of its run in the current tracking store (re-registered there if
    that store never saw it), linked into the current job's tree."""
    if ctx.tracking is None:
        return record
    run_id = resolve_run(record, ctx.store, ctx.tracking, ctx.parent_run_id)
    if ctx.parent_run_id:
        link_reuse(ctx.tracking, ctx.parent_run_id, record.stage_id, run_id, ctx.store)
    return dataclasses.replace(record, mlflow_run_id=run_id)


def prior_use(out: Path) -> str:
    """What training a stage folder now amounts to: ``reused`` (an interrupted job finished it:
    its result.json exists), ``resumed`` (its last.pt exists) or ``trained`` (from scratch)."""
    if (out / RESULT_FILE).is_file():
        return "reused"
    return "resumed" if (out / "last.pt").is_file() else "trained"


def _train_chain(chain, records, ctx: StageContext, tune_report: bool, eval_splits) -> None:
    """Train ``chain`` (stage id, request) in order in one Ray Train run; record each stage."""
    planned: dict[str, dict] = {}
    # What each stage's folder holds before this chain runs, for honest accounting: finished
    # by an interrupted job (its result.json exists), or to resume (its last.pt), or nothing.
    before: dict[str, str] = {}
    for sid, req in chain:
        out = ctx.store.stage_dir(sid)
        before[sid] = prior_use(out)
        updates = {"output_dir": str(out), "progress": False, "name": sid}
        teacher_kind, teacher_run = None, ""
        if req.teacher_id is not None:
            if req.teacher_id in records:
                t = records[req.teacher_id]
                updates["teacher_checkpoint"] = t.best_checkpoint
                teacher_kind, teacher_run = t.kind, t.mlflow_run_id or ""
            elif req.teacher_id in planned:
                t = planned[req.teacher_id]
                updates["teacher_checkpoint"] = str(Path(t["output_dir"]) / "best.pt")
                teacher_kind, teacher_run = t["cfg"].kind, t["run_id"] or ""
            else:
                raise RaykdError(
                    f"stage {sid}: its teacher stage {req.teacher_id} is neither finished nor "
                    "requested before it"
                )
        cfg = req.cfg.model_copy(update=updates)
        run_id, run_spec = None, None
        tags = stage_tags(cfg, sid, req.teacher_id, teacher_kind, teacher_run) | req.tags
        if ctx.tracking is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / TAGS_FILE).write_text(json.dumps(tags, indent=1))
            # Rank 0 opens the run when the stage starts (true start time) unless one exists.
            with short_budget():
                run_id = known_runs(out).get(ctx.tracking.uri) or existing_run(ctx.tracking, sid)
            if run_id and ctx.parent_run_id and before[sid] != "reused":
                # Opened by an interrupted job: this job finishes it, so it joins this tree.
                with contextlib.suppress(Exception), short_budget():  # repaired with it
                    ctx.tracking.set_tags(run_id, {PARENT_TAG: ctx.parent_run_id})
            run_spec = {
                "name": stage_run_name(cfg, tags),
                "tags": tags,
                "params": used_config(cfg),  # no kd.* on a teacher: one rule with identity
                "parent_run_id": ctx.parent_run_id,
                "teacher_stage": req.teacher_id,
            }
        planned[sid] = {
            "cfg": cfg,
            "output_dir": str(out),
            "run_id": run_id,
            "run_spec": run_spec,
            "teacher": req.teacher_id,
            "announce": announce(ctx, sid, cfg, tags),
        }
    known = [str(ctx.numbers[sid]) for sid in planned if sid in ctx.numbers]
    which = f": stage {', '.join(known)} of {len(ctx.numbers)}" if known else ""
    where = "in this process" if ctx.local else "in one Ray Train run"
    say(f"training {len(planned)} stage(s) {where} ({ctx.resources.describe()}){which}")
    t0 = time.perf_counter()
    error: BaseException | None = None
    try:
        _fit(list(planned.values()), ctx, tune_report, eval_splits)
    except BaseException as exc:  # record what finished before failing; nothing is lost
        error = exc
    wall = time.perf_counter() - t0
    results = {}
    for sid, p in planned.items():
        path = Path(p["output_dir"]) / RESULT_FILE
        if path.is_file():
            results[sid] = json.loads(path.read_text())
    compute = sum(r.get("compute_s") or 0.0 for r in results.values())
    overhead_each = max(0.0, wall - compute) / max(1, len(results))
    for sid, p in planned.items():
        run_id = p["run_id"]
        if ctx.tracking is not None:
            run_id = known_runs(p["output_dir"]).get(ctx.tracking.uri) or run_id
        if sid not in results:
            if ctx.tracking is not None and run_id:
                ctx.tracking.end_run(run_id, "FAILED")
            continue
        result = results[sid]
        stage_wall = (result.get("compute_s") or 0.0) + overhead_each
        record = StageRecord(
            stage_id=sid,
            kind=p["cfg"].kind,
            output_dir=p["output_dir"],
            best_checkpoint=result["best_checkpoint"],
            best_val_loss=result["best_val_loss"],
            best_epoch=result["best_epoch"],
            mlflow_run_id=run_id,
            teacher_stage=p["teacher"],
            metrics=result["metrics"],
            finished_at=time.time(),
            wall_clock_s=stage_wall,
            compute_s=result.get("compute_s"),
            compute=result.get("compute"),
        )
        if ctx.tracking is not None and run_id and not pending(p["output_dir"]):
            # Rank 0 ended the run when the stage finished; this does not move its end time.
            with contextlib.suppress(Exception), short_budget():  # an outage: repaired below
                ctx.tracking.log_metrics(run_id, {"wall_clock_s": stage_wall})
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
                records[sid] = dataclasses.replace(records[sid], mlflow_run_id=run)
    if error is not None:
        raise error
    say(f"finished {len(planned)} stage(s) in {wall:.0f}s")


def _fit(planned: list[dict], ctx: StageContext, tune_report: bool, eval_splits) -> None:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    loop_config = {
        "stages": [
            {
                "stage": p["cfg"].to_dict(),
                "output_dir": p["output_dir"],
                "mlflow_run_id": p["run_id"],
                "run_spec": p["run_spec"],
                "announce": p["announce"],
            }
            for p in planned
        ],
        "threads": ctx.resources.threads,
        "tracking_uri": ctx.tracking.uri if ctx.tracking else None,
        "experiment": ctx.tracking.experiment_name if ctx.tracking else None,
        "eval_splits": list(eval_splits),
        "fault_injection": ctx.fault_injection,
        "root": str(ctx.store.root),  # recovery events and the tracking journal
        "job": ctx.parent_run_id,
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
    # Stable name: a rerun of the same chain finds Ray's checkpoints under the same folder.
    import hashlib

    chain_key = hashlib.sha256(",".join(p["cfg"].name for p in planned).encode()).hexdigest()
    first = planned[0]["cfg"].name
    trainer = TorchTrainer(
        train_fn,
        train_loop_config=loop_config,
        scaling_config=scaling,
        run_config=RunConfig(
            name=f"train-{first}-{chain_key[:8]}",
            storage_path=str(ctx.store.root / "ray"),
            failure_config=FailureConfig(max_failures=ctx.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            callbacks=callbacks,
        ),
    )
    try:
        trainer.fit()
    except Exception as exc:
        dirs = "\n  ".join(p["output_dir"] for p in planned)
        raise RaykdError(
            f"stage chain starting at {first} failed after {ctx.max_failures} retries: {exc}\n"
            f"finished stages are kept; logs and checkpoints:\n  {dirs}"
        ) from exc


def _fit_in_process(loop_config: dict, tune_report: bool) -> None:
    """Train in this process (no Ray Train workers): tests, debugging, tiny machines."""
    from raykd.orchestration.train_fn import run_chain

    report = None
    if tune_report:
        from ray import tune

        def report(metrics, _last_path, _stage):
            tune.report(metrics)

    run_chain(loop_config, 0, report, None)
