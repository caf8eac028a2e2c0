"""Seeds pooled, controls and paired statistics in the report, on a small real MLflow store.

Four seeds × rows teacher, student, equal_compute, std_kd, sft_kd, sft_kd_random (AT), plus
FitNets without sft_kd_random (a missing contrast) and without its seed-44 Std-KD run (a
partially pooled cell). Per-slice PSNR is built so that SFT-KD clearly beats Std-KD, clearly
does not beat the equal-compute control (exactly symmetric differences), and the teacher is
exactly ``TRUE_GAP`` dB above the student on average in every seed. Runs carry eval_test.json
(held-out volumes) and eval_val.json (other volumes), so the tables use the test split.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from raykd.report import ReportWarning
from raykd.tracking import Tracking
from tests.report_helpers import cell as _cell
from tests.report_helpers import compare_quietly, eval_json, log_stage, stage_tags
from tests.report_helpers import section as _section

SEEDS = ("42", "43", "44", "45")
TEST_VOLUMES = ("vol_c", "vol_d")
N_SLICES = 6
TRUE_GAP = 1.0
SEED_SHIFT = {"42": 0.0, "43": 0.3, "44": -0.2, "45": 0.1}
EXPERIMENT = "seeds"
# The zero-filled input's [volume, slice] PSNR, logged by every stage (same volumes, same input).
ZERO_FILLED = 24 + np.arange(len(TEST_VOLUMES) * N_SLICES).reshape(len(TEST_VOLUMES), -1) * 0.1


def _psnr(row: str, method: str, seed: str) -> np.ndarray:
    """[volume, slice] PSNR of one run: known offsets on a per-seed base pattern."""
    rng = np.random.default_rng(int(seed))
    shape = (len(TEST_VOLUMES), N_SLICES)
    student = 30 + SEED_SHIFT[seed] + rng.normal(0, 1, shape)
    noise = rng.normal(0, 0.1, shape)
    teacher = student + TRUE_GAP + noise - noise.mean()  # gap exactly TRUE_GAP per seed
    std_kd = student + 0.2 + rng.normal(0, 0.05, shape)
    sft_kd = std_kd + 0.3 + rng.normal(0, 0.05, shape)
    half = np.abs(rng.normal(0.2, 0.1, shape[0] * shape[1] // 2))
    sym = rng.permutation(np.concatenate([half, -half])).reshape(shape)
    equal = sft_kd + sym  # SFT-KD − equal compute is exactly symmetric around 0
    random_init = sft_kd - 0.15 + rng.normal(0, 0.05, shape)
    if method == "fitnets":  # FitNets: SFT-KD a little better than Std-KD, other pattern
        std_kd, sft_kd = std_kd - 0.1, std_kd + 0.05 + rng.normal(0, 0.3, shape)
    return {
        "teacher": teacher,
        "student": student,
        "equal_compute": equal,
        "std_kd": std_kd,
        "sft_kd": sft_kd,
        "sft_kd_random": random_init,
    }[row]


RUNS = [
    *[(row, "", s) for s in SEEDS for row in ("teacher", "student", "equal_compute")],
    *[(row, "at", s) for s in SEEDS for row in ("std_kd", "sft_kd", "sft_kd_random")],
    *[("std_kd", "fitnets", s) for s in SEEDS[:2]],  # seed 44 missing: a partial cell
    *[("sft_kd", "fitnets", s) for s in SEEDS],  # no sft_kd_random: a missing contrast
]


def _build(tracking: Tracking, root: Path, experiment_runs: list, val_volumes: tuple) -> None:
    for row, method, seed in experiment_runs:
        psnr = _psnr(row, method or "at", seed)
        evals = {
            "test": eval_json(psnr, TEST_VOLUMES, ZERO_FILLED),
            "val": eval_json(psnr[:1], val_volumes, ZERO_FILLED[:1]),
        }
        run = log_stage(tracking, root, stage_tags(row, method, seed), evals)
        tracking.end_run(run)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("seeds")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracking = Tracking(uri, EXPERIMENT, artifact_root=root / "artifacts")
    _build(tracking, root / "tmp", RUNS, ("vol_a",))
    # Another experiment whose validation volume is a test volume: not held out.
    leaky = Tracking(uri, "leaky", artifact_root=root / "artifacts")
    _build(leaky, root / "tmp-leaky", [("teacher", "", "42"), ("student", "", "42")], ("vol_c",))
    return {"uri": uri}


@pytest.fixture(scope="module")
def compared(store, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("out")
    return compare_quietly([EXPERIMENT], store["uri"], out, log_to_mlflow=False)


def _pooled(row: str, method: str = "at") -> tuple[np.ndarray, np.ndarray]:
    """[seed, volume] PSNR of a row, and every (seed, volume, slice) value."""
    vals = np.stack([_psnr(row, method, s) for s in SEEDS])
    return vals.mean(axis=2), vals


def _pairs(baseline: str, candidate: str) -> tuple[np.ndarray, np.ndarray]:
    a = np.concatenate([_psnr(baseline, "at", s).ravel() for s in SEEDS])
    b = np.concatenate([_psnr(candidate, "at", s).ravel() for s in SEEDS])
    return a, b


def test_mean_std_over_seeds_and_volumes(compared):
    md = (compared["out"] / "table_1.md").read_text()
    rows = _section(md, "phantom 4x")
    assert "Seeds pooled (4): 42, 43, 44, 45." in md
    for label, row, col in [
        ("AT", "sft_kd", "SFT-KD PSNR"),
        ("Teacher", "teacher", "Std-KD PSNR"),
        ("Student, equal compute", "equal_compute", "SFT-KD PSNR"),
        ("AT (SFT-KD, random init)", "sft_kd_random", "SFT-KD PSNR"),
    ]:
        per_volume, _ = _pooled(row)
        seed_means = per_volume.mean(axis=1)
        mean, sd_seeds = seed_means.mean(), seed_means.std(ddof=1)
        sd_vol = per_volume.ravel().std(ddof=1)
        text = _cell(rows, label, col).replace("**", "")
        assert text == f"{mean:.2f} ± {sd_seeds:.2f} (vol. ± {sd_vol:.2f})", label
    csv = pd.read_csv(compared["out"] / "table_1.csv")
    hit = csv[(csv["row"] == "sft_kd") & (csv["method"] == "at") & (csv["metric"] == "psnr")]
    hit = hit.iloc[0]
    per_volume, _ = _pooled("sft_kd")
    assert hit["mean"] == pytest.approx(per_volume.mean(axis=1).mean(), abs=1e-12)
    assert hit["std_seeds"] == pytest.approx(per_volume.mean(axis=1).std(ddof=1), abs=1e-12)
    assert hit["std_volumes"] == pytest.approx(per_volume.ravel().std(ddof=1), abs=1e-12)
    assert hit["std_over"] == "seeds" and hit["seeds"] == "42;43;44;45" and hit["n_seeds"] == 4
    # Zero-filled: what the stages logged (one input, so not pooled over seeds).
    zf = ZERO_FILLED.mean(axis=1)
    assert _cell(rows, "ZF", "Std-KD PSNR") == f"{zf.mean():.2f} ± {zf.std(ddof=1):.2f}"
    assert not any("zero-filled" in w for w in compared["warnings"])
    # FitNets Std-KD has seeds 42 and 43 only: pooled over those, marked and warned.
    assert _cell(rows, "FitNets", "Std-KD PSNR").endswith("‡")
    assert any("std_kd fitnets" in w and "seed(s) 44" in w for w in compared["warnings"])


def test_held_out_header(compared, store):
    from raykd.report.collect import collect

    md = (compared["out"] / "table_1.md").read_text()
    assert (
        "computed on held-out test volumes vol_c, vol_d never used for training or model "
        "selection" in md
    )
    assert "Each run's numbers average 12 slices." in md  # 2 volumes x 6 slices
    for name in ("table_3", "table_8", "gap", "wilcoxon"):
        assert "held-out test volumes vol_c, vol_d" in (compared["out"] / f"{name}.md").read_text()
    assert "held-out test" in compared["result"].paragraph
    runs = collect(store["uri"], ["leaky"])
    try:
        assert runs.split == "test"
        with pytest.warns(ReportWarning, match=r"test volumes \['vol_c'\] are also validation"):
            text = runs.split_description()
    finally:
        runs.close()
    assert "NOT held out" in text and "held-out test volumes" not in text


def _unit_diffs(baseline: str, candidate: str, method: str = "at") -> np.ndarray:
    """Per-(seed, volume) differences of the volume values (seed-major, volumes sorted), as the
    eval JSONs store them: each volume's mean, then the difference."""
    return np.concatenate(
        [
            _psnr(candidate, method, s).mean(axis=1) - _psnr(baseline, method, s).mean(axis=1)
            for s in SEEDS
        ]
    )


