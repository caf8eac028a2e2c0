"""Subjects as the unit of inference of a cross-validated comparison.

With ``--folds`` a comparison's question is whether a difference generalises across subjects,
so what varies independently is the **test subject**: seeds of one fold share its test subject
and its training subjects, and with ``--test`` every fold tests the same volumes. The unit is
therefore one test subject, its value the mean difference over every (fold, seed) model that
tested it (mean over each model's volumes of that subject, then over the models), and:

* the test is a two-sided Wilcoxon signed-rank test on the per-subject differences, the gate
  counts distinct subjects (:data:`MIN_SUBJECTS`; the smallest two-sided exact p on ``n`` units
  is ``2 / 2**n``: 0.25, 0.125, 0.0625 on 3, 4, 5 subjects, so below 6 no verdict is possible
  and the report says so in one line);
* the 95% CI is Student's t interval on the per-subject differences (``n − 1`` degrees of
  freedom). A percentile bootstrap over 3–5 subjects (nested or not) covers far less than 95%
  (``benchmarks/coverage.py`` measures both).

A subject is the patient where the eval JSON names one (``subject``: the h5 file's
``patient_id`` attribute, which fastMRI and DICOM conversions carry), else the volume (file).

The seed-level analysis stays available under its own name, **training randomness on fixed
subjects**: per (fold, seed) model the mean difference over its volumes; the subjects are held
fixed (no generalisation claim), and the estimate (mean over subjects of the mean over their
models) gets a t interval from the between-seed spread within subjects (pooled variance,
``Σ (models − 1)`` degrees of freedom). It needs ≥ 2 seeds on some subject.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

MIN_SUBJECTS = 6
LEVEL = 0.95
TRAINING_LEVEL = "training randomness on fixed subjects"


def min_p(n: int) -> float:
    """The smallest two-sided p an exact signed-rank test can give on ``n`` units."""
    return min(1.0, 2.0 / 2**n)


def too_few_subjects(n: int) -> str:
    """The one line a report prints instead of a verdict when ``n`` subjects cannot give one."""
    return (
        f"no verdict possible: {n} subject{'s' if n != 1 else ''} (the smallest two-sided "
        f"Wilcoxon p on {n} units is {min_p(n):.3g}; a verdict needs ≥ {MIN_SUBJECTS})"
    )


def t_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high): Student's t interval of the mean of independent ``values`` (NaN bounds
    below two values)."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean()) if x.size else math.nan
    if x.size < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return mean, float(mean - half), float(mean + half)


def t_p_value(mean: float, se: float, df: int) -> float:
    """Two-sided p of a t statistic ``mean / se`` (1 when both are 0)."""
    if se == 0:
        return 1.0 if mean == 0 else 0.0
    return float(2 * stats.t.sf(abs(mean / se), df))


def subject_means(
    keys: Sequence[tuple], diffs: np.ndarray, subject_of: Mapping[str, str]
) -> dict[str, float]:
    """``{subject: mean difference}`` over (model key, volume, …) units: the mean over the
    subject's volumes per model, then over the models that tested the subject."""
    per: dict[str, dict[str, list[float]]] = {}
    for key, d in zip(keys, diffs, strict=True):
        if math.isfinite(d):
            subject = subject_of.get(key[1], key[1])
            per.setdefault(subject, {}).setdefault(key[0], []).append(float(d))
    return {s: float(np.mean([np.mean(v) for v in models.values()])) for s, models in per.items()}


@dataclass
class FixedSubjects:
    """Training randomness on fixed subjects: estimate, t interval, p, degrees of freedom."""

    mean: float = math.nan
    low: float = math.nan
    high: float = math.nan
    p_value: float = math.nan
    df: int = 0


def fixed_subject_test(groups: Sequence[Sequence[float]], level: float = LEVEL) -> FixedSubjects:
    """``groups``: per subject (or fold) the per-model mean differences. The mean over subjects
    of their model means, with a t interval and p from the pooled within-subject spread."""
    groups = [np.asarray(g, dtype=np.float64) for g in groups if len(g)]
    if not groups:
        return FixedSubjects()
    mean = float(np.mean([g.mean() for g in groups]))
    df = int(sum(g.size - 1 for g in groups))
    if df < 1:
        return FixedSubjects(mean)
    pooled = sum(float(((g - g.mean()) ** 2).sum()) for g in groups) / df
    k = len(groups)
    se = math.sqrt(pooled * sum(1 / g.size for g in groups)) / k
    half = stats.t.ppf(0.5 + level / 2, df) * se
    return FixedSubjects(mean, mean - half, mean + half, t_p_value(mean, se, df), df)


def model_groups(
    keys: Sequence[tuple], diffs: np.ndarray, subject_of: Mapping[str, str]
) -> list[list[float]]:
    """Per test-subject set, the per-model mean differences (a model's mean over its volumes),
    for :func:`fixed_subject_test`; models that tested the same subjects form one group."""
    per_model: dict[str, list[float]] = {}
    tested: dict[str, set[str]] = {}
    for key, d in zip(keys, diffs, strict=True):
        if math.isfinite(d):
            per_model.setdefault(key[0], []).append(float(d))
            tested.setdefault(key[0], set()).add(subject_of.get(key[1], key[1]))
    groups: dict[frozenset[str], list[float]] = {}
    for model, values in per_model.items():
        groups.setdefault(frozenset(tested[model]), []).append(float(np.mean(values)))
    return list(groups.values())
