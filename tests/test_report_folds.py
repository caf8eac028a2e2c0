"""Cross-validation folds as a level of the report, on a small real MLflow store.

Four subjects, four folds without a fixed test set (fold k tests subject k and selects on
subject k+1, as ``--folds 4`` splits), two seeds per fold: stage runs tagged ``raykd.fold`` with
their split as params, eval_test.json on the fold's test subject and eval_val.json on its
validation subject. So every test subject is some other fold's validation subject: the report
must check held-out-ness per fold. Per (fold, seed) the volume PSNR differences are chosen, so
the per-subject differences are known exactly; the expected numbers are computed here from them
with scipy (Wilcoxon, Student t), not with the report's functions. Four subjects: the report
must give no verdict (the smallest two-sided Wilcoxon p on 4 units is 0.125).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from raykd.report.folds import TAG_FOLD, bootstrap_replicates, fold_note, replicates_text
from raykd.tracking import Tracking
from tests.report_helpers import compare_quietly, eval_json, log_stage, stage_tags

SUBJECTS = ("subj0", "subj1", "subj2", "subj3")
FOLDS = range(4)
SEEDS = ("42", "43")
N_SLICES = 3
ROWS = [("teacher", ""), ("student", ""), ("equal_compute", ""), ("std_kd", "at"), ("sft_kd", "at")]


def _offsets(fold: int, seed: str) -> dict[str, float]:
    """Volume PSNR of each row minus the student's, per (fold, seed)."""
    s = int(seed) - 42
    sft = 0.5 + 0.1 * fold + 0.05 * s  # SFT-KD − student
    return {
        "teacher": 1.0 + 0.02 * fold,
        "student": 0.0,
        "std_kd": sft - (0.2 + 0.1 * fold + 0.04 * s),  # SFT-KD − Std-KD = 0.2 + 0.1k + 0.04s
        "sft_kd": sft,
        "equal_compute": sft + 0.1 * (fold - 1.5) + 0.03 * (s - 0.5),  # mean lead exactly 0
    }


def _psnr(row: str, fold: int, seed: str) -> np.ndarray:
    base = 28 + fold + 0.3 * (int(seed) - 42)
    return np.full((1, N_SLICES), base + _offsets(fold, seed)[row])


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("folds")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracking = Tracking(uri, "folds", artifact_root=root / "artifacts")
    for fold in FOLDS:
        test, val = SUBJECTS[fold], SUBJECTS[(fold + 1) % 4]
        train = ",".join(s for s in SUBJECTS if s not in (test, val))
        zf = np.full((1, N_SLICES), 22.0 + fold)
        for seed in SEEDS:
            for row, method in ROWS:
                psnr = _psnr(row, fold, seed)
                evals = {
                    "test": eval_json(psnr, (test,), zf),
                    "val": eval_json(psnr, (val,), zf + 0.5),
                }
                tags = {**stage_tags(row, method, seed), TAG_FOLD: str(fold)}
                params = {"data": {"train": train, "val": val, "test": test}}
                run = log_stage(tracking, root / "tmp", tags, evals, params)
                tracking.end_run(run)
    out = tmp_path_factory.mktemp("out")
    return compare_quietly(["folds"], uri, out, log_to_mlflow=False)


def _subject_diffs(row_a: str, row_b: str) -> np.ndarray:
    """Per test subject (= fold here), the mean over its two seeds of row_b − row_a."""

    def volume(row: str, k: int, s: str) -> float:
        return float(_psnr(row, k, s)[0].mean())  # the volume value the eval JSON holds

    return np.array(
        [np.mean([volume(row_b, k, s) - volume(row_a, k, s) for s in SEEDS]) for k in FOLDS]
    )


def _t_ci(x: np.ndarray) -> tuple[float, float]:
    half = sps.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return x.mean() - half, x.mean() + half


