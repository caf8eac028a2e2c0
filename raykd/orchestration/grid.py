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
from raykd.plan.presets import GridSpec
from raykd.plan.rows import Row, grid_rows, trial_groups
from raykd.plan.stages import NO_OVERRIDES, StageOverrides, row_requests


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

    ``config`` holds the spec's and rows' own dumps (validated back here, once) and the stage
    context. Reports each row's result (label, stage, MLflow run, validation metrics) as JSON
    so a multi-row trial still yields one table row per grid row.
    """
    from ray import tune

    from raykd.orchestration.runner import context_from_dict

    spec = GridSpec.model_validate(config["spec"])
    rows = [Row.model_validate(r) for r in config["rows"]]
    ctx = context_from_dict(config["ctx"])
    entries = []
    records = run_rows(spec, rows, ctx)
    for row, record in zip(rows, records, strict=True):
        val = (record.metrics or {}).get("val", {})
        entries.append(
            {
                **row.to_dict(),
                "label": row.label,
                **{f"val_{k}": v for k, v in val.items()},
                "scope": eval_scope(record.output_dir, "val"),
                "stage_id": record.stage_id,
                "mlflow_run_id": record.mlflow_run_id or "",
            }
        )
    last = entries[-1]
    tune.report(
        {
            **{k: v for k, v in last.items() if k.startswith("val_")},
            "rows_json": json.dumps(entries),
        }
    )


def run_grid(spec: GridSpec, job) -> list[dict[str, Any]]:
    """Run every row of ``spec`` through Tune trials; returns one result dict per row."""
    from ray import tune

    from raykd.orchestration.console import tune_verbosity
    from raykd.orchestration.job import tune_trainable
    from raykd.orchestration.runner import context_to_dict

    rows = grid_rows(spec)
    row_groups = dependencies_first(trial_groups(spec, rows))
    job.ctx.numbers = stage_numbers(spec, row_groups)
    groups = [[r.to_dict() for r in group] for group in row_groups]
    spec_d = spec.model_dump(mode="json")
    name = "grid-" + hashlib.sha256(json_dumps(spec_d).encode()).hexdigest()[:10]
    storage = job.root / "tune"
    # A killed grid is resumed by running it again: finished stages are reused from the stage
    # store and unfinished ones continue from their last Ray Train checkpoint.
    tuner = tune.Tuner(
        tune_trainable(grid_trial, job.ctx),
        param_space={
            "spec": spec_d,
            "ctx": context_to_dict(job.ctx),
            "rows": tune.grid_search(groups),
        },
        # A trial's actor imports torch, Ray Train and MLflow (seconds; a minute on an
        # oversubscribed node): a finished trial's actor runs the next one instead.
        tune_config=tune.TuneConfig(
            max_concurrent_trials=job.resources.concurrency, reuse_actors=True
        ),
        run_config=tune.RunConfig(
            name=f"{name}-{job.run_id[:8]}", storage_path=str(storage), verbose=tune_verbosity()
        ),
    )
    results = tuner.fit()
    out: list[dict[str, Any]] = []
    for result in results:
        metrics = dict(result.metrics or {})
        if "rows_json" in metrics:
            out.extend(json.loads(metrics["rows_json"]))
            continue
        # The trial failed before reporting: one failed entry per row it owned.
        for data in (result.config or {}).get("rows", []):
            row = Row.model_validate(data)
            out.append(
                {
                    **row.to_dict(),
                    "label": row.label,
                    "error": error_summary(result.error) if result.error else "no result",
                }
            )
    order = {r.label: i for i, r in enumerate(rows)}
    return sorted(out, key=lambda e: order.get(e["label"], len(order)))


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