def test_unit_level_tests_match_scipy(compared):
    csv = pd.read_csv(compared["out"] / "wilcoxon.csv")
    psnr = csv[(csv["metric"] == "psnr") & (csv["method"] == "at")].set_index("comparison")
    for key, baseline in [
        ("sft_vs_std", "std_kd"),
        ("sft_vs_equal_compute", "equal_compute"),
        ("sft_init_vs_random_init", "sft_kd_random"),
    ]:
        d = _unit_diffs(baseline, "sft_kd")
        a, b = _pairs(baseline, "sft_kd")
        rec = psnr.loc[key]
        assert rec["n_units"] == len(SEEDS) * len(TEST_VOLUMES) == 8 and rec["testable"]
        assert rec["units"] == "4 seeds × 2 volumes" and rec["seeds"] == "42;43;44;45"
        assert rec["mean_diff"] == pytest.approx(d.mean(), abs=1e-12), key
        assert rec["p_value"] == pytest.approx(sps.wilcoxon(d).pvalue, rel=1e-12), key
        assert rec["ci_low"] < rec["mean_diff"] < rec["ci_high"], key
        # The per-slice test is still reported, as a description.
        assert rec["slice_n"] == len(SEEDS) * len(TEST_VOLUMES) * N_SLICES
        assert rec["slice_p_value"] == pytest.approx(sps.wilcoxon(b, a).pvalue, rel=1e-12)
        assert rec["slice_median_diff"] == pytest.approx(np.median(b - a), abs=1e-12)
    # Eight units, all positive: the exact two-sided signed-rank p is 2 / 2**8. The PSNR family
    # has 4 defined p-values (AT's 3 contrasts, FitNets vs the control): Holm, by hand.
    assert psnr.loc["sft_vs_std", "p_value"] == pytest.approx(2 / 256, rel=1e-9)
    family = csv[(csv["metric"] == "psnr") & csv["p_value"].notna()]
    p = family["p_value"].to_numpy()
    assert len(p) == 4 and set(family["family_size"]) == {4}
    expected, running = np.empty(4), 0.0
    for i, idx in enumerate(np.argsort(p, kind="stable")):
        running = max(running, min(1.0, (4 - i) * p[idx]))
        expected[idx] = running
    assert family["p_adjusted"].to_numpy() == pytest.approx(expected, rel=1e-9)
    assert psnr.loc["sft_vs_std", "ci_low"] > 0
    assert psnr.loc["sft_vs_std", "verdict"] == (
        "SFT-KD better (Holm-adjusted p < 0.05, CI excludes 0)"
    )
    assert not psnr.loc["sft_vs_equal_compute", "significant"]
    assert (
        psnr.loc["sft_vs_equal_compute", "ci_low"] < 0 < psnr.loc["sft_vs_equal_compute", "ci_high"]
    )
    assert psnr.loc["sft_init_vs_random_init", "verdict"].startswith("SFT init better")
    # FitNets: Std-KD exists for two seeds only → 4 units: no verdict, although the 24
    # correlated slice pairs give a "significant" per-slice p-value.
    fit = csv[(csv["metric"] == "psnr") & (csv["method"] == "fitnets")].set_index("comparison")
    rec = fit.loc["sft_vs_std"]
    assert rec["seeds"] == "42;43" and rec["n_units"] == 4 and not rec["testable"]
    assert rec["slice_p_value"] < 0.05 and not rec["significant"] and np.isnan(rec["p_value"])
    assert rec["verdict"] == "no verdict: not enough independent units: n=4, need ≥ 6"
    assert any("seed(s) 44, 45 lack one of the runs" in w for w in compared["warnings"])


