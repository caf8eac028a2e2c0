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

    from raykd.models.base import count_parameters
    from raykd.models.registry import build_model
    from raykd.orchestration.runner import context_from_dict
    from raykd.tracking import schema as S

    search = SearchSpec.model_validate(config["search"])
    base = GridSpec.model_validate(config["base"])
    ctx = context_from_dict(config["ctx"])
    params = {k: config[k] for k in search.params}
    spec, row, overrides = trial_row_and_spec(search, base, params)
    trial_id = tune.get_context().get_trial_id()
    run_id = None
    if ctx.tracking is not None:
        run_id = ctx.tracking.start_run(
            trial_name(params),
            parent_run_id=ctx.parent_run_id,
            tags={S.TAG_ROLE: "trial", "raykd.trial_id": trial_id, "raykd.search": search.name},
            params={**params, "row": row.label},
        )
    # Seeds: the first streams per-epoch results (what ASHA judges); the objective is the mean
    # over all seeds, so a lucky seed cannot win the search.
    per_seed = []
    seed_rows = [row.model_copy(update={"seed": seed}) for seed in base.seed_list()]
    # "stage k/N" counts this trial's stages (a search does not know its trials in advance).
    ctx.numbers = stage_numbers(spec, [[r] for r in seed_rows], overrides)
    for i, seed_row in enumerate(seed_rows):
        record = run_row(spec, seed_row, ctx, tune_report=i == 0, overrides=overrides)
        history = _history(record.output_dir)
        best = min(history, key=lambda h: h["val/loss"]) if history else {}
        per_seed.append((record, best))
    student = build_model(spec.student_arch, row.student_depth, spec.cascades, spec.channels)

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    final = {
        "val_psnr": mean([b.get("val/psnr", float("nan")) for _, b in per_seed]),
        "val_loss": mean([b.get("val/loss", float("nan")) for _, b in per_seed]),
        "val_ssim": mean(
            [(r.metrics or {}).get("val", {}).get("ssim", float("nan")) for r, _ in per_seed]
        ),
        "student_params": count_parameters(student),
        "seeds": len(per_seed),
        "stage_id": ",".join(r.stage_id for r, _ in per_seed),
        "kd_run_id": ",".join(r.mlflow_run_id or "" for r, _ in per_seed),
    }
    if ctx.tracking is not None and run_id:
        ctx.tracking.log_metrics(run_id, {k: v for k, v in final.items() if k in OBJECTIVES})
        ctx.tracking.set_tags(run_id, {"raykd.kd_run_id": final["kd_run_id"]})
        ctx.tracking.end_run(run_id)
    # Always report once more: a reused stage sent no per-epoch results. The "/" names are the
    # per-epoch keys Train reports, which the searcher and scheduler watch.
    tune.report({**final, "val/psnr": final["val_psnr"], "val/loss": final["val_loss"]})


