"""Optuna searches through Ray Tune over the stage graph.

The search space and what one sampled point trains are planned in
:mod:`raykd.plan.search_space`. Each trial asks the stage graph for its teacher (reused across
trials when identical) and trains its KD student with per-epoch reports to Tune, so an ASHA
scheduler can stop it early. The Optuna study lives in sqlite next to the runs, so a
search can be extended later, and Tune's experiment folder can be restored after a crash.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from optuna.exceptions import UpdateFinishedTrialError
from ray.tune.search.optuna import OptunaSearch

from raykd.errors import error_summary
from raykd.orchestration.grid import run_row, stage_numbers
from raykd.orchestration.messages import (
    RowResult,
    SearchOutcome,
    SearchTrial,
    TrialOutcome,
    TrialReport,
)
from raykd.plan.presets import GridSpec
from raykd.plan.search_space import (
    OBJECTIVES,
    TUNE_KEYS,
    SearchSpec,
    trial_name,
    trial_row_and_spec,
)


class ResumableOptunaSearch(OptunaSearch):
    """OptunaSearch whose study outlives a killed driver.

    The study is in sqlite and is written at once; Tune's experiment state is saved every few
    seconds. After a kill, the restored experiment may run again a trial whose result the
    study already holds (its stages are reused, not retrained); that trial's results must not
    be written to the study a second time, which Optuna refuses with UpdateFinishedTrialError.
    """

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        with contextlib.suppress(UpdateFinishedTrialError):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        with contextlib.suppress(UpdateFinishedTrialError):
            super().on_trial_complete(trial_id, result, error)


def search_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: one sampled point → (reused) teacher → KD student."""
    from ray import tune

    from raykd.orchestration.context import context_from_spec
    from raykd.tracking import schema as S

    trial = SearchTrial.from_tune(config)  # the boundary: checked once, typed after
    search, base, ctx = trial.search, trial.base, context_from_spec(trial.ctx)
    params = {k: trial.params[k] for k in search.params}
    spec, row, overrides = trial_row_and_spec(search, base, params)
    run_id = None
    if ctx.tracking is not None:
        run_id = ctx.tracking.start_run(
            trial_name(params),
            parent_run_id=ctx.parent_run_id,
            tags={
                S.TAG_ROLE: "trial",
                "raykd.trial_id": tune.get_context().get_trial_id(),
                "raykd.search": search.name,
            },
            params={**params, "row": row.label},
        )
    # Per-epoch results carry Train's keys only: streamed when every objective is one of them
    # (Tune refuses a result without the searcher's metrics, e.g. student_params).
    stream = all(o.metric in TUNE_KEYS for o in search.objectives)
    report = _train_seeds(spec, row, base, ctx, overrides, stream)
    if ctx.tracking is not None and run_id:
        objectives = {k: v for k, v in report.model_dump().items() if k in OBJECTIVES}
        ctx.tracking.log_metrics(run_id, objectives)
        ctx.tracking.set_tags(run_id, {"raykd.kd_run_id": report.kd_run_id})
        ctx.tracking.end_run(run_id)
    # Always report once more: a reused stage sent no per-epoch results.
    tune.report(report.tune_metrics())


def _train_seeds(spec: GridSpec, row, base: GridSpec, ctx, overrides, stream: bool) -> TrialReport:
    """Train (or reuse) the trial's row for every seed. The first seed streams per-epoch
    results if ``stream`` (what ASHA judges); the objectives are means over all seeds, so a
    lucky seed cannot win the search."""
    from raykd.models.base import count_parameters
    from raykd.models.registry import build_model

    per_seed = []
    seed_rows = [row.model_copy(update={"seed": seed}) for seed in base.seed_list()]
    # "stage k/N" counts this trial's stages (a search does not know its trials in advance).
    ctx.numbers = stage_numbers(spec, [[r] for r in seed_rows], overrides)
    for i, seed_row in enumerate(seed_rows):
        record = run_row(spec, seed_row, ctx, tune_report=stream and i == 0, overrides=overrides)
        history = _history(record.output_dir)
        best = min(history, key=lambda h: h["val/loss"]) if history else {}
        per_seed.append((record, best))
    student = build_model(spec.student_arch, row.student_depth, spec.cascades, spec.channels)

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    return TrialReport(
        val_psnr=mean([b.get("val/psnr", float("nan")) for _, b in per_seed]),
        val_loss=mean([b.get("val/loss", float("nan")) for _, b in per_seed]),
        val_ssim=mean(
            [(r.metrics or {}).get("val", {}).get("ssim", float("nan")) for r, _ in per_seed]
        ),
        student_params=count_parameters(student),
        seeds=len(per_seed),
        stage_id=",".join(r.stage_id for r, _ in per_seed),
        kd_run_id=",".join(r.mlflow_run_id or "" for r, _ in per_seed),
    )


