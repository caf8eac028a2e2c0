"""What every job (grid, search) does around its Tune run: set up, track, summarise.

- the run directory (absolute: a ``ray job submit`` driver runs from a temp copy of the code),
- Ray (join ``$RAY_ADDRESS`` or start locally) and trial sizing from the cluster,
- the MLflow job run (parent of every stage/trial run) and the stage store,
- the end-of-job summary: where the MLflow store is, stages trained vs reused, best rows.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raykd.orchestration.cluster import TrialResources, init_ray, plan_resources, say
from raykd.orchestration.context import StageContext
from raykd.orchestration.identity import StageStore
from raykd.orchestration.interrupt import (
    JobInterrupted,
    install_handlers,
    resume_command,
    stage_progress,
)
from raykd.orchestration.messages import JobSummary, RegisteredModel, RowResult, best_row
from raykd.orchestration.tracking_repair import outage_lines, outage_summary, repair_pending
from raykd.report.job_results import results_figure, results_markdown, row_outcome
from raykd.storage import resolve_root, storage_for
from raykd.strict_json import dumps_strict
from raykd.tracking import Tracking, default_tracking_uri, ui
from raykd.tracking import schema as S
from raykd.tracking.mlflow_store import NOTE_TAG

TRIAL_MEMORY = 512 * 1024**2  # the trial driver itself; its Train workers reserve their own CPUs
HEAD_NODE = "node:__internal_head__"  # a resource only Ray's head node has


@dataclass
class Job:
    name: str
    root: Path
    ctx: StageContext
    tracking: Tracking
    run_id: str
    started: float

    @property
    def resources(self) -> TrialResources:
        return self.ctx.resources


def start_job(
    name: str,
    params: dict[str, Any],
    root: str | Path | None = None,
    experiment: str | None = None,
    tracking_uri: str | None = None,
    address: str | None = None,
    workers: int | None = None,
    max_concurrent: int | None = None,
    local_train: bool | str = False,
    num_cpus: int | None = None,
    run_name: str | None = None,
    cpus_per_worker: int | None = None,
    gpus_per_worker: float | None = None,
) -> Job:
    """Start (or join) Ray, open the MLflow job run and the stage store.

    ``run_name``: the job run's title in MLflow (default ``name``); the start time is added.
    ``local_train``: True trains stages in the trial's own process instead of Ray Train
    workers; ``"auto"`` does so where a stage would get a single CPU worker anyway (no GPU, no
    DDP), which saves Ray Train's start/stop (~12 s) per stage chain — most of a small
    search's wall-clock. ``gpus_per_worker``: the GPU share of a single-worker stage's worker
    on a GPU cluster (:mod:`raykd.plan.gpus`; None: a whole GPU). A failed trial is retried
    by Tune and its stage resumes from ``last.pt``, as a restarted Train worker would.
    """
    # An object store is checked here (endpoint, bucket, credentials), before Ray or MLflow.
    root = resolve_root(root)
    root.mkdir(parents=True, exist_ok=True)
    storage = storage_for(root)
    uri = tracking_uri or default_tracking_uri(storage.uri)
    # A local root keeps MLflow's artifacts beside it; with an object-store root the tracking
    # server stores them (proxied: workers need no bucket credentials for MLflow).
    artifacts = root / "mlartifacts" if storage.shared else None
    init_ray(address, num_cpus=num_cpus)
    install_handlers()  # after Ray: replaces its driver's abort-on-SIGTERM
    resources = plan_resources(workers, max_concurrent, cpus_per_worker, gpus_per_worker)
    if local_train == "auto":
        local_train = not resources.use_gpu and resources.workers == 1
    tracking = Tracking(uri, experiment or "raykd", artifact_root=artifacts)
    title = f"{run_name or name}-{time.strftime('%Y-%m-%d %H:%M:%S')}"
    run_id = tracking.start_run(title, tags={S.TAG_ROLE: "job"}, params=params)
    ui.share_stages_view(tracking.client, tracking.experiment_id)
    ctx = StageContext(
        StageStore(root), tracking, resources, parent_run_id=run_id, local=bool(local_train)
    )
    # Stage runs an earlier job could not write (a tracking outage): written now from files.
    repaired, _ = repair_pending(ctx.store, tracking, run_id, run_id)
    if repaired:
        say(f"MLflow: wrote {len(repaired)} stage run(s) an earlier outage left out")
    say(f"job {name}: run directory {ctx.store.uri}")
    say(f"MLflow: {uri} (experiment '{tracking.experiment_name}', job run {run_id})")
    say(f"MLflow UI, stage runs with their results: {ui.stages_url(uri, tracking.experiment_id)}")
    where = "in the trial's process" if local_train else "as Ray Train runs"
    say(f"resources: {resources.describe()}; stages train {where}")
    return Job(name, root, ctx, tracking, run_id, time.time())


def tune_trainable(fn, ctx: StageContext | None = None):
    from ray import tune

    if ctx is not None and ctx.local and ctx.resources.use_gpu:
        # Stages train in the trial's process, on the GPU (share) Ray assigns the trial: it
        # holds what one worker would (raykd.orchestration.devices picks that GPU).
        res = ctx.resources
        need = {"cpu": res.cpus_per_worker, "gpu": res.gpu_share(1), "memory": TRIAL_MEMORY}
        return tune.with_resources(fn, need)
    if ctx is not None and ctx.local:
        # Stages train in the trial's process: the trial holds the CPUs a worker would.
        cpus = ctx.resources.cpus_per_worker * ctx.resources.workers
        return tune.with_resources(fn, {"cpu": cpus, "memory": TRIAL_MEMORY})
    # The trial driver reserves no CPU (its Train workers do); {"cpu": 0} alone raises. It
    # runs on the head node, with the job's driver: Ray Train's controller follows it there,
    # and a worker node lost mid-stage then costs a worker-group restart, not the trial.
    return tune.with_resources(fn, {"cpu": 0, "memory": TRIAL_MEMORY, HEAD_NODE: 0.001})


def trial_failure_config(ctx: StageContext):
    """Trials that train in their own process are retried by Tune (Ray Train's restarts do it
    otherwise); the retried stage resumes from its ``last.pt``."""
    from ray import tune

    return tune.FailureConfig(max_failures=ctx.max_failures if ctx.local else 0)


def interrupt_job(
    job: Job, exc: KeyboardInterrupt | JobInterrupted, stage_ids: list[str]
) -> JobInterrupted:
    """Record an interrupted job (MLflow run KILLED, what finished) and return the exception
    whose message is the one line the user sees; ``stage_ids``: every stage the job needed."""
    if not isinstance(exc, JobInterrupted):
        exc = JobInterrupted(2)  # a KeyboardInterrupt raised by a library: Ctrl-C
    dirs = [job.ctx.store.stage_dir(sid) for sid in dict.fromkeys(stage_ids)]
    finished, interrupted = stage_progress(dirs, job.started)
    summary = finish_job(job, [], status="KILLED", quiet=True)
    done = f"{len(finished)} of {len(dirs)} stages finished during this job"
    done += f" ({summary.stages_reused} reused)" if summary.stages_reused else ""
    cut = f"; interrupted: {', '.join(interrupted)}" if interrupted else ""
    exc.args = (
        f"interrupted by {exc.signame}: {done}{cut}; rerun to resume (finished stages are "
        f"reused, interrupted ones resume): {resume_command()}",
    )
    return exc


def finish_job(
    job: Job,
    rows: list[RowResult],
    status: str = "FINISHED",
    warnings: list[str] | None = None,
    quiet: bool = False,
) -> JobSummary:
    """Summarise the job, log it to its MLflow run (closed with ``status``), print it.

    ``warnings`` (e.g. unequal epoch budgets from an override) are printed with the summary and
    stored in it.
    """
    from raykd.orchestration.console import flush_relay

    flush_relay()  # the workers' last lines before the summary
    repair_pending(job.ctx.store, job.tracking, job.run_id, job.run_id)
    summary = log_job(job, summarise_job(job, rows, warnings), status)
    if not quiet:
        for line in summary_lines(job, summary):
            print(line)
    return summary


def summarise_job(job: Job, rows: list[RowResult], warnings: list[str] | None) -> JobSummary:
    """What the job did, from the stage store (trained, resumed, reused; compute) and its rows."""
    uses = job.ctx.store.uses(job.run_id)
    wall = time.time() - job.started
    records = [r for sid in uses["trained"] + uses["resumed"] if (r := job.ctx.store.get(sid))]
    compute = sum(r.compute_s or 0.0 for r in records)
    stage_wall = sum(r.wall_clock_s or 0.0 for r in records)
    return JobSummary(
        job_run_id=job.run_id,
        wall_clock_s=round(wall, 1),
        overhead_s=round(max(0.0, wall - compute), 1),
        overhead_fraction=round(max(0.0, wall - compute) / wall, 4) if wall else None,
        stage_overhead_s=round(max(0.0, stage_wall - compute), 1),
        stages_trained=len(uses["trained"]),
        stages_resumed=len(uses["resumed"]),
        stages_reused=len(uses["reused"]),
        recovery=outage_summary(job.root, job.run_id),
        compute_paths=compute_paths(r.compute for r in records),
        rows=rows,
        warnings=list(warnings or []),
    )


def compute_paths(computes: Iterable[dict[str, str] | None]) -> dict[str, int]:
    """How many stages computed each way, e.g. ``bf16/channels_last on avx512_bf16, world size
    1``."""
    paths: dict[str, int] = {}
    for c in computes:
        if not c:
            continue
        device = (
            c["compute.device"] if c["compute.device"] != "cpu" else c["compute.cpu_capability"]
        )
        key = f"{c['compute.precision']}/{c['compute.memory_format']} on {device}"
        if "compute.world_size" in c:  # stages stored before the world size was recorded
            key += f", world size {c['compute.world_size']}"
        paths[key] = paths.get(key, 0) + 1
    return paths


def log_job(job: Job, summary: JobSummary, status: str) -> JobSummary:
    """The summary file, metrics, best row, description and figure on the job run; the best
    student registered; the run closed. Returns the summary with its file and model."""
    path = job.root / f"{job.name}-{job.run_id[:8]}-stages.json"
    path.write_text(dumps_strict(summary.file_data()))  # strict JSON: a NaN metric is null
    job.ctx.store.storage.push(path.name)  # an object-store root: beside the stages
    job.tracking.log_artifact(job.run_id, path)
    recovery = summary.recovery
    job.tracking.log_metrics(
        job.run_id,
        {
            "wall_clock_s": summary.wall_clock_s,
            "stages_trained": summary.stages_trained,
            "stages_resumed": summary.stages_resumed,
            "stages_reused": summary.stages_reused,
            "overhead_s": summary.overhead_s,
            "tracking_failures": len(recovery["tracking_failed"]),
            "tracking_repaired": len(recovery["tracking_repaired"]),
            "tracking_pending": len(recovery["tracking_pending"]),
            "stage_restarts": recovery["stage_restarts"],
        },
    )
    if (best := summary.best) is not None:
        values = {f"best_val_{k}": v for k, v in best.val.items() if v is not None}
        job.tracking.log_metrics(job.run_id, values)
        job.tracking.set_tags(
            job.run_id, {"raykd.best_label": best.label, "raykd.best_run_id": best.run}
        )
    markdown = results_markdown(summary, job.name, job.tracking.uri, job.tracking.experiment_id)
    job.tracking.set_tags(job.run_id, {NOTE_TAG: markdown})
    stage_dirs = {
        r.stage_id: rec.output_dir
        for r in summary.rows
        if r.stage_id and (rec := job.ctx.store.get(r.stage_id))
    }
    figure = job.root / f"{job.name}-{job.run_id[:8]}-results.png"
    if results_figure(summary, stage_dirs, job.name, figure) is not None:
        job.tracking.log_artifact(job.run_id, figure, "figures")
        job.ctx.store.storage.push(figure.name)
    registered = register_best_student(job, summary.rows)
    job.tracking.close_unfinished(job.run_id)
    job.tracking.end_run(job.run_id, status)
    return summary.model_copy(update={"registered_model": registered, "summary_file": str(path)})


def summary_lines(job: Job, summary: JobSummary) -> list[str]:
    """The end-of-job console summary: counts, overhead, each row's outcome, where to look."""
    rows, best = summary.rows, summary.best
    lines = [
        f"\n== {job.name}: {len(rows)} rows in {summary.wall_clock_s:.0f}s; "
        f"{summary.stages_trained} stages trained, {summary.stages_resumed} resumed, "
        f"{summary.stages_reused} reused ==",
        f"Ray/orchestration overhead: {summary.overhead_s:.0f}s "
        f"({100 * (summary.overhead_fraction or 0):.1f}% of the wall-clock; the rest is data "
        "set-up, training and evaluation inside the workers)",
    ]
    if summary.compute_paths:
        each = ", ".join(f"{k} ×{n}" for k, n in summary.compute_paths.items())
        lines.append(f"compute path of trained stages: {each}")
    width = max((len(r.label) for r in rows), default=10)
    scopes = {r.scope for r in rows if r.scope}
    if len(scopes) == 1:
        lines.append(f"val PSNR (dB) / SSIM of each row's best checkpoint on {next(iter(scopes))}:")
    for r in rows:
        mark = "  <- best" if best is not None and r.label == best.label else ""
        scope = f"  ({r.scope})" if len(scopes) > 1 and r.scope else ""
        lines.append(f"  {r.label:{width}s}  {row_outcome(r)}{mark}{scope}")
    lines += _where_lines(job, summary)
    lines += outage_lines(summary.recovery)
    lines += [f"WARNING: {line}" for line in summary.warnings]
    if (reg := summary.registered_model) is not None:
        lines.append(
            f"best student registered as MLflow model '{reg.name}' version {reg.version} "
            f"({reg.label})"
        )
    return lines