def _history(output_dir: str) -> list[dict[str, float]]:
    import json

    path = Path(output_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_search(search: SearchSpec, base: GridSpec, job, resume: bool = True) -> dict[str, Any]:
    """Run (or resume/extend) the search; returns trials and the best / Pareto-optimal ones."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from raykd.orchestration.cluster import say
    from raykd.orchestration.console import tune_verbosity
    from raykd.orchestration.job import trial_failure_config, tune_trainable
    from raykd.orchestration.runner import context_to_dict

    storage_url = f"sqlite:///{job.root / 'optuna.db'}"
    study_name = f"raykd-{search.name}"
    metrics = [o.metric for o in search.objectives]
    modes = [o.mode for o in search.objectives]
    single = len(metrics) == 1
    # Per-epoch results carry Train's keys; a single objective must be one of them.
    tune_metrics = [TUNE_KEYS.get(m, m) for m in metrics]
    # Name the objectives in the study, so Optuna's plots and optuna-dashboard label their
    # axes "val_psnr" rather than "objective 0".
    study = optuna.create_study(
        storage=storage_url,
        study_name=study_name,
        directions=["maximize" if m == "max" else "minimize" for m in modes],
        load_if_exists=True,
    )
    if study.metric_names != metrics:
        study.set_metric_names(metrics)
    if job.tracking is not None:  # the report finds the study from the job run
        job.tracking.set_tags(
            job.run_id, {"raykd.optuna_storage": storage_url, "raykd.optuna_study": study_name}
        )
    searcher = ResumableOptunaSearch(
        space={k: p.distribution() for k, p in search.params.items()},
        metric=tune_metrics[0] if single else tune_metrics,
        mode=modes[0] if single else modes,
        storage=optuna.storages.RDBStorage(storage_url),
        study_name=study_name,
        seed=base.first_seed,
    )
    scheduler = None
    if search.scheduler.type == "asha":
        # Train reports per epoch as "val/psnr"; max_t above the last report (epochs + final)
        # so the trial driver is never killed before it closes its MLflow run.
        scheduler = ASHAScheduler(
            metric=tune_metrics[0],
            mode=modes[0],
            max_t=base.epochs.kd + 2,
            grace_period=search.scheduler.grace_period,
            reduction_factor=search.scheduler.reduction_factor,
        )
    storage = job.root / "tune"
    path = storage / study_name
    trainable = tune_trainable(search_trial, job.ctx)
    if resume and tune.Tuner.can_restore(str(path)):
        say(f"restoring Tune experiment {path} (Optuna study {study_name} in {storage_url})")
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={
                "search": search.model_dump(mode="json"),
                "base": base.model_dump(mode="json"),
                "ctx": context_to_dict(job.ctx),
            },
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
                storage_path=str(storage),
                failure_config=trial_failure_config(job.ctx),
                verbose=tune_verbosity(),
            ),
        )
    results = tuner.fit()
    trials = []
    for r in results:
        m = r.metrics or {}
        trial = {
            "trial": m.get("trial_id") or (r.path or "?").rsplit("/", 1)[-1][:40],
            "params": {k: (r.config or {}).get(k) for k in search.params},
            **{k: m.get(k) for k in (*metrics, "val_ssim", "stage_id", "kd_run_id")},
            "error": error_summary(r.error) if r.error else None,
            "stopped": None,
            "run_id": None,
        }
        if not trial["error"] and trial.get(metrics[0]) is None and scheduler is not None:
            # No final report and no error: the scheduler stopped it after an epoch report.
            epoch = m.get("epoch") or m.get("training_iteration")
            trial["stopped"] = f"stopped at epoch {epoch} by ASHA"
        trial["run_id"] = _close_trial_run(job, m.get("trial_id"), trial["stopped"])
        if trial["stopped"] and job.tracking is not None:
            _mark_stopped_stages(job, search, base, r.config or {}, trial["stopped"])
        trials.append(trial)
    done = [t for t in trials if t.get(metrics[0]) is not None and not t["error"]]
    out: dict[str, Any] = {
        "trials": trials,
        "study": {"storage": storage_url, "name": study_name},
    }
    if single and done:
        key, sign = metrics[0], (1 if modes[0] == "max" else -1)
        out["best"] = max(done, key=lambda t: sign * t[key])
    elif done:
        out["pareto"] = pareto_front(done, metrics, modes)
    return out


def _mark_stopped_stages(job, search, base, config: dict, why: str) -> None:
    """The KD stage runs a stopped trial left unfinished: KILLED with the reason."""
    from raykd.orchestration.stage_runs import mark_stopped
    from raykd.plan.stages import row_requests

    params = {k: config[k] for k in search.params if k in config}
    if len(params) != len(search.params):
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


def search_rows(out: dict[str, Any]) -> list[dict[str, Any]]:
    """The job table's rows of a search: one per trial."""
    return [
        {
            "label": f"{t['trial']} {t['params']}",
            "val_psnr": t.get("val_psnr"),
            "val_ssim": t.get("val_ssim"),
            "stopped": t.get("stopped"),
            "error": t.get("error"),
            # The trial run is not a stage run: the report follows the KD runs it trained.
            "trial_run_id": t.get("run_id") or "",
            "stage_run_ids": [r for r in (t.get("kd_run_id") or "").split(",") if r],
        }
        for t in out["trials"]
    ]


def pareto_front(trials: list[dict], metrics: list[str], modes: list[str]) -> list[dict]:
    """Non-dominated trials (better or equal in every objective, strictly in one)."""
    signs = [1 if m == "max" else -1 for m in modes]

    def dominates(a: dict, b: dict) -> bool:
        ge = all(s * a[k] >= s * b[k] for k, s in zip(metrics, signs, strict=True))
        gt = any(s * a[k] > s * b[k] for k, s in zip(metrics, signs, strict=True))
        return ge and gt

    return [t for t in trials if not any(dominates(o, t) for o in trials if o is not t)]
