"""The paper's grid as Ray Tune trials over the stage graph.

What the grid is — presets, typed rows, stage configs — is planned in :mod:`raykd.plan`; here
each Tune trial (one Table-1 row, or every row of one seed) asks
:func:`~raykd.orchestration.runner.ensure_stages` for its rows' dependencies (teacher or SFT
teacher) and then for their own stages, so every distinct stage trains once and is reused by
every row, job run and search that needs it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from raykd.errors import error_summary
from raykd.kinds import RowKind
from raykd.orchestration.messages import ROW_RESULTS, GridTrial, RowResult
from raykd.plan.presets import GridSpec
from raykd.plan.rows import Row, grid_rows, trial_groups
from raykd.plan.stages import NO_OVERRIDES, StageOverrides, row_requests

ROWS_METRIC = "rows_json"  # the Tune metric that carries a trial's rows (ROW_RESULTS JSON)


def run_rows(
    spec: GridSpec,
    rows: list[Row],
    ctx,
    tune_report: bool = False,
    overrides: StageOverrides = NO_OVERRIDES,
) -> list:
    """Train (or reuse) everything the rows need; returns each row's own StageRecord.

    Two chains: first the teachers any row depends on, then every other missing stage. With one
    row per trial, concurrent trials thus share a teacher without waiting for each other's
    students; with all rows of a seed in one trial, the seed costs two Ray Train starts.
    """
    from raykd.orchestration.runner import ensure_stages

    per_row = [row_requests(spec, row, overrides) for row in rows]
    deps = [req for reqs in per_row for req in reqs[:-1]]
    if deps:
        ensure_stages(deps, ctx)
    own = [reqs[-1] for reqs in per_row]
    records = ensure_stages(deps + own, ctx, tune_report=tune_report)
    return [records[req.stage_id] for req in own]


def dependencies_first(groups: list[list[Row]]) -> list[list[Row]]:
    """Trials in the order that fills a cluster: every seed's teachers and plain students
    before any KD row (stable otherwise). In table order a KD row's trial started early and held
    its slot waiting for its teacher, while other seeds' teachers queued behind it; now the
    teachers of all seeds train at once and each seed's KD rows start when their teacher ends.
    """
    return sorted(groups, key=lambda g: any(len(RowKind(r.kind).stages) > 1 for r in g))


def grid_stage_ids(spec: GridSpec) -> list[str]:
    """Every stage identity the grid's rows need (planning only: no Ray, no files)."""
    return [req.stage_id for row in grid_rows(spec) for req in row_requests(spec, row)]


def stage_numbers(
    spec: GridSpec, groups: list[list[Row]], overrides: StageOverrides = NO_OVERRIDES
) -> dict[str, int]:
    """Each distinct stage the rows need, numbered 1..N in the order trials train them (per
    trial: its rows' teachers first, then their own stages, as :func:`run_rows` asks): the k and
    N of the console's ``stage k/N``."""
    numbers: dict[str, int] = {}
    for rows in groups:
        per_row = [row_requests(spec, row, overrides) for row in rows]
        ordered = [req for reqs in per_row for req in reqs[:-1]] + [reqs[-1] for reqs in per_row]
        for req in ordered:
            numbers.setdefault(req.stage_id, len(numbers) + 1)
    return numbers


def run_row(
    spec: GridSpec,
    row: Row,
    ctx,
    tune_report: bool = False,
    overrides: StageOverrides = NO_OVERRIDES,
):
    """Train (or reuse) everything one row needs; returns the row's own StageRecord."""
    return run_rows(spec, [row], ctx, tune_report, overrides)[0]


def grid_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: one grid row, or all rows of one setting and seed.

    Reports each row's :class:`RowResult` (label, stage, MLflow run, validation metrics) as the
    JSON of the typed list, so a multi-row trial still yields one table row per grid row.
    """
    from ray import tune

    from raykd.orchestration.context import context_from_spec

    trial = GridTrial.model_validate(config)  # the boundary: checked once, typed after
    records = run_rows(trial.spec, trial.rows, context_from_spec(trial.ctx))
    results = [row_result(row, record) for row, record in zip(trial.rows, records, strict=True)]
    val = {f"val_{k}": v for k, v in results[-1].val.items()}
    tune.report({**val, ROWS_METRIC: ROW_RESULTS.dump_json(results).decode()})


def row_result(row: Row, record) -> RowResult:
    """A finished row: its stage's validation metrics and what they average over."""
    return RowResult(
        label=row.label,
        row=row,
        val=(record.metrics or {}).get("val", {}),
        scope=eval_scope(record.output_dir, "val"),
        stage_id=record.stage_id,
        mlflow_run_id=record.mlflow_run_id or None,
    )


def run_grid(spec: GridSpec, job) -> list[RowResult]:
    """Run every row of ``spec`` through Tune trials; returns one result per row, table order."""
    from ray import tune

    from raykd.orchestration.console import tune_quiet, tune_verbosity
    from raykd.orchestration.context import context_spec
    from raykd.orchestration.job import tune_trainable

    rows = grid_rows(spec)
    row_groups = dependencies_first(trial_groups(spec, rows))
    job.ctx.numbers = stage_numbers(spec, row_groups)
    trial = GridTrial(spec=spec, rows=[], ctx=context_spec(job.ctx))
    fixed = trial.model_dump(mode="json", exclude={"rows"})
    groups = [[r.model_dump(mode="json") for r in group] for group in row_groups]
    name = "grid-" + hashlib.sha256(json_dumps(fixed["spec"]).encode()).hexdigest()[:10]
    # A killed grid is resumed by running it again: finished stages are reused from the stage
    # store and unfinished ones continue from their last Ray Train checkpoint.
    tuner = tune.Tuner(
        tune_trainable(grid_trial, job.ctx),
        param_space={**fixed, "rows": tune.grid_search(groups)},
        # A trial's actor imports torch, Ray Train and MLflow (seconds; a minute on an
        # oversubscribed node): a finished trial's actor runs the next one instead.
        tune_config=tune.TuneConfig(
            max_concurrent_trials=job.resources.concurrency, reuse_actors=True
        ),
        run_config=tune.RunConfig(
            name=f"{name}-{job.run_id[:8]}",
            **job.ctx.store.ray_storage("tune"),
            verbose=tune_verbosity(),
        ),
    )
    with tune_quiet():
        results = tuner.fit()
    out = [entry for result in results for entry in trial_results(result)]
    order = {r.label: i for i, r in enumerate(rows)}
    return sorted(out, key=lambda e: order.get(e.label, len(order)))


def trial_results(result) -> list[RowResult]:
    """A finished trial's rows as it reported them; a trial that failed before reporting: one
    failed result per row it owned."""
    metrics = result.metrics or {}
    if ROWS_METRIC in metrics:
        return ROW_RESULTS.validate_json(metrics[ROWS_METRIC])
    why = error_summary(result.error) if result.error else "no result"
    rows = GridTrial.model_validate(result.config).rows if result.config else []
    return [RowResult(label=row.label, row=row, error=why) for row in rows]


def eval_scope(output_dir: str, split: str) -> str:
    """``split val: 1 volume, 4 slices``: what a stage's final metrics average over ("" when
    its evaluation report is not there)."""
    from raykd.train.evaluate import slice_count

    path = Path(output_dir) / f"eval_{split}.json"
    if not path.is_file():
        return ""
    return slice_count(json.loads(path.read_text()), split)


def json_dumps(data: Any) -> str:
    return json.dumps(data, sort_keys=True)