def _history(output_dir: str) -> list[dict[str, float]]:
    """A stage's per-epoch records (``metrics.jsonl``, written by the training loop)."""
    from raykd.strict_json import read_jsonl

    return read_jsonl(Path(output_dir) / "metrics.jsonl")


def run_search(search: SearchSpec, base: GridSpec, job, resume: bool = True) -> SearchOutcome:
    """Run (or resume/extend) the search; returns its trials and the best (one objective) or
    Pareto-optimal (several) ones, and where its Optuna study is."""
    from raykd.orchestration.cluster import say

    storage_url = f"sqlite:///{job.root / 'optuna.db'}"
    study_name = f"raykd-{search.name}"
    _open_study(search, storage_url, study_name, job)
    storage = job.ctx.store.ray_storage(f"tune/{study_name}")
    path, filesystem = storage["storage_path"], storage.get("storage_filesystem")
    scheduler = _scheduler(search, base)
    if resume and _can_restore(path, filesystem):
        from ray import tune

        from raykd.orchestration.job import tune_trainable

        say(f"restoring Tune experiment {path} (Optuna study {study_name} in {storage_url})")
        trainable = tune_trainable(search_trial, job.ctx)
        tuner = tune.Tuner.restore(
            path, trainable=trainable, resume_errored=True, storage_filesystem=filesystem
        )
    else:
        tuner = _new_tuner(search, base, job, storage_url, study_name, scheduler)
    from raykd.orchestration.console import tune_quiet

    with tune_quiet():
        results = tuner.fit()
    trials = [_outcome(job, search, base, r, scheduler is not None) for r in results]
    return _choose(search, trials, study_name, storage_url)


def _open_study(search: SearchSpec, storage_url: str, study_name: str, job) -> None:
    """Create (or load) the Optuna study; tell the job run where it is (the report finds it)."""
    import optuna

    metrics = [o.metric for o in search.objectives]
    study = optuna.create_study(
        storage=storage_url,
        study_name=study_name,
        directions=["maximize" if o.mode == "max" else "minimize" for o in search.objectives],
        load_if_exists=True,
    )
    # Name the objectives in the study, so Optuna's plots and optuna-dashboard label their
    # axes "val_psnr" rather than "objective 0".
    if study.metric_names != metrics:
        study.set_metric_names(metrics)
    if job.tracking is not None:
        job.tracking.set_tags(
            job.run_id, {"raykd.optuna_storage": storage_url, "raykd.optuna_study": study_name}
        )


def _tune_metrics(search: SearchSpec) -> list[str]:
    """Per-epoch results carry Train's keys; a single objective must be one of them."""
    return [TUNE_KEYS.get(o.metric, o.metric) for o in search.objectives]


def _scheduler(search: SearchSpec, base: GridSpec):
    if search.scheduler.type != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    # Train reports per epoch as "val/psnr"; max_t above the last report (epochs + final)
    # so the trial driver is never killed before it closes its MLflow run.
    return ASHAScheduler(
        metric=_tune_metrics(search)[0],
        mode=search.objectives[0].mode,
        max_t=base.epochs.kd + 2,
        grace_period=search.scheduler.grace_period,
        reduction_factor=search.scheduler.reduction_factor,
    )


def _can_restore(path: str, filesystem=None) -> bool:
    from ray import tune

    return tune.Tuner.can_restore(path, storage_filesystem=filesystem)


def _new_tuner(search: SearchSpec, base: GridSpec, job, storage_url, study_name, scheduler):
    import optuna
    from ray import tune

    from raykd.orchestration.console import tune_verbosity
    from raykd.orchestration.context import context_spec
    from raykd.orchestration.job import trial_failure_config, tune_trainable

    single = len(search.objectives) == 1
    metrics, modes = _tune_metrics(search), [o.mode for o in search.objectives]
    searcher = ResumableOptunaSearch(
        space={k: p.distribution() for k, p in search.params.items()},
        metric=metrics[0] if single else metrics,
        mode=modes[0] if single else modes,
        storage=optuna.storages.RDBStorage(storage_url),
        study_name=study_name,
        seed=base.first_seed,
    )
    trial = SearchTrial(search=search, base=base, ctx=context_spec(job.ctx))
    return tune.Tuner(
        tune_trainable(search_trial, job.ctx),
        param_space=trial.param_space(),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=search.num_samples,
            max_concurrent_trials=job.resources.concurrency,
            # In-process stages: a warm trial process (torch, raykd, MLflow imported) runs
            # the next trial; a few seconds per trial on a small box.
            reuse_actors=job.ctx.local,
        ),
        run_config=tune.RunConfig(
            name=study_name,
            **job.ctx.store.ray_storage("tune"),
            failure_config=trial_failure_config(job.ctx),
            verbose=tune_verbosity(),
        ),
    )