def test_missing_contrast_reported(compared):
    csv = pd.read_csv(compared["out"] / "wilcoxon.csv")
    fit = csv[(csv["method"] == "fitnets") & (csv["comparison"] == "sft_init_vs_random_init")]
    assert len(fit) == 4 and set(fit["verdict"]) == {"missing run"}  # every metric listed
    assert any(
        "comparison missing: phantom 4x SFT init vs random init for FitNets" in w
        and "no sft_kd_random run" in w
        for w in compared["warnings"]
    )
    rows = _section((compared["out"] / "table_1.md").read_text(), "phantom 4x")
    assert _cell(rows, "FitNets (SFT-KD, random init)", "SFT-KD PSNR") == "—"
    assert (
        "SFT-KD with SFT initialisation vs random initialisation for FitNets could not be "
        "tested (missing runs)" in compared["result"].paragraph
    )


def test_summary_paragraph_states_claims(compared):
    from raykd.report.stats import format_p

    result = compared["result"]
    text = result.paragraph
    units = "n = 8 units: 4 seeds × 2 volumes"
    csv = pd.read_csv(compared["out"] / "wilcoxon.csv")
    at = csv[(csv["metric"] == "psnr") & (csv["method"] == "at")].set_index("comparison")
    d = _unit_diffs("std_kd", "sft_kd")
    rec = at.loc["sft_vs_std"]
    expected = (
        f"SFT-KD beats Std-KD for AT (mean {d.mean():+.2f} dB, 95% CI [{rec['ci_low']:+.2f}, "
        f"{rec['ci_high']:+.2f}], {format_p(sps.wilcoxon(d).pvalue)}, Holm-adjusted over 4 "
        f"tests p = {rec['p_adjusted']:.3g}, {units})"
    )
    assert expected in text
    d = _unit_diffs("equal_compute", "sft_kd")
    assert f"SFT-KD does not beat the equal-compute control for AT (mean {d.mean():+.2f} dB" in text
    assert "SFT-KD with SFT initialisation beats random initialisation for AT" in text
    assert (
        "no verdict (not enough independent units: n=4, need ≥ 6; 2 seeds × 2 volumes) on "
        "SFT-KD vs Std-KD for FitNets" in text
    )
    assert "per-slice" not in text  # slice-level p-values are never quoted as evidence
    assert "\n" not in text and text.startswith("On phantom 4x (held-out test volumes, seeds 42")
    summary_md = (compared["out"] / "summary.md").read_text()
    assert text in summary_md and result.summary_lines[0] == text  # the CLI prints summary_lines