def test_fold_units_are_subjects_and_four_give_no_verdict(compared):
    csv = pd.read_csv(compared["out"] / "wilcoxon.csv")
    at = csv[(csv["metric"] == "psnr") & (csv["method"] == "at")].set_index("comparison")
    for key, base in [("sft_vs_std", "std_kd"), ("sft_vs_equal_compute", "equal_compute")]:
        rec = at.loc[key]
        # 4 test subjects, not 4 folds × 2 seeds = 8 pooled units
        assert rec["n_units"] == 4 and rec["n_subjects"] == 4 and rec["n_folds"] == 4
        assert not rec["testable"] and not rec["significant"]
        assert rec["verdict"].startswith("no verdict possible: 4 subjects")
        assert "0.125" in rec["verdict"]
        d = _subject_diffs(base, "sft_kd")
        assert rec["mean_diff"] == pytest.approx(d.mean(), abs=1e-9)
        assert rec["p_value"] == pytest.approx(sps.wilcoxon(d).pvalue, rel=1e-9)
        assert (rec["ci_low"], rec["ci_high"]) == pytest.approx(_t_ci(d), abs=1e-9)
    # SFT-KD − Std-KD = 0.2 + 0.1k + 0.04s: every subject positive, still no verdict
    assert at.loc["sft_vs_std", "mean_diff"] == pytest.approx(0.2 + 0.15 + 0.02, abs=1e-9)
    assert at.loc["sft_vs_std", "p_value"] == pytest.approx(0.125)
    # Training randomness on fixed subjects: seeds differ by 0.04 in every fold; pooled
    # within-fold variance 0.0008 (df 4), se = sqrt(0.0008 / 2) / 2, t = 0.37 / se.
    rec = at.loc["sft_vs_std"]
    se = np.sqrt(0.0008 * 4 / 2) / 4
    assert rec["train_df"] == 4 and rec["train_mean"] == pytest.approx(0.37, abs=1e-9)
    assert rec["train_low"] == pytest.approx(0.37 - sps.t.ppf(0.975, 4) * se, abs=1e-9)
    assert rec["train_p"] == pytest.approx(2 * sps.t.sf(0.37 / se, 4), rel=1e-6)
    md = (compared["out"] / "wilcoxon.md").read_text()
    assert "# Paired tests over test-subject units" in md and "| p adj |" in md
    assert "training randomness on fixed subjects" in md
    assert "over independent" not in md  # seeds of a fold are never called independent units
    text = compared["result"].paragraph
    assert "held-out test volumes, 4 folds (0, 1, 2, 3) × seeds 42, 43;" in text
    assert "unit of inference: one test subject" in text
    assert "no verdict possible: 4 subjects" in text and "beats" not in text
    details = compared["result"].summary_lines
    assert any("n = 4 units (test subjects (4 subjects" in line for line in details)


def test_folds_held_out_per_fold_and_zero_filled_merged(compared):
    md = (compared["out"] / "table_1.md").read_text()
    # Subject k+1 validates fold k and tests fold k+1: held out within each fold.
    assert "held-out test volumes subj0, subj1, subj2, subj3 never used" in md
    assert not any("not held out" in w for w in compared["warnings"])
    assert not (compared["out"] / "budget.md").exists()  # one budget: no budget study
    csv = pd.read_csv(compared["out"] / "table_1.csv")
    zf = csv[(csv["row"] == "zero_filled") & (csv["metric"] == "psnr")].iloc[0]
    assert zf["n_volumes"] == 4 and zf["mean"] == pytest.approx(22 + 1.5)  # every fold's subject
    gap = pd.read_csv(compared["out"] / "gap.csv")
    rec = gap[(gap["method"] == "at") & (gap["framework"] == "no KD")].iloc[0]
    d = _subject_diffs("student", "teacher")
    assert rec["gap_db"] == pytest.approx(1.0 + 0.02 * 1.5, abs=1e-9) and rec["n_units"] == 4
    assert (rec["ci_low"], rec["ci_high"]) == pytest.approx(_t_ci(d), abs=1e-9)
    assert rec["ci"] == "subject_t95"


def test_nested_bootstrap_variance_matches_the_two_stage_formula():
    # Independent check: the variance of a two-stage bootstrap mean (draw k top-level groups,
    # then m values within each) is (1/k)[mean_f (mu_f - mu)^2 + mean_f s2_f / m], population
    # moments; computed here by hand, compared with 40 000 replicates.
    tree = [np.array([0.0, 1.0]), np.array([2.0, 6.0]), np.array([3.0, 3.0])]
    mu = np.array([g.mean() for g in tree])
    s2 = np.array([g.var() for g in tree])
    expected = (np.mean((mu - mu.mean()) ** 2) + np.mean(s2 / 2)) / 3
    boot = bootstrap_replicates(tree, 40_000, np.random.default_rng(5))
    assert boot.mean() == pytest.approx(mu.mean(), abs=0.03)
    assert boot.var() == pytest.approx(expected, rel=0.04)
    # One level: the top-level bootstrap variance is the population variance over k.
    flat = [np.array([v]) for v in (0.0, 1.0, 5.0)]
    boot = bootstrap_replicates(flat, 40_000, np.random.default_rng(6))
    assert boot.var() == pytest.approx(np.var([0.0, 1.0, 5.0]) / 3, rel=0.04)


def test_without_folds_nothing_changes():
    assert fold_note(["42", "43"]) == ""
    assert replicates_text(["42", "43"]) == "seeds 42, 43"
    assert replicates_text(["42"]) == "seed 42"