def _outcome(job, search: SearchSpec, base: GridSpec, result, scheduled: bool) -> TrialOutcome:
    """A finished Tune trial as a typed outcome; a stopped trial's runs are closed as such."""
    m = result.metrics or {}
    report = TrialReport.from_tune(m)
    error = error_summary(result.error) if result.error else None
    stopped = None
    if not error and report is None and scheduled:
        # No final report and no error: the scheduler stopped it after an epoch report.
        stopped = f"stopped at epoch {m.get('epoch') or m.get('training_iteration')} by ASHA"
    params = {k: (result.config or {}).get(k) for k in search.params}
    if stopped and job.tracking is not None:
        _mark_stopped_stages(job, search, base, params, stopped)
    return TrialOutcome(
        trial=m.get("trial_id") or (result.path or "?").rsplit("/", 1)[-1][:40],
        params=params,
        report=report,
        error=error,
        stopped=stopped,
        run_id=_close_trial_run(job, m.get("trial_id"), stopped),
    )


def _choose(search: SearchSpec, trials, study_name: str, storage_url: str) -> SearchOutcome:
    """The best trial (one objective) or the Pareto front (several) of the finished trials."""
    metrics = [o.metric for o in search.objectives]
    modes = [o.mode for o in search.objectives]
    done = [t for t in trials if t.done and t.value(metrics[0]) is not None]
    best, pareto = None, []
    if len(metrics) == 1 and done:
        sign = 1 if modes[0] == "max" else -1
        best = max(done, key=lambda t: sign * (t.value(metrics[0]) or 0.0))
    elif done:
        pareto = pareto_front(done, metrics, modes)
    return SearchOutcome(
        trials=trials, study_name=study_name, storage=storage_url, best=best, pareto=pareto
    )


def _mark_stopped_stages(job, search, base, params: dict[str, Any], why: str) -> None:
    """The KD stage runs a stopped trial left unfinished: KILLED with the reason."""
    from raykd.orchestration.stage_runs import mark_stopped
    from raykd.plan.stages import row_requests

    if None in params.values():  # a trial Tune never gave a sampled point
        return
    spec, row, overrides = trial_row_and_spec(search, base, params)
    for seed in base.seed_list():
        own = row_requests(spec, row.model_copy(update={"seed": seed}), overrides)[-1]
        if job.ctx.store.get(own.stage_id) is None:  # finished stages are results, not stops
            mark_stopped(job.tracking, own.stage_id, why)


def _close_trial_run(job, trial_id: str | None, stopped: str | None) -> str | None:
    """The trial's MLflow run id; a stopped trial's run is closed as KILLED saying why."""
    from raykd.tracking import schema as S
    from raykd.tracking.mlflow_store import NOTE_TAG

    if job.tracking is None or not trial_id:
        return None
    runs = job.tracking.runs(
        f"tags.`raykd.trial_id` = '{trial_id}' and tags.`{S.TAG_ROLE}` = 'trial'"
    )
    if not runs:
        return None
    run = max(runs, key=lambda r: r.info.start_time)
    if stopped:
        job.tracking.set_tags(run.info.run_id, {"raykd.stopped": stopped, NOTE_TAG: stopped})
        if run.info.status == "RUNNING":
            job.tracking.end_run(run.info.run_id, "KILLED")
    return run.info.run_id


def search_rows(out: SearchOutcome) -> list[RowResult]:
    """The job table's rows of a search: one per trial. The trial run is not a stage run: the
    report follows the KD runs it trained (``stage_run_ids``)."""
    return [
        RowResult(
            label=f"{t.trial} {t.params}",
            val={"psnr": t.value("val_psnr"), "ssim": t.value("val_ssim")},
            stopped=t.stopped,
            error=t.error,
            trial_run_id=t.run_id,
            stage_run_ids=tuple(
                r for r in (t.report.kd_run_id if t.report else "").split(",") if r
            ),
        )
        for t in out.trials
    ]


def pareto_front(
    trials: list[TrialOutcome], metrics: list[str], modes: list[str]
) -> list[TrialOutcome]:
    """Non-dominated trials (better or equal in every objective, strictly in one)."""
    signs = [1 if m == "max" else -1 for m in modes]

    def dominates(a: TrialOutcome, b: TrialOutcome) -> bool:
        pairs = [
            (s * (a.value(k) or 0.0), s * (b.value(k) or 0.0))
            for k, s in zip(metrics, signs, strict=True)
        ]
        return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)

    return [t for t in trials if not any(dominates(o, t) for o in trials if o is not t)]
