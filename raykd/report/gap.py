"""The teacher–student PSNR gap: a paired per-(seed, volume) difference with a 95% bootstrap
confidence interval (:func:`paired_gap`), per KD method, framework and setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from raykd.errors import RaykdError
from raykd.kinds import RowKind
from raykd.report.cells import section_lead, seed_cell, table_notes
from raykd.report.inference import (
    BOOTSTRAP_SEED,
    MIN_UNITS,
    RESAMPLES,
    bootstrap_ci,
    unit_pairs,
)
from raykd.report.records import Setting
from raykd.report.runs import StageRuns
from raykd.report.subjects import subject_means, t_interval
from raykd.report.table_model import MISSING, ReportTable, Section, method_name


@dataclass
class Gap:
    """Teacher − student PSNR (dB) with its 95% CI (NaN bounds: too few units for a CI)."""

    gap: float = math.nan
    low: float = math.nan
    high: float = math.nan
    n_units: int = 0
    seeds: tuple[str, ...] = ()
    ci: str = "hierarchical_bootstrap95"  # with folds: "subject_t95" (t interval over subjects)

    def text(self) -> str:
        if math.isnan(self.gap):
            return MISSING
        if math.isnan(self.low):
            return f"{self.gap:.2f} [n={self.n_units}, no CI]"
        return f"{self.gap:.2f} [{self.low:.2f}, {self.high:.2f}]"


def paired_gap(
    runs: StageRuns, teacher: dict[str, pd.Series], student: dict[str, pd.Series], what: str
) -> Gap:
    """Teacher − student volume PSNR from ``{seed: run}`` of each, paired per (seed, volume).

    The gap is the mean over seeds of the per-seed mean over volumes; its 95% CI
    :func:`~raykd.report.inference.bootstrap_ci` (``scipy.stats.bootstrap`` when one level
    varies, else the hierarchical bootstrap: seeds, then volumes), given only from
    ``MIN_UNITS`` units on: slices are not resampled, they are not independent. With folds the
    units are test subjects (:mod:`raykd.report.subjects`): the gap is the mean over subjects,
    its CI Student's t interval over them (from 2 subjects on).
    """
    try:
        pairs = unit_pairs(runs, student, teacher, "psnr")
    except RaykdError as exc:
        runs.warn_once(f"gap {what}: volumes cannot be paired ({exc}); gap missing")
        return Gap()
    groups = pairs.by_seed()
    if not groups:
        return Gap()
    if pairs.by_fold() is not None:  # folds: test subjects are the units, t interval over them
        diffs = pairs.candidate - pairs.baseline
        per = np.array(list(subject_means(pairs.keys, diffs, pairs.subjects).values()))
        gap, low, high = t_interval(per)
        return Gap(gap, low, high, int(per.size), tuple(pairs.seeds), "subject_t95")
    n = sum(g.size for g in groups)
    if n < MIN_UNITS:
        return Gap(float(np.mean([g.mean() for g in groups])), n_units=n, seeds=tuple(pairs.seeds))
    gap, low, high = bootstrap_ci(groups)
    return Gap(gap, low, high, n, tuple(pairs.seeds))


# The KD columns and the row kind whose students they compare with the teacher.
_KD_ROWS = {"std": RowKind.STD_KD, "sft": RowKind.SFT_KD, "random": RowKind.SFT_KD_RANDOM}


def gap_table(
    runs: StageRuns, student_depth: int | None = None, teacher_depth: int | None = None
) -> ReportTable:
    """Teacher PSNR − student PSNR (dB) with no KD, Std-KD and SFT-KD (and, when run, the
    equal-compute student and SFT-KD with random init), per method and setting, each with a
    95% bootstrap CI (:func:`paired_gap`).

    The reference is the plain teacher in every column (as in the paper's 0.56 → 0.53 →
    0.03 dB), so the columns are comparable; negative means the student beats the teacher.
    The headline per setting takes the best (smallest-gap) method of each framework and
    names it; the table lists every method and the mean over methods.
    """
    t_depth = teacher_depth or runs.teacher_depth()
    s_depth = student_depth or runs.student_depth()
    table = ReportTable("Teacher–student PSNR gap (dB)")
    table.notes = _notes(runs, t_depth, s_depth)
    cols = _columns(runs)
    header = ["Method"] + [name for _, name in cols]
    for setting in runs.settings():
        seeds = runs.seeds(setting)
        teacher = runs.find_seeds(setting, "teacher", teacher_depth=t_depth)
        t_psnr = seed_cell(runs, teacher, "psnr", seeds)
        shared, gaps = _setting_gaps(runs, setting, teacher, cols, t_depth, s_depth)
        headline = _headline(setting.label(), shared["none"], gaps)
        table.summary.append(headline)
        lead = " ".join(x for x in (section_lead(runs, setting), f"**{headline}**") if x)
        rows = _rows(gaps, shared, cols)
        table.sections.append(Section(setting.label(), header, rows, lead=lead))
        teacher_psnr = t_psnr.mean if t_psnr.status == "ok" else math.nan
        table.records += _records(runs, setting, gaps, cols, teacher_psnr)
    return table


def _notes(runs: StageRuns, t_depth: int, s_depth: int) -> list[str]:
    return table_notes(
        runs,
        f"gap = volume PSNR(teacher D{t_depth}) − PSNR(student D{s_depth}) paired per (seed, "
        "volume), mean over volumes per seed, then over seeds; reference: the plain teacher in "
        "every column; negative = the student beats the teacher.",
        f"[low, high] = 95% hierarchical bootstrap CI ({RESAMPLES} resamples of seeds, then of "
        f"volumes within each seed, RNG seed {BOOTSTRAP_SEED}; percentile bootstrap of the one "
        "level that varies when there is one seed); 'n=…, no CI' = fewer than "
        f"{MIN_UNITS} (seed, volume) units, too few for a CI.",
        "With cross-validation folds the units are test subjects instead: gap = mean over "
        "subjects, [low, high] = Student's t 95% CI over them (from 2 subjects on).",
        "Headline: the best (smallest-gap) method of each framework, named in brackets.",
    )


def _columns(runs: StageRuns) -> list[tuple[str, str]]:
    """(key, header) per column; the two controls only when the store has their rows."""
    with_equal = (runs.frame["row"] == "equal_compute").any()
    with_random = (runs.frame["row"] == "sft_kd_random").any()
    cols = [("none", "no KD")]
    cols += [("equal", "equal compute")] if with_equal else []
    cols += [("std", "Std-KD"), ("sft", "SFT-KD")]
    cols += [("random", "SFT-KD random init")] if with_random else []
    return cols


def _setting_gaps(
    runs: StageRuns,
    setting: Setting,
    teacher: dict[str, pd.Series],
    cols: list[tuple[str, str]],
    t_depth: int,
    s_depth: int,
) -> tuple[dict[str, Gap], dict[str, dict[str, Gap]]]:
    """The method-free gaps (no KD, equal compute) and, per method, every column's gap."""

    def gap_of(row: str, method: str = "") -> Gap:
        student = runs.find_seeds(setting, row, method, t_depth, s_depth)
        what = f"{setting.label()} teacher vs {row}{' ' + method if method else ''}"
        return paired_gap(runs, teacher, student, what)

    keys = {k for k, _ in cols}
    shared = {"none": gap_of("student")}
    if "equal" in keys:
        shared["equal"] = gap_of("equal_compute")
    gaps: dict[str, dict[str, Gap]] = {}
    for method in runs.methods():
        gaps[method] = {**shared}
        for fw, row in _KD_ROWS.items():
            if fw in keys:
                gaps[method][fw] = gap_of(row, method)
    return shared, gaps