def test_gap_ci_contains_true_gap(compared):
    md = (compared["out"] / "gap.md").read_text()
    rows = _section(md, "phantom 4x")
    point, ci = _cell(rows, "AT", "no KD").split(" [")
    low, high = (float(x) for x in ci.rstrip("]").split(", "))
    assert float(point) == pytest.approx(TRUE_GAP, abs=0.005)
    assert low < TRUE_GAP < high and high - low < 0.2
    csv = pd.read_csv(compared["out"] / "gap.csv")
    rec = csv[(csv["method"] == "at") & (csv["framework"] == "no KD")].iloc[0]
    assert rec["gap_db"] == pytest.approx(TRUE_GAP, abs=1e-9)
    assert rec["n_seeds"] == 4 and rec["n_units"] == 4 * len(TEST_VOLUMES)
    assert "equal compute" in rows[0] and "SFT-KD random init" in rows[0]
    assert "Without KD the teacher–student gap is 1.00 dB (95% CI" in compared["result"].paragraph
    assert "8 units)." in compared["result"].paragraph


def test_hierarchical_bootstrap_coverage():
    """Seed and volume effects: the two-stage bootstrap covers the true mean most of the time,
    while a bootstrap that treats every (seed, volume) unit as independent covers less."""
    from scipy.stats import bootstrap

    from raykd.report.inference import hierarchical_bootstrap

    rng = np.random.default_rng(1)
    trials, hits, naive_hits = 150, 0, 0
    for t in range(trials):
        seed_effect = rng.normal(0, 0.3, (6, 1))  # a training seed shifts all its volumes
        groups = list(0.5 + seed_effect + rng.normal(0, 0.1, (6, 4)))
        _, low, high = hierarchical_bootstrap(groups, resamples=1000, seed=t)
        hits += low < 0.5 < high
        flat = np.concatenate(groups)
        ci = bootstrap((flat,), np.mean, n_resamples=1000, method="percentile", random_state=t)
        naive_hits += ci.confidence_interval.low < 0.5 < ci.confidence_interval.high
    assert 0.8 <= hits / trials <= 0.99
    assert naive_hits < hits  # resampling units as if independent is overconfident here
    # One seed: volumes are resampled; one volume per seed: seeds are.
    est, low, high = hierarchical_bootstrap([np.array([1.0, 2.0, 3.0])], resamples=500)
    assert est == 2.0 and low < 2.0 < high
    est, low, high = hierarchical_bootstrap([np.array([v]) for v in (1.0, 2.0, 3.0)], 500)
    assert est == 2.0 and low < 2.0 < high


