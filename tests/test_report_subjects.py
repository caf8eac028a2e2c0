"""Subjects as the unit of inference, Holm's adjustment, and the coverage of the report's
procedures under a simulated null with the project's structure (benchmarks/coverage.py with
fewer replicates). Expected values come from scipy or from hand computation, never from the
functions under test."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from benchmarks.coverage import layout_rates
from raykd.data.volumes import write_volume
from raykd.report.inference import UnitPairs, unit_test
from raykd.report.multiplicity import adjust_records, holm
from raykd.report.subjects import fixed_subject_test, min_p, t_interval
from raykd.train.evaluate import volume_subject


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 → running max
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1 (2 × 0.5, 1 × 0.6)
    adjusted = holm([0.02, float("nan"), 0.01])  # an undefined p is not a family member
    assert adjusted[0] == pytest.approx(0.02) and np.isnan(adjusted[1])
    assert adjusted[2] == pytest.approx(0.02)
    recs = [{"g": "a", "p_value": 0.01}, {"g": "a", "p_value": 0.04}, {"g": "b", "p_value": 0.04}]
    assert adjust_records(recs, lambda r: r["g"]) == {"a": 2, "b": 1}
    assert [r["p_adjusted"] for r in recs] == pytest.approx([0.02, 0.04, 0.04])


def test_t_interval_and_floor_against_scipy():
    x = np.array([0.3, -0.1, 0.25, 0.4, 0.05])
    mean, low, high = t_interval(x)
    ref = sps.t.interval(0.95, x.size - 1, loc=x.mean(), scale=sps.sem(x))
    assert (low, high) == pytest.approx(ref) and mean == pytest.approx(x.mean())
    for n in (3, 4, 5, 6):  # the smallest exact two-sided p on n all-positive units
        assert min_p(n) == pytest.approx(sps.wilcoxon(np.arange(1.0, n + 1)).pvalue)
    # Fixed subjects: pooled within-subject variance, by hand.
    groups = [[0.1, 0.3], [0.5, 0.7], [0.2, 0.2]]
    fs = fixed_subject_test(groups)
    pooled = (0.02 + 0.02 + 0.0) / 3
    se = np.sqrt(pooled * 3 / 2) / 3
    assert fs.df == 3 and fs.mean == pytest.approx(1.0 / 3)
    assert fs.high == pytest.approx(1.0 / 3 + sps.t.ppf(0.975, 3) * se)
    assert fs.p_value == pytest.approx(2 * sps.t.sf((1.0 / 3) / se, 3))


def test_subject_is_the_patient_where_the_file_names_one(tmp_path):
    image = np.zeros((2, 8, 8), dtype=np.float32)
    a = write_volume(tmp_path / "a.h5", image, {"patient_id": "P7"})
    b = write_volume(tmp_path / "b.h5", image, {"patient_id": "P7"})
    c = write_volume(tmp_path / "c.h5", image)
    assert volume_subject(a, "a") == "P7" == volume_subject(b, "b")
    assert volume_subject(c, "c") == "c"  # no patient id: the file is the subject
    assert volume_subject(tmp_path / "missing.h5", "m") == "m"
    # Two volumes of one patient are one unit: 6 volumes, 3 patients, 3 folds × 2 seeds.
    subjects = {f"v{i}": f"P{i // 2}" for i in range(6)}
    keys = [(f"{f}/{s}", f"v{2 * f + j}") for f in range(3) for s in (42, 43) for j in (0, 1)]
    d = np.array(
        [0.1 * f + 0.01 * j + 0.02 * (s - 42) for f in range(3) for s in (42, 43) for j in (0, 1)]
    )
    t = unit_test(UnitPairs(keys, np.zeros(d.size), d, [], subjects))
    assert t.n_units == t.n_subjects == 3 and not t.testable
    per_patient = np.array([d[4 * f : 4 * f + 4].mean() for f in range(3)])
    assert t.mean_diff == pytest.approx(per_patient.mean())
    assert t.p_value == pytest.approx(sps.wilcoxon(per_patient).pvalue)
    assert t.verdict.startswith("no verdict possible: 3 subjects")


def test_with_test_volumes_folds_do_not_multiply_units():
    # --test plus folds: every (fold, seed) model tests the same 6 subjects → 6 units, not 36.
    keys = [(f"{f}/{s}", f"subj{j}") for f in range(3) for s in (42, 43) for j in range(6)]
    rng = np.random.default_rng(3)
    d = 0.5 + rng.normal(0, 0.05, len(keys))
    t = unit_test(UnitPairs(keys, np.zeros(d.size), d, []))
    per_subject = np.array(
        [d[[i for i, k in enumerate(keys) if k[1] == f"subj{j}"]].mean() for j in range(6)]
    )
    assert t.n_units == 6 and t.testable and t.better == "candidate"
    assert t.p_value == pytest.approx(sps.wilcoxon(per_subject).pvalue)


@pytest.mark.parametrize("folds,seeds", [(3, 2), (4, 2), (5, 3), (8, 2)])
def test_coverage_and_false_verdicts_under_the_null(folds, seeds):
    # Fewer replicates than the benchmark (its numbers: docs/results/coverage.md); seeded.
    rates = layout_rates(folds, seeds, 400, seed=7 + folds)
    assert rates["subjects_ci_coverage"] >= 0.90, rates
    assert rates["subjects_false_verdicts"] <= 0.07, rates
    assert rates["training_ci_coverage"] >= 0.90, rates
    # its own null: p < 0.05 at most 5 % + 3 binomial sd of 400 replicates (0.083)
    assert rates["training_p_below_0_05"] <= 0.083, rates
