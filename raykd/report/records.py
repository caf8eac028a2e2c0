"""What one stage run is, as a tidy record: its setting, row, depths and seed (from tags and
params), plus the sort keys and per-volume summaries the tables share.

A :class:`Setting` is one dataset × acceleration block of the tables whatever the seeds: seeds
are pooled inside it (``seed`` restricts it to one seed). A budget study (runs tagged
``raykd.budget``) makes each budget scale its own block (``budget``), so no table mixes budgets.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raykd import kinds
from raykd.kinds import StageKind
from raykd.report.folds import SEP, TAG_BUDGET, TAG_FOLD, budget_label
from raykd.report.store import PARENT_TAG
from raykd.tracking import schema as S

SPLITS = ("test", "val")
METRICS = S.METRICS
# Rows trained without a teacher: their teacher depth is not part of their identity.
NO_TEACHER_ROWS = kinds.NO_TEACHER_ROWS
KD_ROWS = kinds.KD_ROWS


@dataclass(frozen=True, order=True)
class Setting:
    """One dataset × acceleration block of the tables (``seed`` restricts it to one seed;
    ``budget``, the budget scale, is "" unless the store holds a budget study)."""

    dataset: str
    acceleration: str
    seed: str = ""
    budget: str = ""

    def label(self, with_seed: bool = False) -> str:
        acc = self.acceleration
        # Super-resolution settings are tagged 'sr<scale>' ('sr2' → "SR x2").
        text = f"{self.dataset} SR x{acc[2:]}" if acc.startswith("sr") else f"{self.dataset} {acc}x"
        text += f" budget {self.budget}×" if self.budget else ""
        return f"{text} seed {self.seed}" if with_seed and self.seed else text


def _int_or_none(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def seed_key(value: str) -> tuple[tuple[float, str], ...]:
    """Sort key for seed tags: numeric order (9 before 10), untagged/odd ones last; a
    ``fold/seed`` key (cross-validation) sorts by fold, then seed."""
    out = []
    for part in value.split(SEP):
        try:
            out.append((float(part), part))
        except ValueError:
            out.append((float("inf"), part))
    return tuple(out)


def acc_key(value: str) -> float:
    try:
        return 100 + float(value[2:]) if value.startswith("sr") else float(value)
    except ValueError:
        return float("inf")


def row_of(run) -> dict[str, Any]:
    """One tidy record of a stage run from its tags and params (tags win, params fill in)."""
    tags, params = run.data.tags, run.data.params
    kind = tags.get(S.TAG_KIND) or params.get("kind", "")
    row = tags.get(S.TAG_ROW) or (
        S.stage_row(kind) if kind in (StageKind.TEACHER, StageKind.SFT, StageKind.STUDENT) else ""
    )
    dataset = tags.get(S.TAG_DATASET) or Path(params.get("data.source", "unknown")).name
    acc = tags.get(S.TAG_ACCELERATION) or params.get("data.mask.acceleration", "")
    acc = f"{float(acc):g}" if _int_or_none(acc) is not None else (acc or "?")
    t_depth = tags.get(S.TAG_TEACHER_DEPTH) or (
        params.get("teacher.depth", "") if kind != "student" else ""
    )
    s_depth = tags.get(S.TAG_STUDENT_DEPTH) or (
        params.get("student.depth", "") if kind != "teacher" else ""
    )
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "experiment_id": run.info.experiment_id,
        "status": run.info.status,
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
        "parent_run_id": tags.get(PARENT_TAG, ""),
        "stage_id": tags.get(S.TAG_STAGE_ID, ""),
        "kind": kind,
        "row": row,
        "method": (tags.get(S.TAG_METHOD) or "").lower(),
        "init": tags.get(S.TAG_INIT, ""),
        "dataset": dataset,
        "acceleration": acc,
        "seed": tags.get(S.TAG_SEED) or params.get("seed", ""),
        "fold": tags.get(TAG_FOLD, ""),
        "budget": budget_label(tags.get(TAG_BUDGET)),
        "epochs": _int_or_none(params.get("optim.epochs")),
        "teacher_depth": _int_or_none(t_depth),
        "student_depth": _int_or_none(s_depth),
        "teacher_cascades": _int_or_none(params.get("teacher.cascades")),
        "teacher_channels": _int_or_none(params.get("teacher.channels")),
        "student_cascades": _int_or_none(params.get("student.cascades")),
        "student_channels": _int_or_none(params.get("student.channels")),
        "teacher_arch": params.get("teacher.arch") or "dccnn",
        "student_arch": params.get("student.arch") or "dccnn",
        "teacher_run_id": tags.get(S.TAG_TEACHER_RUN, ""),
        # Logged at stage finish (Table 8); runs finished before that have none (NaN).
        "model_params": run.data.metrics.get(S.METRIC_PARAMS, np.nan),
    }


def volume_summary(report: dict[str, Any], metric: str) -> tuple[float, float, int]:
    """Mean ± sample std (ddof=1, as :func:`raykd.metrics.summarise`) over volumes, and n."""
    # null = undefined for that volume (strict-JSON NaN) and left out; a missing key is an error
    values = [v["metrics"][metric] for v in report["volumes"]]
    vals = np.array([float(x) for x in values if x is not None], dtype=np.float64)
    if vals.size == 0:
        return float("nan"), float("nan"), 0
    with np.errstate(invalid="ignore"):
        std = float(np.std(vals, ddof=1)) if vals.size > 1 else 0.0
    return float(np.mean(vals)), std, int(vals.size)


def preferred(values: pd.Series, default: int) -> int | None:
    vals = [int(v) for v in values.dropna()]
    if not vals:
        return None
    return default if default in vals else Counter(vals).most_common(1)[0][0]


def cell_name(
    setting: Setting, row: str, method: str, t_depth: int | None, s_depth: int | None
) -> str:
    parts = [setting.label(with_seed=True), row]
    if method:
        parts.append(method)
    if t_depth is not None and row not in NO_TEACHER_ROWS:
        parts.append(f"teacher D{t_depth}")
    if s_depth is not None and row != "teacher":
        parts.append(f"student D{s_depth}")
    return " ".join(parts)