def test_correlated_slices_of_few_units_give_no_verdict():
    """120 slices of one volume × 2 seeds: per-slice p ≈ 1e-16, but only 2 independent units."""
    from raykd.report.inference import UnitPairs, unit_test
    from raykd.report.stats import wilcoxon_test

    rng = np.random.default_rng(0)
    base = 30 + rng.normal(0, 1, (2, 120))
    cand = base + 0.2 + rng.normal(0, 0.05, (2, 120))
    sliced = wilcoxon_test(base.ravel(), cand.ravel())
    assert sliced.p_value < 1e-15 and sliced.significant  # what the old summary reported
    pairs = UnitPairs([("1", "v"), ("2", "v")], base.mean(axis=1), cand.mean(axis=1), [])
    res = unit_test(pairs)
    assert not res.testable and not res.significant and res.better == ""
    assert res.verdict == "no verdict: not enough independent units: n=2, need ≥ 6"
    assert math.isnan(res.p_value) and res.mean_diff == pytest.approx(0.2, abs=0.02)


def test_enough_units_with_a_clear_effect_give_a_verdict():
    from raykd.report.inference import UnitPairs, unit_test

    rng = np.random.default_rng(3)
    keys = [(str(s), f"v{v}") for s in range(4) for v in range(2)]  # 8 units
    base = 30 + rng.normal(0, 1, 8)
    pairs = UnitPairs(keys, base, base + 0.5 + rng.normal(0, 0.1, 8), [])
    res = unit_test(pairs, names=("Std-KD", "SFT-KD"))
    assert res.testable and res.significant and res.better == "candidate"
    assert res.p_value == pytest.approx(sps.wilcoxon(pairs.candidate - pairs.baseline).pvalue)
    assert res.p_value == pytest.approx(2 / 2**8) and res.ci_low > 0.3
    assert res.verdict == "SFT-KD better (p < 0.05, CI excludes 0)" and res.units == (
        "4 seeds × 2 volumes"
    )
    worse = unit_test(UnitPairs(keys, base, base - 0.5, []), names=("Std-KD", "SFT-KD"))
    assert worse.better == "baseline" and worse.verdict.startswith("Std-KD better")
    hfn = unit_test(UnitPairs(keys, base, base - 0.5, []), higher_is_better=False)
    assert hfn.better == "candidate"  # lower is better (e.g. HFN)
    noise = unit_test(UnitPairs(keys, base, base + rng.normal(0, 0.1, 8), []))
    assert noise.testable and not noise.significant
    # Exactly 6 units is the minimum: every difference positive reaches p = 1/32 < 0.05.
    six = UnitPairs(keys[:6], base[:6], base[:6] + 1.0, [])
    assert (
        unit_test(six).significant
        and not unit_test(UnitPairs(keys[:5], base[:5], base[:5] + 1.0, [])).testable
    )


def test_one_good_seed_does_not_carry_a_verdict():
    """2 seeds × 10 volumes: one seed +1 dB everywhere, the other ≈ 0. The unit Wilcoxon test
    alone says p < 0.05, but the seed-clustered CI includes 0, so there is no verdict."""
    from raykd.report.inference import UnitPairs, unit_test

    keys = [(s, f"v{v}") for s in ("1", "2") for v in range(10)]
    rng = np.random.default_rng(5)
    base = 30 + rng.normal(0, 1, 20)
    other = np.array([-0.01, -0.02, -0.03, -0.01, -0.02, -0.015, -0.025, -0.005, 0.01, 0.02])
    diff = np.concatenate([1.0 + rng.normal(0, 0.05, 10), other])
    res = unit_test(UnitPairs(keys, base, base + diff, []))
    assert res.testable and res.p_value == pytest.approx(sps.wilcoxon(diff).pvalue)
    assert res.p_value < 0.05 and res.ci_low < 0 < res.ci_high
    assert not res.significant and res.better == ""
    assert res.verdict == (
        "no significant difference (p < 0.05 but the seed-clustered CI includes 0)"
    )


def test_volume_values_null_is_undefined_and_missing_is_an_error():
    from raykd.errors import RaykdError
    from raykd.report.inference import UnitPairs, unit_test, volume_values

    report = {"volumes": [{"volume": "a", "metrics": {"vif": None, "psnr": 30.0}}]}
    assert math.isnan(volume_values(report, "vif")["a"])
    assert volume_values(report, "psnr") == {"a": 30.0}
    with pytest.raises(RaykdError, match="no per-volume 'ssim' value"):
        volume_values(report, "ssim")
    keys = [(str(s), "v") for s in range(7)]
    base = np.arange(7, dtype=float)
    cand = base + 1.0
    cand[0] = np.inf  # an exact reconstruction: undefined, left out and counted
    res = unit_test(UnitPairs(keys, base, cand, []))
    assert res.n_units == 6 and res.n_dropped == 1 and res.significant