def _rows(
    gaps: dict[str, dict[str, Gap]], shared: dict[str, Gap], cols: list[tuple[str, str]]
) -> list[list[str]]:
    """One row per method, then the mean over methods (the method-free columns as they are)."""
    rows = [[method_name(m)] + [g[k].text() for k, _ in cols] for m, g in gaps.items()]
    means = {
        k: _nanmean([g[k].gap for g in gaps.values()]) if k in _KD_ROWS else shared[k].gap
        for k, _ in cols
    }
    rows.append(["mean over methods"] + [_fmt(means[k]) for k, _ in cols])
    return rows


def _headline(label: str, no_kd: Gap, gaps: dict[str, dict[str, Gap]]) -> str:
    points = {m: {k: g.gap for k, g in gm.items()} for m, gm in gaps.items()}
    best = {fw: _best_gap(points, fw) for fw in ("std", "sft")}
    return (
        f"{label}: gap (dB) no KD {_fmt(no_kd.gap)} → Std-KD {_fmt(best['std'][1])} "
        f"({best['std'][0]}) → SFT-KD {_fmt(best['sft'][1])} ({best['sft'][0]})"
    )


def _records(
    runs: StageRuns,
    setting: Setting,
    gaps: dict[str, dict[str, Gap]],
    cols: list[tuple[str, str]],
    teacher_psnr: float,
) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for method, g in gaps.items():
        for fw, name in cols:
            item = g[fw]
            out.append(
                {
                    "dataset": setting.dataset,
                    "acceleration": setting.acceleration,
                    "seed": setting.seed,
                    **({"budget": setting.budget} if setting.budget else {}),
                    "method": method,
                    "framework": name,
                    "gap_db": item.gap,
                    "ci_low": item.low,
                    "ci_high": item.high,
                    "ci": item.ci if not math.isnan(item.low) else "",
                    "n_units": item.n_units,
                    "n_seeds": len(item.seeds),
                    "seeds": ";".join(item.seeds),
                    "teacher_psnr": teacher_psnr,
                    "split": runs.split,
                }
            )
    return out


def _fmt(g: float) -> str:
    return MISSING if math.isnan(g) else f"{g:.2f}"


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def _best_gap(gaps: dict[str, dict[str, float]], fw: str) -> tuple[str, float]:
    defined = [(g[fw], m) for m, g in gaps.items() if not math.isnan(g[fw])]
    if not defined:
        return MISSING, math.nan
    value, method = min(defined)
    return method_name(method), value