def _where_lines(job: Job, summary: JobSummary) -> list[str]:
    """Where the job's runs are and how to browse and compare them."""
    uri, exp = job.tracking.uri, job.tracking.experiment_id
    lines = [f"\nMLflow store: {uri}  (experiment '{job.tracking.experiment_name}')"]
    if uri.startswith(("http://", "https://")):
        lines.append("  browse:")
    else:
        lines.append(f"  browse: mlflow ui --backend-store-uri {uri}  then open:")
    return lines + [
        f"    {ui.stages_url(uri, exp)}  (every stage, results in columns)",
        f"    {ui.run_url(uri, exp, job.run_id)}  (this job: table and figure)",
        f"  compare: python jobs/compare_runs.py --parent-run {job.run_id} --tracking-uri {uri}",
        f"stage summary: {summary.summary_file}",
    ]


def register_best_student(
    job: Job, rows: list[RowResult], name: str | None = None
) -> RegisteredModel | None:
    """Register the student row with the best validation PSNR (once per run; the
    ``champion`` alias follows the best version). Name: ``<experiment>-student``."""
    from raykd.deploy.registry import register_model
    from raykd.train.checkpoint import checkpoint_config, load_checkpoint
    from raykd.train.stages import load_model

    name = name or f"{job.tracking.experiment_name}-student"
    best = best_row([r for r in rows if r.is_student])
    if best is None or not best.run or not best.stage_id:
        return None
    record = job.ctx.store.get(best.stage_id)
    if record is None:
        return None
    model = load_model(record.best_checkpoint, part="student")
    size = checkpoint_config(load_checkpoint(record.best_checkpoint))["data"]["size"]
    from raykd.orchestration.console import hushed

    with hushed():  # MLflow prints "Successfully registered model …" itself
        version = register_model(
            job.tracking,
            best.run,
            model,
            name,
            score=best.psnr,
            size=(int(size[0]), int(size[1])),
            label=best.label,
        )
    return RegisteredModel(name=name, version=version, label=best.label, run_id=best.run)
