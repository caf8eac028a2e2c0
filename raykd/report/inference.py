"""Paired inference over independent units: one trained model pair (a seed) on one volume.

Slices of one volume share the subject, the coil set-up and the trained models, so they are not
independent samples: 120 slices of one volume over two seeds once gave p = 1e-16 for a 0.2 dB
median difference. What varies independently is the training seed (the models) and the volume
(the subject), so the unit of inference is a (seed, volume) pair and its value is the volume's
metric from the eval JSON (for PSNR the fastMRI volume PSNR, the same number as Table 1 and
``final_<split>_psnr``).

Per contrast, with ``d`` = candidate − baseline per unit:

* a two-sided Wilcoxon signed-rank test on the ``n`` unit differences (``scipy.stats.wilcoxon``;
  exact distribution for small ``n``);
* a 95% hierarchical bootstrap CI of the mean difference (:func:`hierarchical_bootstrap`):
  resample seeds, then volumes within each drawn seed, so that volumes of one seed (which share
  the trained models) count as one cluster, not as independent evidence. Where only one level
  varies (one seed, or one volume per seed) :func:`bootstrap_ci` hands the units to
  ``scipy.stats.bootstrap`` (percentile method) instead.

:class:`UnitPairs` is the one paired type: (seed, volume) units here, (seed, volume, slice)
pairs for the descriptive per-slice test (:mod:`raykd.report.slices`).

With cross-validation folds a replicate is a (fold, seed) model (key ``fold/seed``) and the
unit of inference is the **test subject** (:mod:`raykd.report.subjects`): the Wilcoxon test
runs on the per-subject mean differences, the CI is a t interval over subjects, and the gate
counts distinct subjects; the (fold, seed) models give the second analysis, training randomness
on fixed subjects, reported beside it and never called independent units.

A verdict needs ``n ≥`` :data:`MIN_UNITS` and both to agree (p < α *and* a CI that excludes 0);
the p is the Holm-adjusted one where the test belongs to a family (:func:`judge`).
``MIN_UNITS = 6``: the smallest two-sided p an exact signed-rank (or sign) test can reach on
``n`` units is ``2 / 2**n`` — 0.0625 at n = 5, 0.031 at n = 6 — so below 6 units a verdict of
"better" is impossible whatever the data, and "no difference" would be an artefact of ``n``;
a percentile bootstrap on 3–5 units has only a handful of distinct resample means and
under-covers badly. Below the minimum the report refuses a verdict and says why.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from scipy import stats

from raykd.errors import RaykdError
from raykd.report.folds import (
    bootstrap_replicates,
    fold_tree,
    has_folds,
    split_key,
)
from raykd.report.records import seed_key
from raykd.report.runs import StageRuns
from raykd.report.subjects import (
    MIN_SUBJECTS,
    fixed_subject_test,
    model_groups,
    subject_means,
    t_interval,
    too_few_subjects,
)

ALPHA = 0.05
MIN_UNITS = 6
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


def volume_values(report: dict[str, Any], metric: str) -> dict[str, float]:
    """``{volume: value}`` of one metric from an eval JSON's per-volume ``metrics``.

    A ``null`` value (strict-JSON writers store NaN/inf so) is undefined: NaN, left out later.
    """
    out: dict[str, float] = {}
    for vol in report["volumes"]:
        metrics = vol.get("metrics", {})
        if metric not in metrics:
            raise RaykdError(
                f"eval JSON volume {vol.get('volume')}: no per-volume '{metric}' value; "
                "re-evaluate the run"
            )
        value = metrics[metric]
        out[str(vol["volume"])] = math.nan if value is None else float(value)
    return out


def volume_subjects(report: dict[str, Any]) -> dict[str, str]:
    """``{volume: subject}`` of an eval JSON: the ``subject`` it records (a patient id), else
    the volume (one file = one subject)."""
    return {str(v["volume"]): str(v.get("subject") or v["volume"]) for v in report["volumes"]}


@dataclass
class UnitPairs:
    """Values of two rows paired by key; a key starts with the seed: (seed, volume) units, or
    (seed, volume, slice) for per-slice pairs."""

    keys: list[tuple]
    baseline: np.ndarray
    candidate: np.ndarray
    unpaired: list[str]  # seeds that only one side has (or whose eval JSON is missing)
    subjects: dict[str, str] = field(default_factory=dict)  # volume -> subject (absent: itself)

    @property
    def n(self) -> int:
        return len(self.keys)

    @property
    def seeds(self) -> list[str]:
        return list(dict.fromkeys(k[0] for k in self.keys))

    def by_seed(self) -> list[np.ndarray]:
        """Finite candidate − baseline differences, one array per seed (bootstrap clusters)."""
        seed_of = np.array([k[0] for k in self.keys], dtype=object)
        diff = self.candidate - self.baseline
        groups = [diff[(seed_of == s) & np.isfinite(diff)] for s in self.seeds]
        return [g for g in groups if g.size]

    def by_fold(self) -> list[list[np.ndarray]] | None:
        """:meth:`by_seed` nested by cross-validation fold; None when the units have no folds."""
        if not has_folds(self.seeds):
            return None
        diff = self.candidate - self.baseline
        seed_of = np.array([k[0] for k in self.keys], dtype=object)
        kept = [(s, diff[(seed_of == s) & np.isfinite(diff)]) for s in self.seeds]
        kept = [(s, g) for s, g in kept if g.size]
        return fold_tree([s for s, _ in kept], [g for _, g in kept]) if kept else None


def seed_evals(
    runs: StageRuns, baseline: dict[str, Any], candidate: dict[str, Any]
) -> tuple[list[tuple[str, dict, dict]], list[str]]:
    """``(seed, baseline eval, candidate eval)`` for the seeds both ``{seed: run}`` maps have
    an evaluation for, in seed order, and the seeds that could not be paired."""
    pairs, unpaired = [], []
    for seed in sorted(set(baseline) | set(candidate), key=seed_key):
        a = runs.eval(baseline[seed]["run_id"]) if seed in baseline else None
        b = runs.eval(candidate[seed]["run_id"]) if seed in candidate else None
        if a is None or b is None:
            unpaired.append(seed)
        else:
            pairs.append((seed, a, b))
    return pairs, unpaired


def unit_pairs(
    runs: StageRuns, baseline: dict[str, Any], candidate: dict[str, Any], metric: str
) -> UnitPairs:
    """Pair two ``{seed: run}`` maps (:meth:`StageRuns.find_seeds`) volume by volume.

    Only seeds both sides have are paired; within a seed both runs must have been evaluated on
    the same volumes (an error otherwise, never a silently smaller test).
    """
    keys, va, vb = [], [], []
    subjects: dict[str, str] = {}
    evals, unpaired = seed_evals(runs, baseline, candidate)
    for seed, a, b in evals:
        subjects |= volume_subjects(b)
        xa, xb = volume_values(a, metric), volume_values(b, metric)
        if set(xa) != set(xb):
            raise RaykdError(
                f"seed {seed}: per-volume '{metric}' pairs do not align (volumes "
                f"{sorted(xa)} vs {sorted(xb)}); both runs must be evaluated on the same volumes"
            )
        for vol in sorted(xa):
            keys.append((seed, vol))
            va.append(xa[vol])
            vb.append(xb[vol])
    values = np.array(va, dtype=np.float64), np.array(vb, dtype=np.float64)
    return UnitPairs(keys, *values, unpaired, subjects)


def hierarchical_bootstrap(
    groups: list[np.ndarray],
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Mean over seeds of the per-seed mean difference, with a two-stage percentile CI.

    Stage 1 draws seeds (clusters) with replacement, stage 2 draws volumes with replacement
    within each drawn seed. One seed: volumes only; one volume per seed: seeds only. Written
    here because ``scipy.stats.bootstrap`` resamples one level only. Seeded, so reports agree.
    """
    if not groups or any(g.size == 0 for g in groups):
        raise RaykdError("hierarchical_bootstrap: every seed needs at least one value")
    estimate = float(np.mean([g.mean() for g in groups]))
    # The two-level case of the nested resampling (folds add a level): the same draws.
    boot = bootstrap_replicates(list(groups), resamples, np.random.default_rng(seed))
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(boot, [tail, 100 - tail])
    return estimate, float(low), float(high)


