"""Coverage and false verdicts of the report's paired procedures under a simulated null.

Simulates the project's structure: test subjects, seeds (trained models) within each fold, and
slices within each test volume, with no true difference between the two rows, and runs the
report's own code (:func:`raykd.report.inference.unit_test` on :class:`UnitPairs` keyed as a
``--folds`` store keys them) on every replicate. Per layout (folds × seeds) it measures

* ``subjects``: the subject-level analysis the verdicts come from (t CI over subjects, Wilcoxon
  on per-subject differences, no verdict below 6 subjects): how often its 95% CI covers the
  true difference 0, and how often it gives a "better" verdict;
* ``training``: the training-randomness analysis on fixed subjects, under its own null (the
  fixed subjects' mean difference is 0): CI coverage and rate of p < 0.05;
* ``pooled_old``: the procedure before issue 34 (Wilcoxon on pooled (fold, seed, volume)
  units, fold-level nested percentile bootstrap, gate on 6 pooled units), for comparison;
* ``subject_bootstrap``: a percentile bootstrap over subject means, for comparison (why the
  subject-level CI is a t interval);
* ``holm_family``: with six null contrasts per replicate (a report's family), how often any of
  them gets a verdict, without and with Holm's adjustment (8 × 2 and 10 × 2 layouts).

Variance components (dB, of a candidate − baseline volume-PSNR difference): subject 0.10, seed
within subject 0.05, slice effect shared by the seeds of a subject 0.10, residual per slice and
model 0.20; 8 slices per test volume. ``--test`` layouts: a fixed set of test subjects that
every (fold, seed) model is evaluated on.

    PYTHONPATH=. python benchmarks/coverage.py --replicates 2000 \\
        --out benchmarks/results/coverage.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

from raykd.report.folds import nested_bootstrap
from raykd.report.inference import UnitPairs, unit_test
from raykd.report.multiplicity import holm
from raykd.report.subjects import subject_means

SD = {"subject": 0.10, "seed": 0.05, "slice": 0.10, "residual": 0.20}
SLICES = 8
LAYOUTS = [(3, 2), (4, 2), (5, 3), (6, 2), (8, 2), (10, 3)]
TEST_LAYOUTS = [(6, 3, 2)]  # (fixed test subjects, folds, seeds): --test plus folds


def simulate(
    rng: np.random.Generator, folds: int, seeds: int, test_subjects: int = 0
) -> tuple[UnitPairs, float]:
    """One null replicate as a ``--folds`` store gives it: UnitPairs keyed ("fold/seed",
    volume), and the fixed subjects' own mean difference (the training analysis' target)."""
    n_subj = test_subjects or folds
    u = rng.normal(0, SD["subject"], n_subj)
    w = rng.normal(0, SD["slice"], (n_subj, SLICES))
    fixed = u + w.mean(axis=1)  # what each subject's difference is, given the subject
    keys, diffs = [], []
    for f in range(folds):
        tested = range(n_subj) if test_subjects else [f]
        for s in range(seeds):
            v = rng.normal(0, SD["seed"])  # the trained model pair
            for j in tested:
                e = rng.normal(0, SD["residual"], SLICES)
                keys.append((f"{f}/{42 + s}", f"subj{j}"))
                diffs.append(u[j] + v + float((w[j] + e).mean()))
    d = np.array(diffs)
    return UnitPairs(keys, np.zeros(d.size), d, []), float(fixed.mean())


def _old(pairs: UnitPairs, resamples: int) -> tuple[bool, bool]:
    """(CI covers 0, verdict) of the pooled procedure before issue 34."""
    diff = pairs.candidate - pairs.baseline
    tree = pairs.by_fold()
    _, low, high = nested_bootstrap(tree, resamples, 0)
    p = stats.wilcoxon(diff).pvalue
    return bool(low <= 0 <= high), bool(diff.size >= 6 and p < 0.05 and (low > 0 or high < 0))


def _subject_bootstrap(pairs: UnitPairs, rng: np.random.Generator, resamples: int) -> bool:
    diff = pairs.candidate - pairs.baseline
    means = np.array(list(subject_means(pairs.keys, diff, {}).values()))
    boot = means[rng.integers(0, means.size, (resamples, means.size))].mean(axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return bool(low <= 0 <= high)


def layout_rates(
    folds: int, seeds: int, replicates: int, seed: int, test_subjects: int = 0, old: int = 0
) -> dict[str, float | int]:
    """Rates of one layout over ``replicates`` null replicates (``old``: replicates of the
    slow pre-34 procedure and the subject bootstrap, 0: skipped)."""
    rng = np.random.default_rng(seed)
    cover = verdict = t_cover = t_reject = 0
    old_cover = old_verdict = boot_cover = 0
    for r in range(replicates):
        pairs, target = simulate(rng, folds, seeds, test_subjects)
        t = unit_test(pairs)
        cover += t.ci_low <= 0 <= t.ci_high
        verdict += t.significant
        # training randomness, under its own null: the fixed subjects' mean removed
        shifted = UnitPairs(pairs.keys, pairs.baseline, pairs.candidate - target, [])
        tt = unit_test(shifted)
        t_cover += tt.train_low <= 0 <= tt.train_high
        t_reject += tt.train_p < 0.05
        if r < old:
            c, v = _old(pairs, 1000)
            old_cover, old_verdict = old_cover + c, old_verdict + v
            boot_cover += _subject_bootstrap(pairs, rng, 2000)
    n = replicates
    out: dict[str, float | int] = {
        "folds": folds,
        "seeds": seeds,
        "test_subjects": test_subjects,
        "replicates": n,
        "subjects_ci_coverage": cover / n,
        "subjects_false_verdicts": verdict / n,
        "training_ci_coverage": t_cover / n,
        "training_p_below_0_05": t_reject / n,
    }
    if old:
        out |= {
            "old_replicates": old,
            "pooled_old_ci_coverage": old_cover / old,
            "pooled_old_false_verdicts": old_verdict / old,
            "subject_bootstrap_ci_coverage": boot_cover / old,
        }
    return out


def holm_family(folds: int, seeds: int, replicates: int, seed: int, m: int = 6) -> dict:
    """Family-wise rate of any false verdict among ``m`` null contrasts, raw and Holm."""
    rng = np.random.default_rng(seed)
    raw = adjusted = 0
    for _ in range(replicates):
        tests = [unit_test(simulate(rng, folds, seeds)[0]) for _ in range(m)]
        p = [t.p_value for t in tests]
        ok = [t.ci_low > 0 or t.ci_high < 0 for t in tests]
        raw += any(pi < 0.05 and o for pi, o in zip(p, ok, strict=True))
        adjusted += any(pa < 0.05 and o for pa, o in zip(holm(p), ok, strict=True))
    n = replicates
    return {"folds": folds, "seeds": seeds, "family": m, "replicates": n,
            "any_verdict_raw": raw / n, "any_verdict_holm": adjusted / n}  # fmt: skip


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True)
        return out.stdout.decode().strip() or "unknown"
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicates", type=int, default=2000)
    ap.add_argument("--old-replicates", type=int, default=400)
    ap.add_argument("--family-replicates", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/coverage.json"))
    args = ap.parse_args(argv)
    start = time.time()
    rows = [
        layout_rates(f, s, args.replicates, 100 + i, old=args.old_replicates)
        for i, (f, s) in enumerate(LAYOUTS)
    ]
    rows += [
        layout_rates(f, s, args.replicates, 200 + i, test_subjects=n, old=args.old_replicates)
        for i, (n, f, s) in enumerate(TEST_LAYOUTS)
    ]
    family = [holm_family(f, s, args.family_replicates, 300 + f) for f, s in ((8, 2), (10, 2))]
    result = {
        "commit": _commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "sd": SD,
        "slices": SLICES,
        "layouts": rows,
        "holm_family": family,
        "seconds": round(time.time() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for r in rows:
        print(json.dumps(r))
    for r in family:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
