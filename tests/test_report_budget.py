"""The budget study of ``raykd compare`` on a small real MLflow store.

Stage runs at budget scales 1 (untagged, as runs without ``--budget-scale`` are), 2 and 4
(``raykd.budget``), with ``optim.epochs`` params scaled as a budget study trains them (KD and
plain students 5 × scale, the equal-compute control 10 × scale). Four seeds × two held-out
test volumes = 8 units per budget point. Per unit, SFT-KD − Std-KD is ``SFT_STD[b]`` and
control − SFT-KD is ``CONTROL_LEAD[b]`` plus jitter that cancels within every seed (and grows
with the budget, so the per-unit changes between budgets differ), so the table's mean
differences are exact; the expected p-values of the trend tests are computed here with scipy
from the per-unit changes: SFT-KD's lead over Std-KD shrinks, the control's lead over SFT-KD
reverses.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from raykd.report.folds import TAG_BUDGET
from raykd.report.inference import UnitPairs
from raykd.report.trend import LeadPoint, judge_trends, trend_test
from raykd.tracking import Tracking
from tests.report_helpers import eval_json, log_stage, stage_tags

BUDGETS = (1, 2, 4)
SEEDS = ("42", "43", "44", "45")
VOLUMES = ("vol_c", "vol_d")
SFT_STD = {1: 0.40, 2: 0.30, 4: 0.20}
CONTROL_LEAD = {1: 0.30, 2: 0.10, 4: -0.25}
JITTER = {"42": (-0.05, 0.05), "43": (0.03, -0.03), "44": (-0.01, 0.01), "45": (0.02, -0.02)}
ROWS = [("teacher", ""), ("student", ""), ("equal_compute", ""), ("std_kd", "at"), ("sft_kd", "at")]


def _volumes(row: str, budget: int, seed: str) -> np.ndarray:
    """Volume PSNR of one run, [volume]."""
    j = np.array(JITTER[seed]) * (1 + 0.25 * budget)
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
    raw = []
    for b in BUDGETS:
        for key, base, expected in [
            ("sft_vs_std", "std_kd", SFT_STD[b]),
            ("sft_vs_equal_compute", "equal_compute", -CONTROL_LEAD[b]),
        ]:
            r = rec.loc[(float(b), key)]
            d = _diffs(base, "sft_kd", b)
            assert r["value"] == pytest.approx(expected, abs=1e-9), (b, key)
            assert r["n_units"] == 8 and r["units"] == "4 seeds × 2 volumes"
            assert r["p_value"] == pytest.approx(sps.wilcoxon(d).pvalue, rel=1e-9)
            assert r["ci_low"] < r["value"] < r["ci_high"]
            raw.append((r["p_value"], r["p_adjusted"]))
        gaps = {q: rec.loc[(float(b), q), "value"] for q in ("gap_none", "gap_std")}
        assert gaps == pytest.approx({"gap_none": 1.0, "gap_std": 0.9}, abs=1e-9)
        assert rec.loc[(float(b), "gap_sft"), "value"] == pytest.approx(0.9 - SFT_STD[b], abs=1e-9)
        control = 0.9 - SFT_STD[b] - CONTROL_LEAD[b]
        assert rec.loc[(float(b), "gap_equal"), "value"] == pytest.approx(control, abs=1e-9)
        assert rec.loc[(float(b), "gap_none"), "n_units"] == 8
        assert rec.loc[(float(b), "sft_vs_std"), "epochs_kd"] == 5 * b
        assert rec.loc[(float(b), "sft_vs_std"), "epochs_control"] == 10 * b
    # Holm over the 6 Δ cells, by hand: sorted p times (6, 5, ...), running maximum, capped.
    p = np.array([x for x, _ in raw])
    expected = np.empty(6)
    running = 0.0
    for i, idx in enumerate(np.argsort(p, kind="stable")):
        running = max(running, min(1.0, (6 - i) * p[idx]))
        expected[idx] = running
    assert [a for _, a in raw] == pytest.approx(list(expected), rel=1e-9)
    md = (compared["out"] / "budget.md").read_text()
    r2 = rec.loc[(2.0, "sft_vs_std")]
    cell = (
        f"+0.30 [{r2['ci_low']:+.2f}, {r2['ci_high']:+.2f}], p = {r2['p_value']:.3g} "
        f"(Holm {r2['p_adjusted']:.3g}), n=8"
    )
    assert f"| 2× | KD 10, control 20 | AT | {cell} |" in md


def _changes(base: str, sign: float) -> np.ndarray:
    """Per (seed, volume) unit: the lead at 4× minus the lead at 1× (independent of the report)."""
    return sign * (_diffs(base, "sft_kd", 4) - _diffs(base, "sft_kd", 1))


def test_budget_trends_tested(compared):
    csv = pd.read_csv(compared["out"] / "budget.csv").set_index(["budget", "quantity"])
    shrink = _changes("std_kd", 1.0)  # SFT-KD's lead over Std-KD: +0.40 → +0.20
    flip = _changes("equal_compute", -1.0)  # the control's lead: +0.30 → −0.25
    p = [sps.wilcoxon(shrink).pvalue, sps.wilcoxon(flip).pvalue]
    for key, change, p_raw in [("sft_vs_std", shrink, p[0]), ("sft_vs_equal_compute", flip, p[1])]:
        r = csv.loc[(4.0, f"change_{key}")]
        assert r["value"] == pytest.approx(change.mean(), abs=1e-9) and r["n_units"] == 8
        assert r["p_value"] == pytest.approx(p_raw, rel=1e-9)
        assert r["p_adjusted"] == pytest.approx(min(1.0, 2 * min(p)), rel=1e-9)  # Holm, m = 2
        assert r["ci_high"] < 0
    assert csv.loc[(4.0, "change_sft_vs_std"), "verdict"] == "shrinks"
    assert csv.loc[(4.0, "change_sft_vs_equal_compute"), "verdict"] == "reverses"
    md = (compared["out"] / "budget.md").read_text()
    assert "a paired test of the per-unit change of L between the smallest and the largest" in md
    shrink_line = "AT: SFT-KD's lead over Std-KD (SFT-KD − Std-KD) shrinks as the budget grows"
    reverse_line = "AT: the equal-compute control's lead (control − SFT-KD) reverses as the budget"
    assert shrink_line in md and reverse_line in md and "Holm-adjusted" in md
    summary = (compared["out"] / "summary.md").read_text()
    assert shrink_line in summary and reverse_line in summary


def test_budget_settings_split_every_table(compared):
    md = (compared["out"] / "table_1.md").read_text()
    for b in BUDGETS:
        assert f"## phantom 4x budget {b}×" in md
    wil = pd.read_csv(compared["out"] / "wilcoxon.csv")
    assert sorted(set(wil["budget"])) == [1, 2, 4]
    warnings = (compared["out"] / "warnings.txt").read_text()
    assert "finished runs for" not in warnings  # no budget's runs stand in for another's


def test_budget_figure_plots_the_table(compared):
    # The figure's lines carry the known per-budget differences and their CIs, not just pixels.
    from raykd.report.budget import budget_axes
    from raykd.report.table_model import ReportTable

    csv = pd.read_csv(compared["out"] / "budget.csv", dtype={"acceleration": str})
    table = ReportTable("budget")
    table.records = csv.to_dict("records")
    fig = budget_axes(table)
    sft_std, sft_control, _gap = fig.axes
    assert list(sft_std.lines[0].get_ydata()) == pytest.approx([0.4, 0.3, 0.2], abs=1e-9)
    control = [-CONTROL_LEAD[b] for b in BUDGETS]
    assert list(sft_control.lines[0].get_ydata()) == pytest.approx(control, abs=1e-9)
    rec = csv.set_index(["budget", "quantity"]).loc[(4.0, "sft_vs_std")]
    ends = [tuple(sorted(seg[:, 1])) for c in sft_std.collections for seg in c.get_segments()]
    assert any(e == pytest.approx((rec["ci_low"], rec["ci_high"]), abs=1e-9) for e in ends)
    assert (compared["out"] / "figures" / "budget.png").is_file()


def test_trend_test_against_scipy():
    rng = np.random.default_rng(4)
    keys = [(s, v) for s in ("1", "2", "3", "4") for v in ("a", "b")]

    def pairs(lead: np.ndarray) -> UnitPairs:
        return UnitPairs(keys, np.zeros(8), lead, [])

    first = rng.normal(0.4, 0.05, 8)
    later = first - 0.2 + rng.normal(0, 0.02, 8)
    points = [LeadPoint(1.0, 0.4, 0.3, 0.5), LeadPoint(4.0, 0.2, 0.1, 0.3)]
    clear = trend_test(points, pairs(first), pairs(later))
    noise = trend_test(points, pairs(first), pairs(first + rng.normal(0, 0.05, 8)))
    judge_trends([clear, noise])
    assert clear.test.p_value == pytest.approx(sps.wilcoxon(later - first).pvalue, rel=1e-9)
    assert clear.test.mean_diff == pytest.approx((later - first).mean(), abs=1e-12)
    assert clear.word == "shrinks" and noise.word.startswith("no verdict")
    assert clear.test.family_size == 2
    # A lead that moves away from zero grows; no units at one end: no verdict, never a word
    # drawn from point estimates.
    grows = trend_test(points, pairs(first), pairs(first + 0.3 + rng.normal(0, 0.02, 8)))
    judge_trends([grows])
    assert grows.word == "grows"
    assert trend_test(points, None, pairs(first)).word.startswith("no verdict")


def test_budget_study_with_folds(tmp_path):
    """Folds and budgets combine: each budget point counts test subjects (2 here: no verdict
    possible, for the points and the trends alike)."""
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
        assert rec["n_units"] == 2 and rec["units"].startswith("test subjects (2 subjects;")
        assert rec["value"] == pytest.approx(SFT_STD[b], abs=1e-9)
    change = csv.loc[(2.0, "change_sft_vs_std")]
    assert change["n_units"] == 2 and change["verdict"].startswith("no verdict")
    assert "no verdict possible: 2 subjects" in change["verdict"]
    assert "shrinks" not in got["result"].paragraph
    assert (tmp_path / "out" / "figures" / "budget.png").is_file()
