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
pairs for the descriptive per-slice test of :mod:`raykd.report.stats`.

With cross-validation folds a replicate is a (fold, seed) model (key ``fold/seed``), a unit a
(fold, seed, volume) triple, and the CI comes from :func:`raykd.report.folds.nested_bootstrap`
(folds, then seeds within each fold, then volumes); :func:`clustered_ci` picks it.

A verdict needs ``n ≥`` :data:`MIN_UNITS` and both to agree (p < α *and* a CI that excludes 0).
``MIN_UNITS = 6``: the smallest two-sided p an exact signed-rank (or sign) test can reach on
``n`` units is ``2 / 2**n`` — 0.0625 at n = 5, 0.031 at n = 6 — so below 6 units a verdict of
"better" is impossible whatever the data, and "no difference" would be an artefact of ``n``;
a percentile bootstrap on 3–5 units has only a handful of distinct resample means and
under-covers badly. Below the minimum the report refuses a verdict and says why.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from raykd.errors import RaykdError
from raykd.report.folds import (
    bootstrap_replicates,
    fold_tree,
    has_folds,
    nested_bootstrap,
    nested_mean,
    split_key,
    units_text,
)
from raykd.report.records import seed_key
from raykd.report.runs import StageRuns

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


@dataclass
class UnitPairs:
    """Values of two rows paired by key; a key starts with the seed: (seed, volume) units, or
    (seed, volume, slice) for per-slice pairs."""

    keys: list[tuple]
    baseline: np.ndarray
    candidate: np.ndarray
    unpaired: list[str]  # seeds that only one side has (or whose eval JSON is missing)

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


def slice_values(report: dict[str, Any], metric: str) -> dict[tuple[str, int], float]:
    """``{(volume, slice index): value}`` of one metric from an eval JSON."""
    out: dict[tuple[str, int], float] = {}
    for vol in report["volumes"]:
        values = vol.get("per_slice", {}).get(metric)
        slices = vol.get("slices")
        if values is None or slices is None:
            raise RaykdError(
                f"eval JSON volume {vol.get('volume')}: no per-slice '{metric}' values or "
                "slice list; re-evaluate the run (per-slice metrics are needed for the test)"
            )
        if len(values) != len(slices):
            raise RaykdError(
                f"eval JSON volume {vol['volume']}: {len(values)} per-slice '{metric}' values "
                f"for {len(slices)} slices"
            )
        for s, v in zip(slices, values, strict=True):
            out[(str(vol["volume"]), int(s))] = math.nan if v is None else float(v)
    return out


def paired_slices(
    a: dict[str, Any], b: dict[str, Any], metric: str
) -> tuple[list[tuple[str, int]], np.ndarray, np.ndarray]:
    """Aligned per-slice values of two eval JSONs; an error if their slices differ."""
    va, vb = slice_values(a, metric), slice_values(b, metric)
    if set(va) != set(vb):
        only_a = sorted(set(va) - set(vb))[:5]
        only_b = sorted(set(vb) - set(va))[:5]
        raise RaykdError(
            f"per-slice '{metric}' pairs do not align: slices only in the first run "
            f"{only_a}, only in the second {only_b}; both runs must be evaluated on the same "
            "volumes and slices"
        )
    keys = sorted(va)
    return keys, np.array([va[k] for k in keys]), np.array([vb[k] for k in keys])


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


def slice_pairs(
    runs: StageRuns, baseline: dict[str, Any], candidate: dict[str, Any], metric: str
) -> UnitPairs:
    """Pair two ``{seed: run}`` maps slice by slice, keys (seed, volume, slice), pooled over
    seeds. Only seeds both sides have are paired; within a seed the slices must align
    (:func:`paired_slices` raises otherwise)."""
    keys, va, vb = [], [], []
    evals, unpaired = seed_evals(runs, baseline, candidate)
    for seed, a, b in evals:
        k, x, y = paired_slices(a, b, metric)
        keys += [(seed, vol, sl) for vol, sl in k]
        va.append(x)
        vb.append(y)
    cat = (lambda v: np.concatenate(v)) if va else (lambda v: np.zeros(0))
    return UnitPairs(keys, cat(va), cat(vb), unpaired)


