"""What every job (grid, search) does around its Tune run: set up, track, summarise.

- the run directory (absolute: a ``ray job submit`` driver runs from a temp copy of the code),
- Ray (join ``$RAY_ADDRESS`` or start locally) and trial sizing from the cluster,
- the MLflow job run (parent of every stage/trial run) and the stage store,
- the end-of-job summary: where the MLflow store is, stages trained vs reused, best rows.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raykd.kinds import STUDENT_ROWS
from raykd.orchestration.cluster import TrialResources, init_ray, plan_resources, say
from raykd.orchestration.identity import StageStore
from raykd.orchestration.interrupt import (
    JobInterrupted,
    install_handlers,
    resume_command,
    stage_progress,
)
from raykd.orchestration.runner import StageContext
from raykd.orchestration.tracking_repair import outage_lines, outage_summary, repair_pending
from raykd.paths import default_run_root
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
) -> Job:
    """Start (or join) Ray, open the MLflow job run and the stage store.

    ``run_name``: the job run's title in MLflow (default ``name``); the start time is added.
    ``local_train``: True trains stages in the trial's own process instead of Ray Train
    workers; ``"auto"`` does so where a stage would get a single CPU worker anyway (no GPU, no
    DDP), which saves Ray Train's start/stop (~12 s) per stage chain — most of a small
    search's wall-clock. A failed trial is retried by Tune and its stage resumes from
    ``last.pt``, as a restarted Train worker would.
    """
    root = Path(root or default_run_root()).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    init_ray(address, num_cpus=num_cpus)
    install_handlers()  # after Ray: replaces its driver's abort-on-SIGTERM
    resources = plan_resources(workers, max_concurrent, cpus_per_worker)
    if local_train == "auto":
        local_train = not resources.use_gpu and resources.workers == 1
    uri = tracking_uri or default_tracking_uri(root)
    tracking = Tracking(uri, experiment or "raykd", artifact_root=root / "mlartifacts")
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
    say(f"job {name}: run directory {root}")
    say(f"MLflow: {uri} (experiment '{tracking.experiment_name}', job run {run_id})")
    say(f"MLflow UI, stage runs with their results: {ui.stages_url(uri, tracking.experiment_id)}")
    where = "in the trial's process" if local_train else "as Ray Train runs"
    say(f"resources: {resources.describe()}; stages train {where}")
    return Job(name, root, ctx, tracking, run_id, time.time())


def tune_trainable(fn, ctx: StageContext | None = None):
    from ray import tune

    if ctx is not None and ctx.local and not ctx.resources.use_gpu:
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
    done += f" ({summary['stages_reused']} reused)" if summary["stages_reused"] else ""
    cut = f"; interrupted: {', '.join(interrupted)}" if interrupted else ""
    exc.args = (
        f"interrupted by {exc.signame}: {done}{cut}; rerun to resume (finished stages are "
        f"reused, interrupted ones resume): {resume_command()}",
    )
    return exc


def finish_job(
    job: Job,
    rows: list[dict[str, Any]],
    status: str = "FINISHED",
    warnings: list[str] | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Log stages.json and the summary to the job run, print the summary, close the run.

    ``warnings`` (e.g. unequal epoch budgets from an override) are printed with the summary and
    stored in it.
    """
    repair_pending(job.ctx.store, job.tracking, job.run_id, job.run_id)
    recovery = outage_summary(job.root, job.run_id)
    uses = job.ctx.store.uses(job.run_id)
    trained, resumed, reused = uses["trained"], uses["resumed"], uses["reused"]
    wall = time.time() - job.started
    records = [job.ctx.store.get(sid) for sid in trained + resumed]
    compute = sum(r.compute_s or 0.0 for r in records if r is not None)
    stage_wall = sum(r.wall_clock_s or 0.0 for r in records if r is not None)
    paths: dict[str, int] = {}
    for r in records:
        if r is not None and r.compute:
            c = r.compute
            key = f"{c['compute.precision']}/{c['compute.memory_format']} on "
            key += (
                c["compute.device"] if c["compute.device"] != "cpu" else c["compute.cpu_capability"]
            )
            if "compute.world_size" in c:  # stages stored before the world size was recorded
                key += f", world size {c['compute.world_size']}"
            paths[key] = paths.get(key, 0) + 1
    summary = {
        "job_run_id": job.run_id,
        "wall_clock_s": round(wall, 1),
        # Everything but the stages' own set-up/training/evaluation: Ray start-up, Tune and
        # Train scheduling, worker start/stop, MLflow calls.
        "overhead_s": round(max(0.0, wall - compute), 1),
        "overhead_fraction": round(max(0.0, wall - compute) / wall, 4) if wall else None,
        "stage_overhead_s": round(max(0.0, stage_wall - compute), 1),
        "stages_trained": len(trained),
        "stages_resumed": len(resumed),
        "stages_reused": len(reused),
        "recovery": recovery,  # tracking outages, repairs, stage restarts (tracking_repair)
        "compute_paths": paths,  # how the trained stages computed (precision/memory format)
        "rows": rows,
        "warnings": list(warnings or []),
    }
    path = job.root / f"{job.name}-{job.run_id[:8]}-stages.json"
    from raykd.train.evaluate import json_safe  # strict JSON: a NaN metric becomes null

    path.write_text(json.dumps(json_safe(summary)[0], indent=1, default=str, allow_nan=False))
    job.tracking.log_artifact(job.run_id, path)
    job.tracking.log_metrics(
        job.run_id,
        {
            "wall_clock_s": summary["wall_clock_s"],
            "stages_trained": len(trained),
            "stages_resumed": len(resumed),
            "stages_reused": len(reused),
            "overhead_s": summary["overhead_s"],
            "tracking_failures": len(recovery["tracking_failed"]),
            "tracking_repaired": len(recovery["tracking_repaired"]),
            "tracking_pending": len(recovery["tracking_pending"]),
            "stage_restarts": recovery["stage_restarts"],
        },
    )
    best = best_row(rows)
    if best is not None:
        job.tracking.log_metrics(
            job.run_id,
            {f"best_{k}": best[k] for k in best if k.startswith("val_") and best[k] is not None},
        )
        job.tracking.set_tags(
            job.run_id, {"raykd.best_label": best["label"], "raykd.best_run_id": best["run"]}
        )
    job.tracking.set_tags(job.run_id, {NOTE_TAG: results_markdown(job, rows, summary, best)})
    if (figure := results_figure(job, rows, best)) is not None:
        job.tracking.log_artifact(job.run_id, figure, "figures")
    registered = register_best_student(job, rows)
    if registered:
        summary["registered_model"] = registered
    job.tracking.close_unfinished(job.run_id)
    job.tracking.end_run(job.run_id, status)
    if quiet:
        return summary
    print(
        f"\n== {job.name}: {len(rows)} rows in {summary['wall_clock_s']:.0f}s; "
        f"{len(trained)} stages trained, {len(resumed)} resumed, {len(reused)} reused =="
    )
    print(
        f"Ray/orchestration overhead: {summary['overhead_s']:.0f}s "
        f"({100 * (summary['overhead_fraction'] or 0):.1f}% of the wall-clock; the rest is data "
        "set-up, training and evaluation inside the workers)"
    )
    if paths:
        print("compute path of trained stages: " + ", ".join(f"{k} ×{n}" for k, n in paths.items()))
    width = max((len(r.get("label", "")) for r in rows), default=10)
    scopes = {r.get("scope") for r in rows if r.get("scope")}
    if len(scopes) == 1:
        print(f"val PSNR (dB) / SSIM of each row's best checkpoint on {scopes.pop()}:")
    for r in rows:
        mark = "  <- best" if best is not None and r.get("label") == best["label"] else ""
        scope = f"  ({r['scope']})" if len(scopes) > 1 and r.get("scope") else ""
        print(f"  {r.get('label', ''):{width}s}  {row_outcome(r)}{mark}{scope}")
    print(f"\nMLflow store: {job.tracking.uri}  (experiment '{job.tracking.experiment_name}')")
    if job.tracking.uri.startswith(("http://", "https://")):
        print("  browse:")
    else:
        print(f"  browse: mlflow ui --backend-store-uri {job.tracking.uri}  then open:")
    exp = job.tracking.experiment_id
    print(f"    {ui.stages_url(job.tracking.uri, exp)}  (every stage, results in columns)")
    print(f"    {ui.run_url(job.tracking.uri, exp, job.run_id)}  (this job: table and figure)")
    print(
        f"  compare: python jobs/compare_runs.py --parent-run {job.run_id} "
        f"--tracking-uri {job.tracking.uri}"
    )
    print(f"stage summary: {path}")
    for line in outage_lines(recovery):
        print(line)
    for line in summary["warnings"]:
        print(f"WARNING: {line}")
    if registered:
        print(
            f"best student registered as MLflow model '{registered['name']}' "
            f"version {registered['version']} ({registered['label']})"
        )
    return summary


