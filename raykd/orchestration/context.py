"""Where stages live and are tracked, and how they run: the :class:`StageContext` a job and each
of its Tune trials share, and what rebuilds it inside a trial (:class:`ContextSpec`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from raykd.orchestration.cluster import TrialResources
from raykd.orchestration.console import progress
from raykd.orchestration.identity import StageRecord, StageStore
from raykd.orchestration.messages import ContextSpec, FaultInjection
from raykd.orchestration.stage_runs import link_reuse, resolve_run, stage_run_name
from raykd.tracking import Tracking
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
    fault_injection: FaultInjection | None = None  # tests: kill a worker once
    # Each stage's place among all the job needs (stage id -> k of "stage k/N"); empty: unknown.
    numbers: dict[str, int] = field(default_factory=dict)
    # Stages this process already announced as reused (announce each once).
    announced: set[str] = field(default_factory=set)


def context_spec(ctx: StageContext) -> ContextSpec:
    """What rebuilds ``ctx`` inside a Tune trial (no live clients pickled)."""
    return ContextSpec(
        root=ctx.store.uri,  # a folder, or an object store each node sees through its own copy
        tracking_uri=ctx.tracking.uri if ctx.tracking else None,
        experiment=ctx.tracking.experiment_name if ctx.tracking else None,
        resources=ctx.resources,
        parent_run_id=ctx.parent_run_id,
        max_failures=ctx.max_failures,
        local=ctx.local,
        fault_injection=ctx.fault_injection,
        numbers=ctx.numbers,
    )


def context_from_spec(spec: ContextSpec) -> StageContext:
    tracking = Tracking(spec.tracking_uri, spec.experiment) if spec.tracking_uri else None
    return StageContext(
        store=StageStore(spec.root),
        tracking=tracking,
        resources=spec.resources,
        parent_run_id=spec.parent_run_id,
        max_failures=spec.max_failures,
        local=spec.local,
        fault_injection=spec.fault_injection,
        numbers=dict(spec.numbers),
    )


def announce(ctx: StageContext, sid: str, cfg: StageConfig, tags: dict[str, str]) -> str:
    """``stage 3/14  <run name> (kd)``: how the console names a stage (its MLflow run name)."""
    total = len(ctx.numbers) or None
    return progress(ctx.numbers.get(sid), total, stage_run_name(cfg, tags), cfg.kind)


def in_this_store(record: StageRecord, ctx: StageContext) -> StageRecord:
    """``record`` with the id of its run in the current tracking store (re-registered there if
    that store never saw it), linked into the current job's tree."""
    if ctx.tracking is None:
        return record
    run_id = resolve_run(record, ctx.store, ctx.tracking, ctx.parent_run_id)
    if ctx.parent_run_id:
        link_reuse(ctx.tracking, ctx.parent_run_id, record.stage_id, run_id, ctx.store)
    return record.model_copy(update={"mlflow_run_id": run_id})