def unit_pairs(
    runs: StageRuns, baseline: dict[str, Any], candidate: dict[str, Any], metric: str
) -> UnitPairs:
    """Pair two ``{seed: run}`` maps (:meth:`StageRuns.find_seeds`) volume by volume.

    Only seeds both sides have are paired; within a seed both runs must have been evaluated on
    the same volumes (an error otherwise, never a silently smaller test).
    """
    keys, va, vb = [], [], []
    evals, unpaired = seed_evals(runs, baseline, candidate)
    for seed, a, b in evals:
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
    return UnitPairs(keys, np.array(va, dtype=np.float64), np.array(vb, dtype=np.float64), unpaired)


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


def clustered_ci(
    pairs: UnitPairs, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float, float] | None:
    """The fold-level CI (estimate, low, high) of ``pairs`` when its units have folds, else None
    (callers then use the seed-clustered :func:`hierarchical_bootstrap` / :func:`bootstrap_ci`)."""
    tree = pairs.by_fold()
    return None if tree is None else nested_bootstrap(tree, resamples, seed)


@dataclass
class UnitTest:
    """The unit-level result of one contrast (differences candidate − baseline)."""

    n_units: int
    n_seeds: int
    n_volumes: int  # most volumes any seed has
    n_dropped: int
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    testable: bool  # n_units ≥ MIN_UNITS
    significant: bool
    better: str  # "candidate" | "baseline" | "" (no verdict or no difference)
    verdict: str
    n_folds: int = 0  # cross-validation folds (0: none); n_seeds then counts distinct seeds

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def units(self) -> str:
        s, v = self.n_seeds, self.n_volumes
        if self.n_folds:
            return units_text(self.n_folds, s, v)
        return f"{s} seed{'s' if s != 1 else ''} × {v} volume{'s' if v != 1 else ''}"


def refusal(n: int) -> str:
    return f"not enough independent units: n={n}, need ≥ {MIN_UNITS}"


def unit_test(
    pairs: UnitPairs,
    higher_is_better: bool = True,
    alpha: float = ALPHA,
    names: tuple[str, str] = ("baseline", "candidate"),
    resamples: int = RESAMPLES,
) -> UnitTest:
    """Wilcoxon signed-rank test and hierarchical bootstrap CI over (seed, volume) units, or
    (fold, seed, volume) units with the fold-level bootstrap when the replicates have folds.

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
    n_seeds, n_folds = len(groups), 0
    if folds is not None:  # folds × seeds: count distinct seeds, weigh every fold the same
        n_folds, mean = len(folds), nested_mean(folds)
        n_seeds = len({split_key(k[0])[1] for k in pairs.keys})
    base = (n, n_seeds, n_vol, dropped, mean)

    def result(*rest: Any) -> UnitTest:
        return UnitTest(*base, *rest, n_folds=n_folds)

    if n == 0:
        return result(*(math.nan,) * 3, False, False, "", "not testable (no pairs)")
    if n < MIN_UNITS:
        return result(*(math.nan,) * 3, False, False, "", f"no verdict: {refusal(n)}")
    ci = clustered_ci(pairs, resamples)
    _, low, high = ci if ci is not None else hierarchical_bootstrap(groups, resamples)
    p = 1.0 if not np.any(diff != 0) else float(stats.wilcoxon(diff).pvalue)
    excludes_zero = low > 0 or high < 0
    significant = bool(p < alpha and excludes_zero)
    better = ""
    if significant:
        better = "candidate" if (mean > 0) == higher_is_better else "baseline"
        who = names[1] if better == "candidate" else names[0]
        verdict = f"{who} better (p < {alpha:g}, CI excludes 0)"
    elif p < alpha:
        cluster = "fold-clustered" if n_folds else "seed-clustered"
        verdict = f"no significant difference (p < {alpha:g} but the {cluster} CI includes 0)"
    else:
        verdict = f"no significant difference (p ≥ {alpha:g})"
    return result(low, high, p, True, significant, better, verdict)