def row_outcome(r: dict[str, Any]) -> str:
    """How a row ended, in words: its metrics, or why it has none."""
    psnr, ssim = r.get("val_psnr"), r.get("val_ssim")
    if psnr is not None and not r.get("error"):
        return f"PSNR {psnr:6.2f}  SSIM {ssim:.4f}" if ssim is not None else f"PSNR {psnr:6.2f}"
    if r.get("stopped"):
        return str(r["stopped"])
    return "(failed)"


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The student row (else any row) with the best validation PSNR, with its run id."""
    ok = [r for r in rows if r.get("val_psnr") is not None and not r.get("error")]
    pool = [r for r in ok if r.get("row") in STUDENT_ROWS] or ok
    if not pool:
        return None
    best = max(pool, key=lambda r: r["val_psnr"])
    return {**best, "run": best.get("mlflow_run_id") or best.get("trial_run_id") or ""}


def results_markdown(job: Job, rows: list[dict[str, Any]], summary: dict, best) -> str:
    """The job run's description: the winner and a link to every stage's results first (the
    UI shows the first lines collapsed), then the rows it printed, best marked."""
    exp = job.tracking.experiment_id
    view = ui.stages_url(job.tracking.uri, exp).removeprefix(ui.ui_base(job.tracking.uri) + "/")
    lines = []
    if best is not None:
        link = f"[{best['label']}](#/experiments/{exp}/runs/{best['run']})" if best["run"] else ""
        outcome = " ".join(row_outcome(best).split())
        lines.append(f"Best: **{link or best['label']}**, val {outcome}.")
    lines += [
        f"[Every stage with its results]({view}) · **{job.name}**: {len(rows)} rows, "
        f"{summary['stages_trained']} stages trained, {summary['stages_reused']} reused, "
        f"{summary['wall_clock_s']:.0f} s.",
        "",
        "| row | val PSNR (dB) | val SSIM | |",
        "|---|---:|---:|---|",
    ]
    for r in rows:
        psnr, ssim = r.get("val_psnr"), r.get("val_ssim")
        ok = psnr is not None and not r.get("error")
        cells = (f"{psnr:.2f}", f"{ssim:.4f}" if ssim is not None else "") if ok else ("—", "—")
        note = "**best**" if best is not None and r.get("label") == best["label"] else ""
        if not ok:
            note = str(r.get("stopped") or "failed")
        lines.append(f"| {r.get('label', '')} | {cells[0]} | {cells[1]} | {note} |")
    return "\n".join(lines)[:5000]


def results_figure(job: Job, rows: list[dict[str, Any]], best) -> Path | None:
    """The job's key figure: final val PSNR per row (best highlighted) and val PSNR per epoch."""
    done = [r for r in rows if r.get("val_psnr") is not None and not r.get("error")]
    if not done:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, curves) = plt.subplots(1, 2, figsize=(12, 0.35 * len(done) + 2.5))
    labels = [r.get("label", "") for r in done]
    colours = ["tab:red" if best and lab == best["label"] else "tab:blue" for lab in labels]
    bars.barh(labels, [r["val_psnr"] for r in done], color=colours)
    bars.set_xlim(min(r["val_psnr"] for r in done) - 1.0, max(r["val_psnr"] for r in done) + 0.5)
    bars.invert_yaxis()
    bars.set_xlabel("validation PSNR (dB), best checkpoint")
    for r in done:
        record = job.ctx.store.get(r["stage_id"]) if r.get("stage_id") else None
        history = Path(record.output_dir) / "metrics.jsonl" if record else None
        if history is None or not history.is_file():
            continue
        points = [json.loads(x) for x in history.read_text().splitlines() if x.strip()]
        curves.plot([p["epoch"] for p in points], [p["val/psnr"] for p in points], marker=".")
    curves.set_xlabel("epoch")
    curves.set_ylabel("validation PSNR (dB)")
    fig.suptitle(f"{job.name}: {len(done)} rows")
    fig.tight_layout()
    path = job.root / f"{job.name}-{job.run_id[:8]}-results.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def register_best_student(job: Job, rows: list[dict[str, Any]], name: str | None = None):
    """Register the student row with the best validation PSNR (once per run; the
    ``champion`` alias follows the best version). Name: ``<experiment>-student``."""
    from raykd.deploy.registry import register_model
    from raykd.train.checkpoint import checkpoint_config, load_checkpoint
    from raykd.train.stages import load_model

    name = name or f"{job.tracking.experiment_name}-student"
    best = best_row([r for r in rows if r.get("row") in STUDENT_ROWS])
    if best is None or not best["run"] or not best.get("stage_id"):
        return None
    record = job.ctx.store.get(best["stage_id"])
    if record is None:
        return None
    model = load_model(record.best_checkpoint, part="student")
    size = checkpoint_config(load_checkpoint(record.best_checkpoint))["data"]["size"]
    from raykd.orchestration.console import hushed

    with hushed():  # MLflow prints "Successfully registered model …" itself
        version = register_model(
            job.tracking,
            best["run"],
            model,
            name,
            score=best["val_psnr"],
            size=(int(size[0]), int(size[1])),
            label=best["label"],
        )
    return {"name": name, "version": version, "label": best["label"], "run_id": best["run"]}