def bootstrap_ci(
    groups: list[np.ndarray],
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Mean over seeds of the per-seed mean difference with a 95% percentile bootstrap CI.

    One level varies when there is one seed (volumes are resampled) or one value per seed
    (seeds are): then ``scipy.stats.bootstrap`` does it. Both levels: the hand-written
    :func:`hierarchical_bootstrap`. Seeded, so reports agree.
    """
    if not groups or any(g.size == 0 for g in groups):
        raise RaykdError("bootstrap_ci: every seed needs at least one value")
    if len(groups) > 1 and any(g.size > 1 for g in groups):
        return hierarchical_bootstrap(groups, resamples, seed, level)
    values = np.concatenate(groups).astype(np.float64)
    res = stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=resamples,
        confidence_level=level,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    ci = res.confidence_interval
    return float(values.mean()), float(ci.low), float(ci.high)


@dataclass
class UnitTest:
    """The unit-level result of one contrast (differences candidate − baseline).

    With folds the units are test subjects (``n_units`` = ``n_subjects``) and the ``train_*``
    fields hold the training-randomness analysis on fixed subjects. ``p_adjusted`` is the
    Holm-adjusted p within the report's family of ``family_size`` tests (the raw p for a family
    of one); verdicts use it.
    """

    n_units: int
    n_seeds: int
    n_volumes: int  # most volumes any seed has
    n_dropped: int
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    testable: bool  # n_units ≥ MIN_UNITS (with folds: distinct subjects ≥ MIN_SUBJECTS)
    significant: bool
    better: str  # "candidate" | "baseline" | "" (no verdict or no difference)
    verdict: str
    n_folds: int = 0  # cross-validation folds (0: none); n_seeds then counts distinct seeds
    n_subjects: int = 0  # distinct test subjects (folds only)
    p_adjusted: float = math.nan
    family_size: int = 1
    train_mean: float = math.nan  # training randomness on fixed subjects (folds only)
    train_low: float = math.nan
    train_high: float = math.nan
    train_p: float = math.nan
    train_df: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def units(self) -> str:
        s, v = self.n_seeds, self.n_volumes
        if self.n_folds:
            return subject_units_text(self.n_subjects, self.n_folds, s)
        return f"{s} seed{'s' if s != 1 else ''} × {v} volume{'s' if v != 1 else ''}"


def subject_units_text(n_subjects: int, n_folds: int, n_seeds: int) -> str:
    """``test subjects (4 subjects; each the mean over its fold's 2 seeds, 4 folds)``."""
    subj = f"{n_subjects} subject{'s' if n_subjects != 1 else ''}"
    return (
        f"test subjects ({subj}; each the mean over the (fold, seed) models that tested it: "
        f"{n_folds} fold{'s' if n_folds != 1 else ''} × {n_seeds} seed"
        f"{'s' if n_seeds != 1 else ''})"
    )


def refusal(n: int) -> str:
    return f"not enough independent units: n={n}, need ≥ {MIN_UNITS}"


def judge(
    t: UnitTest,
    p: float,
    alpha: float = ALPHA,
    names: tuple[str, str] = ("baseline", "candidate"),
    higher_is_better: bool = True,
    family_size: int = 1,
) -> UnitTest:
    """``t`` with its verdict drawn from ``p`` (the Holm-adjusted p of a family of
    ``family_size``, or the raw p for a family of one) and the CI. An untestable ``t`` keeps its
    refusal."""
    t = replace(t, p_adjusted=p, family_size=family_size)
    if not t.testable:
        return t
    which = "Holm-adjusted p" if family_size > 1 else "p"
    excludes_zero = t.ci_low > 0 or t.ci_high < 0
    significant = bool(p < alpha and excludes_zero)
    better, verdict = "", f"no significant difference ({which} ≥ {alpha:g})"
    if significant:
        better = "candidate" if (t.mean_diff > 0) == higher_is_better else "baseline"
        who = names[1] if better == "candidate" else names[0]
        verdict = f"{who} better ({which} < {alpha:g}, CI excludes 0)"
    elif p < alpha:
        cluster = "subject-level" if t.n_folds else "seed-clustered"
        verdict = f"no significant difference ({which} < {alpha:g} but the {cluster} CI includes 0)"
    return replace(t, significant=significant, better=better, verdict=verdict)


def _wilcoxon_p(diff: np.ndarray) -> float:
    if diff.size < 2:
        return math.nan
    return 1.0 if not np.any(diff != 0) else float(stats.wilcoxon(diff).pvalue)


def _subject_test(pairs: UnitPairs, base: tuple, n_folds: int) -> UnitTest:
    """The cross-validated test: per-subject differences, t interval, Wilcoxon, and the
    training-randomness analysis on fixed subjects beside it."""
    diffs = pairs.candidate - pairs.baseline
    per_subject = np.array(list(subject_means(pairs.keys, diffs, pairs.subjects).values()))
    n = int(per_subject.size)
    mean, low, high = t_interval(per_subject)
    fixed = fixed_subject_test(model_groups(pairs.keys, diffs, pairs.subjects))
    testable = n >= MIN_SUBJECTS
    why = "" if testable else too_few_subjects(n)
    p = _wilcoxon_p(per_subject)
    t = UnitTest(n, *base[1:4], mean, low, high, p, testable, False, "", why)
    t = replace(t, n_folds=n_folds, n_subjects=n)
    return replace(
        t,
        train_mean=fixed.mean,
        train_low=fixed.low,
        train_high=fixed.high,
        train_p=fixed.p_value,
        train_df=fixed.df,
    )


def unit_test(
    pairs: UnitPairs,
    higher_is_better: bool = True,
    alpha: float = ALPHA,
    names: tuple[str, str] = ("baseline", "candidate"),
    resamples: int = RESAMPLES,
) -> UnitTest:
    """Wilcoxon signed-rank test and CI over the units of inference: (seed, volume) units with
    the seed-clustered bootstrap, or, when the replicates have folds, test subjects
    (:mod:`raykd.report.subjects`). Judged on the raw p (a family of one); a report judges again
    on its Holm-adjusted p (:func:`judge`).

    ``names`` (baseline, candidate) word the verdict. Undefined units (NaN, or an infinite PSNR
    of an exact reconstruction) are left out and counted in ``n_dropped``.
    """
    groups = pairs.by_seed()
    diff = np.concatenate(groups) if groups else np.zeros(0)
    n = int(diff.size)
    n_vol = max((g.size for g in groups), default=0)
    dropped = pairs.n - n
    mean = float(np.mean([g.mean() for g in groups])) if groups else math.nan
    folds = pairs.by_fold()
    if n == 0:
        nan3 = (math.nan,) * 3
        return UnitTest(
            0, 0, 0, dropped, math.nan, *nan3, False, False, "", "not testable (no pairs)"
        )
    if folds is not None:  # folds × seeds: the test subject is the unit
        n_seeds = len({split_key(k[0])[1] for k in pairs.keys})
        t = _subject_test(pairs, (n, n_seeds, n_vol, dropped), len(folds))
        return judge(t, t.p_value, alpha, names, higher_is_better)
    if n < MIN_UNITS:
        nan3 = (math.nan,) * 3
        why = f"no verdict: {refusal(n)}"
        return UnitTest(n, len(groups), n_vol, dropped, mean, *nan3, False, False, "", why)
    _, low, high = hierarchical_bootstrap(groups, resamples)
    t = UnitTest(
        n, len(groups), n_vol, dropped, mean, low, high, _wilcoxon_p(diff), True, False, "", ""
    )
    return judge(t, t.p_value, alpha, names, higher_is_better)
