"""The budget study of ``raykd compare`` on a small real MLflow store.

Stage runs at budget scales 1 (untagged, as runs without ``--budget-scale`` are), 2 and 4
(``raykd.budget``), with ``optim.epochs`` params scaled as a budget study trains them (KD and
plain students 5 × scale, the equal-compute control 10 × scale). Three seeds × two held-out
test volumes = 6 units per budget point. Per unit, SFT-KD − Std-KD is ``SFT_STD[b]`` and
control − SFT-KD is ``CONTROL_LEAD[b]`` plus jitter that cancels within every seed, so the
table's mean differences are exact: SFT-KD's lead over Std-KD shrinks, the control's lead over
SFT-KD reverses (its CIs exclude 0 at both ends with opposite signs).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from raykd.report.budget import LeadPoint, trend_verdict
from raykd.report.folds import TAG_BUDGET
from raykd.tracking import Tracking
from tests.report_helpers import eval_json, log_stage, stage_tags

BUDGETS = (1, 2, 4)
SEEDS = ("42", "43", "44")
VOLUMES = ("vol_c", "vol_d")
SFT_STD = {1: 0.40, 2: 0.30, 4: 0.20}
CONTROL_LEAD = {1: 0.30, 2: 0.10, 4: -0.25}
JITTER = {"42": (-0.05, 0.05), "43": (0.03, -0.03), "44": (-0.01, 0.01)}  # per volume
ROWS = [("teacher", ""), ("student", ""), ("equal_compute", ""), ("std_kd", "at"), ("sft_kd", "at")]


def _volumes(row: str, budget: int, seed: str) -> np.ndarray:
    """Volume PSNR of one run, [volume]."""
    j = np.array(JITTER[seed])
    student = 30 + 0.2 * (int(seed) - 42) + np.array([0.0, 0.7]) + 0.1 * budget
    std = student + 0.1 + j
    sft = std + SFT_STD[budget] - 0.5 * j
    values = {
        "teacher": student + 1.0,
        "student": student,
        "std_kd": std,
        "sft_kd": sft,
        "equal_compute": sft + CONTROL_LEAD[budget] + 0.8 * j,
    }
    return values[row]


def _stored(row: str, budget: int, seed: str) -> np.ndarray:
    """The volume values as the eval JSON holds them (mean of two equal slices)."""
    psnr = np.repeat(_volumes(row, budget, seed)[:, None], 2, axis=1)
    return psnr.mean(axis=1)


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> dict:
    from raykd.cli.report import compare_main

    root = tmp_path_factory.mktemp("budget")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracking = Tracking(uri, "budgets", artifact_root=root / "artifacts")
    for budget in BUDGETS:
        for seed in SEEDS:
            for row, method in ROWS:
                psnr = np.repeat(_volumes(row, budget, seed)[:, None], 2, axis=1)
                zf = np.full_like(psnr, 24.0)
                evals = {
                    "test": eval_json(psnr, VOLUMES, zf),
                    "val": eval_json(psnr[:1], ("vol_a",), zf[:1]),
                }
                tags = stage_tags(row, method, seed)
                if budget != 1:
                    tags[TAG_BUDGET] = str(budget)
                epochs = 5 * budget * (2 if row == "equal_compute" else 1)
                run = log_stage(tracking, root / "tmp", tags, evals, {"optim": {"epochs": epochs}})
                tracking.end_run(run)
    out = root / "comparison"
    argv = ["--experiment", "budgets", "--tracking-uri", uri, "--out", str(out), "--no-mlflow"]
    assert compare_main(argv) == 0  # the CLI path: the study is written without a flag
    return {"out": out}


def _diffs(base: str, cand: str, budget: int) -> np.ndarray:
    return np.concatenate([_stored(cand, budget, s) - _stored(base, budget, s) for s in SEEDS])


def test_budget_table_numbers(compared):
    csv = pd.read_csv(compared["out"] / "budget.csv")
    assert sorted(set(csv["budget"])) == [1.0, 2.0, 4.0] and set(csv["method"]) == {"at"}
    rec = csv.set_index(["budget", "quantity"])
    for b in BUDGETS:
        for key, base, expected in [
            ("sft_vs_std", "std_kd", SFT_STD[b]),
            ("sft_vs_equal_compute", "equal_compute", -CONTROL_LEAD[b]),
        ]:
            r = rec.loc[(float(b), key)]
            d = _diffs(base, "sft_kd", b)
            assert r["value"] == pytest.approx(expected, abs=1e-9), (b, key)
            assert r["n_units"] == 6 and r["units"] == "3 seeds × 2 volumes"
            assert r["p_value"] == pytest.approx(sps.wilcoxon(d).pvalue, rel=1e-9)
            assert r["ci_low"] < r["value"] < r["ci_high"]
        gaps = {q: rec.loc[(float(b), q), "value"] for q in ("gap_none", "gap_std")}
        assert gaps == pytest.approx({"gap_none": 1.0, "gap_std": 0.9}, abs=1e-9)
        assert rec.loc[(float(b), "gap_sft"), "value"] == pytest.approx(0.9 - SFT_STD[b], abs=1e-9)
        control = 0.9 - SFT_STD[b] - CONTROL_LEAD[b]
        assert rec.loc[(float(b), "gap_equal"), "value"] == pytest.approx(control, abs=1e-9)
        assert rec.loc[(float(b), "gap_none"), "n_units"] == 6
        assert rec.loc[(float(b), "sft_vs_std"), "epochs_kd"] == 5 * b
        assert rec.loc[(float(b), "sft_vs_std"), "epochs_control"] == 10 * b
    md = (compared["out"] / "budget.md").read_text()
    r2 = rec.loc[(2.0, "sft_vs_std")]
    cell = f"+0.30 [{r2['ci_low']:+.2f}, {r2['ci_high']:+.2f}], p = 0.0312, n=6"
    assert f"| 2× | KD 10, control 20 | AT | {cell} |" in md


def test_budget_verdicts(compared):
    md = (compared["out"] / "budget.md").read_text()
    assert "**reverses** if L's 95% CIs exclude 0 at both ends with opposite signs" in md
    csv = pd.read_csv(compared["out"] / "budget.csv").set_index(["budget", "quantity"])
    assert csv.loc[(1.0, "sft_vs_equal_compute"), "ci_high"] < 0  # control leads at 1×
    assert csv.loc[(4.0, "sft_vs_equal_compute"), "ci_low"] > 0  # SFT-KD leads at 4×
    reverse = (
        "AT: the equal-compute control's lead (control − SFT-KD) reverses as the budget grows "
        "(+0.30 dB ["
    )
    shrink = "AT: SFT-KD's lead over Std-KD (SFT-KD − Std-KD) shrinks as the budget grows"
    assert reverse in md and shrink in md and "-0.25 dB [" in md and "at 4×)" in md
    summary = (compared["out"] / "summary.md").read_text()
    assert "Budget study phantom 4x: " + reverse in summary and shrink in summary


def test_budget_settings_split_every_table(compared):
    md = (compared["out"] / "table_1.md").read_text()
    for b in BUDGETS:
        assert f"## phantom 4x budget {b}×" in md
    wil = pd.read_csv(compared["out"] / "wilcoxon.csv")
    assert sorted(set(wil["budget"])) == [1, 2, 4]
    warnings = (compared["out"] / "warnings.txt").read_text()
    assert "finished runs for" not in warnings  # no budget's runs stand in for another's


def test_budget_figure_written(compared):
    import matplotlib.image as mpimg

    path = compared["out"] / "figures" / "budget.png"
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 600


def test_trend_verdict_rule():
    def pts(*values: tuple[float, float, float]) -> list[LeadPoint]:
        return [LeadPoint(2.0**i, v, lo, hi) for i, (v, lo, hi) in enumerate(values)]

    nan = math.nan
    assert trend_verdict(pts((0.3, 0.2, 0.4), (0.1, 0.0, 0.2), (-0.2, -0.3, -0.1))) == "reverses"
    # The sign flips but the last CI includes 0: not a reversal, the lead shrank monotonically.
    assert trend_verdict(pts((0.3, 0.2, 0.4), (0.1, 0.0, 0.2), (-0.2, -0.5, 0.1))) == "shrinks"
    assert trend_verdict(pts((0.3, 0.2, 0.4), (0.2, 0.1, 0.3))) == "shrinks"
    assert trend_verdict(pts((0.3, 0.2, 0.4), (0.1, 0.0, 0.2), (0.2, 0.1, 0.3))) == "holds"
    assert trend_verdict(pts((0.3, 0.2, 0.4), (0.4, 0.3, 0.5))) == "holds"  # it grows
    # A negative lead shrinks towards zero from below.
    assert trend_verdict(pts((-0.3, -0.4, -0.2), (-0.1, -0.2, 0.0))) == "shrinks"
    # Points without a CI (too few units) do not count; order by budget, not by input.
    assert trend_verdict(pts((0.3, 0.2, 0.4), (0.1, nan, nan))).startswith("no verdict")
    shuffled = pts((0.3, 0.2, 0.4), (0.2, 0.1, 0.3), (0.1, 0.05, 0.15))[::-1]
    assert trend_verdict(shuffled) == "shrinks"


def test_budget_study_with_folds(tmp_path):
    """Folds and budgets combine: each budget point counts folds × seeds × volumes units."""
    from raykd.report.folds import TAG_FOLD
    from tests.report_helpers import compare_quietly

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = Tracking(uri, "cv-budgets", artifact_root=tmp_path / "artifacts")
    for budget in (1, 2):
        for fold in (0, 1):
            for seed in SEEDS:
                for row, method in ROWS:
                    psnr = np.repeat(_volumes(row, budget, seed)[fold : fold + 1, None], 2, axis=1)
                    test, val = VOLUMES[fold], VOLUMES[1 - fold]
                    evals = {
                        "test": eval_json(psnr, (test,)),
                        "val": eval_json(psnr, (val,)),
                    }
                    tags = {**stage_tags(row, method, seed), TAG_FOLD: str(fold)}
                    tags[TAG_BUDGET] = str(budget)
                    run = log_stage(tracking, tmp_path / "tmp", tags, evals)
                    tracking.end_run(run)
    got = compare_quietly(["cv-budgets"], uri, tmp_path / "out", log_to_mlflow=False)
    csv = pd.read_csv(tmp_path / "out" / "budget.csv").set_index(["budget", "quantity"])
    for b in (1, 2):
        rec = csv.loc[(float(b), "sft_vs_std")]
        assert rec["n_units"] == 6
        assert rec["units"] == "folds × seeds × volumes (2 folds, 3 seeds, 1 volume per fold)"
        assert rec["value"] == pytest.approx(SFT_STD[b], abs=1e-9)
    assert "AT: SFT-KD's lead over Std-KD (SFT-KD − Std-KD) shrinks" in got["result"].paragraph
    assert (tmp_path / "out" / "figures" / "budget.png").is_file()
