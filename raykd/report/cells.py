"""Table cells from eval JSONs: one run's mean ± std over volumes, or several seeds pooled.

When a setting was run with several seeds, a cell pools them: mean over seeds of the per-seed
volume means ± the sample std of those per-seed means (the training-seed spread, which a single
seed hides), followed by the sample std over all seed × volume values in brackets.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from raykd.report.folds import fold_note, has_folds, replicates_text
from raykd.report.records import Setting, volume_summary
from raykd.report.runs import StageRuns
from raykd.report.table_model import HIGHER_IS_BETTER, LEGEND, SEED_NOTE, Cell


def report_cell(runs: StageRuns, report: dict[str, Any] | None, metric: str, run_id: str) -> Cell:
    if report is None:
        return Cell(status="missing", run_id=run_id)
    # Absent (older evals) or undefined (null: e.g. VIF on slices smaller than its 4 scales).
    if not all(v["metrics"].get(metric) is not None for v in report["volumes"]):
        runs.warn_once(f"run {run_id or 'zero-filled'}: no '{metric}' in its eval JSON; shown as —")
        return Cell(status="missing", run_id=run_id)
    mean, std, n = volume_summary(report, metric)
    return Cell(mean, std, n, run_id)


def run_cell(runs: StageRuns, run: pd.Series | None, metric: str) -> Cell:
    if run is None:
        return Cell(status="missing")
    return report_cell(runs, runs.eval(run["run_id"]), metric, run["run_id"])


def seed_cell(runs: StageRuns, found: dict[str, pd.Series], metric: str, seeds: list[str]) -> Cell:
    """One cell from ``{seed: run}`` (:meth:`StageRuns.find_seeds`) of a setting with ``seeds``.

    One seed: exactly :func:`run_cell` (mean ± std over volumes). Several: pooled as described
    in the module docstring; a seed whose eval JSON lacks the metric is left out like a missing
    run (its warning names it), never counted as zero.
    """
    if len(seeds) <= 1:
        cell = run_cell(runs, next(iter(found.values()), None), metric)
        cell.seeds = tuple(found) if cell.status == "ok" else ()
        return cell
    per_seed: dict[str, np.ndarray] = {}
    for seed, run in found.items():
        cell = run_cell(runs, run, metric)
        if cell.status == "ok":
            report = runs.eval(run["run_id"])
            per_seed[seed] = np.array(
                [float(v["metrics"][metric]) for v in report["volumes"]], dtype=np.float64
            )
    run_ids = ";".join(str(found[s]["run_id"]) for s in per_seed)
    if not per_seed:
        return Cell(status="missing", pooled=True, run_id=run_ids)
    means = np.array([v.mean() for v in per_seed.values()])
    pooled = np.concatenate(list(per_seed.values()))
    with np.errstate(invalid="ignore"):
        std_seeds = float(np.std(means, ddof=1)) if means.size > 1 else math.nan
        std_volumes = float(np.std(pooled, ddof=1)) if pooled.size > 1 else 0.0
    return Cell(
        mean=float(means.mean()),
        std=std_seeds,
        n=max(v.size for v in per_seed.values()),
        run_id=run_ids,
        pooled=True,
        seeds=tuple(per_seed),
        std_seeds=std_seeds,
        std_volumes=std_volumes,
        partial=len(per_seed) < len(seeds),
    )


def section_lead(runs: StageRuns, setting: Setting) -> str:
    """A multi-seed section's first line: which seeds its numbers pool."""
    seeds = runs.seeds(setting)
    if len(seeds) <= 1:
        return ""
    if has_folds(seeds):
        return f"Replicates pooled ({len(seeds)}: {replicates_text(seeds)}): {', '.join(seeds)}."
    return f"Seeds pooled ({len(seeds)}): {', '.join(seeds)}."


def mark_best(cells: list[Cell], metric: str) -> None:
    """Bold the best defined mean (ties all bold)."""
    vals = [c.mean for c in cells if c.status == "ok" and np.isfinite(c.mean)]
    if not vals:
        return
    best = max(vals) if HIGHER_IS_BETTER.get(metric, True) else min(vals)
    for c in cells:
        if c.status == "ok" and c.mean == best:
            c.best = True


def record(setting: Setting, split: str, cell: Cell, metric: str, **extra: Any) -> dict:
    return {
        "dataset": setting.dataset,
        "acceleration": setting.acceleration,
        "seed": setting.seed,
        **extra,
        "metric": metric,
        "mean": cell.mean,
        "std": cell.std,
        "std_over": cell.std_over,
        "std_seeds": cell.std_seeds,
        "std_volumes": cell.std if not cell.pooled else cell.std_volumes,
        "n_volumes": cell.n,
        "n_seeds": len(cell.seeds),
        "seeds": ";".join(cell.seeds),
        "partial": cell.partial,
        "best": cell.best,
        "status": cell.status,
        "run_id": cell.run_id,
        "split": split,
    }


def table_notes(runs: StageRuns, *extra: str) -> list[str]:
    """Header lines every table shares: which split/volumes, how seeds are pooled, legend."""
    notes = [runs.split_description()]
    if folds := fold_note(list(runs.frame["seed"])):
        notes.append(folds)
    if any(runs.multi_seed(s) for s in runs.settings()):
        notes.append(SEED_NOTE)
    return [*notes, *extra, LEGEND]
