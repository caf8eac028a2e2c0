"""Cross-validation folds as a level of the report, on a small real MLflow store.

Four subjects, four folds without a fixed test set (fold k tests subject k and selects on
subject k+1, as ``--folds 4`` splits), two seeds per fold: stage runs tagged ``raykd.fold`` with
their split as params, eval_test.json on the fold's test subject and eval_val.json on its
validation subject. So every test subject is some other fold's validation subject: the report
must check held-out-ness per fold. Per (fold, seed) the volume PSNR differences are chosen, so
the unit counts, the fold-weighted means and the fold-level bootstrap CI are known exactly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from raykd.report.folds import TAG_FOLD, fold_note, nested_bootstrap, replicates_text
from raykd.report.inference import hierarchical_bootstrap
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


def _tree(row_a: str, row_b: str) -> list[list[np.ndarray]]:
    """[fold][seed] arrays of the row_b − row_a volume differences (one test volume each)."""

    def volume(row: str, k: int, s: str) -> float:
        return float(_psnr(row, k, s)[0].mean())  # the volume value the eval JSON holds

    return [[np.array([volume(row_b, k, s) - volume(row_a, k, s)]) for s in SEEDS] for k in FOLDS]


def test_fold_units_counted_and_named(compared):
    csv = pd.read_csv(compared["out"] / "wilcoxon.csv")
    at = csv[(csv["metric"] == "psnr") & (csv["method"] == "at")].set_index("comparison")
    units = "folds × seeds × volumes (4 folds, 2 seeds, 1 volume per fold)"
    for key, base in [("sft_vs_std", "std_kd"), ("sft_vs_equal_compute", "equal_compute")]:
        rec = at.loc[key]
        assert rec["n_units"] == 8 and rec["n_folds"] == 4 and rec["n_seeds"] == 2
        assert rec["units"] == units and rec["testable"]
        tree = _tree(base, "sft_kd")
        diffs = np.concatenate([g for fold in tree for g in fold])
        assert rec["mean_diff"] == pytest.approx(np.mean([np.mean(f) for f in tree]), abs=1e-9)
        assert rec["p_value"] == pytest.approx(sps.wilcoxon(diffs).pvalue, rel=1e-9)
        est, low, high = nested_bootstrap(tree, 10_000, 0)
        assert (rec["ci_low"], rec["ci_high"]) == pytest.approx((low, high), abs=1e-9)
    assert at.loc["sft_vs_std", "mean_diff"] == pytest.approx(0.2 + 0.15 + 0.02, abs=1e-9)
    assert at.loc["sft_vs_std", "verdict"] == "SFT-KD better (p < 0.05, CI excludes 0)"
    assert at.loc["sft_vs_equal_compute", "mean_diff"] == pytest.approx(0.0, abs=1e-9)
    md = (compared["out"] / "wilcoxon.md").read_text()
    assert "# Paired tests over independent (fold, seed, volume) units" in md
    assert f"| {units} | 8 |" in md
    note = "units = folds × seeds × volumes (4 folds, 2 seeds)"
    for name in ("table_1", "gap", "wilcoxon", "table_3"):
        assert note in (compared["out"] / f"{name}.md").read_text(), name
    text = compared["result"].paragraph
    assert "held-out test volumes, 4 folds (0, 1, 2, 3) × seeds 42, 43;" in text
    assert "(fold, seed) on one test volume of its fold" in text and "fold-level 95%" in text
    assert f"n = 8 units: {units}" in text
    details = compared["result"].summary_lines
    assert "settings: phantom 4x (4 folds (0, 1, 2, 3) × seeds 42, 43)" in details
    assert any(f"n = 8 units ({units}) → SFT-KD better" in line for line in details)
    assert (
        "Replicates pooled (8: 4 folds (0, 1, 2, 3) × seeds 42, 43)"
        in (compared["out"] / "table_1.md").read_text()
    )


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
    tree = _tree("student", "teacher")
    assert rec["gap_db"] == pytest.approx(1.0 + 0.02 * 1.5, abs=1e-9) and rec["n_units"] == 8
    assert (rec["ci_low"], rec["ci_high"]) == pytest.approx(nested_bootstrap(tree)[1:], abs=1e-9)


def test_nested_bootstrap_seeded_and_levels():
    rng = np.random.default_rng(2)
    tree = [[rng.normal(0.3, 0.2, 2) for _ in range(3)] for _ in range(4)]
    a, b = nested_bootstrap(tree, 2000, seed=7), nested_bootstrap(tree, 2000, seed=7)
    assert a == b  # seeded: the same report twice gives the same CI
    assert nested_bootstrap(tree, 2000, seed=8)[1:] != a[1:]
    est = np.mean([np.mean([g.mean() for g in fold]) for fold in tree])
    assert a[0] == pytest.approx(est) and a[1] < est < a[2]
    # Two levels (seeds → volumes) are exactly the seed-clustered bootstrap of the report.
    groups = tree[0] + tree[1]
    assert nested_bootstrap(groups, 3000, seed=3) == hierarchical_bootstrap(groups, 3000, seed=3)
    # Folds are a level: a fold effect widens the CI beyond pooling all (fold, seed) models.
    shifted = [[g + 0.5 * k for g in fold] for k, fold in enumerate(tree)]
    nested = nested_bootstrap(shifted, 4000, seed=1)
    flat = hierarchical_bootstrap([g for fold in shifted for g in fold], 4000, seed=1)
    assert nested[2] - nested[1] > flat[2] - flat[1]


def test_without_folds_nothing_changes():
    assert fold_note(["42", "43"]) == ""
    assert replicates_text(["42", "43"]) == "seeds 42, 43"
    assert replicates_text(["42"]) == "seed 42"
