"""Seeds pooled, controls and paired statistics in the report, on a small real MLflow store.

Three seeds × rows teacher, student, equal_compute, std_kd, sft_kd, sft_kd_random (AT), plus
FitNets without sft_kd_random (a missing contrast) and without its seed-44 Std-KD run (a
partially pooled cell). Per-slice PSNR is built so that SFT-KD clearly beats Std-KD, clearly
does not beat the equal-compute control (exactly symmetric differences), and the teacher is
exactly ``TRUE_GAP`` dB above the student on average in every seed. Runs carry eval_test.json
(held-out volumes) and eval_val.json (other volumes), so the tables use the test split.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from raykd.report import ReportWarning
from raykd.tracking import Tracking
from raykd.tracking import schema as S
from tests.test_report import _cell, _section

SEEDS = ("42", "43", "44")
TEST_VOLUMES = ("vol_c", "vol_d")
N_SLICES = 6
TRUE_GAP = 1.0
SEED_SHIFT = {"42": 0.0, "43": 0.3, "44": -0.2}
EXPERIMENT = "seeds"


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


def _eval_json(psnr: np.ndarray, volumes: tuple[str, ...]) -> dict:
    """An eval JSON (schema of raykd.train.evaluate) whose other metrics follow PSNR."""
    per = {
        "psnr": psnr,
        "ssim": 0.9 + (psnr - 30) * 0.01,
        "vif": 0.8 + (psnr - 30) * 0.01,
        "hfn": 0.3 - (psnr - 30) * 0.01,
        "nmse": 0.01 - (psnr - 30) * 1e-4,
        "hfen": 0.2 - (psnr - 30) * 0.01,
    }
    return {
        "volumes": [
            {
                "volume": name,
                "path": f"/nonexistent/{name}.h5",
                "slices": list(range(psnr.shape[1])),
                "metrics": {m: float(v[i].mean()) for m, v in per.items()},
                "per_slice": {m: [float(x) for x in v[i]] for m, v in per.items()},
            }
            for i, name in enumerate(volumes)
        ]
    }


RUNS = [
    *[(row, "", s) for s in SEEDS for row in ("teacher", "student", "equal_compute")],
    *[(row, "at", s) for s in SEEDS for row in ("std_kd", "sft_kd", "sft_kd_random")],
    *[("std_kd", "fitnets", s) for s in SEEDS[:2]],  # seed 44 missing: a partial cell
    *[("sft_kd", "fitnets", s) for s in SEEDS],  # no sft_kd_random: a missing contrast
]


def _build(tracking: Tracking, root: Path, experiment_runs: list, val_volumes: tuple) -> None:
    for row, method, seed in experiment_runs:
        kind = {"teacher": "teacher", "student": "student", "equal_compute": "student"}
        kind = kind.get(row, "kd")
        tags = {
            S.TAG_ROLE: "stage",
            S.TAG_KIND: kind,
            S.TAG_ROW: row,
            S.TAG_METHOD: method,
            S.TAG_DATASET: "phantom",
            S.TAG_ACCELERATION: "4",
            S.TAG_SEED: seed,
            S.TAG_TEACHER_DEPTH: "" if kind == "student" else "5",
            S.TAG_STUDENT_DEPTH: "" if kind == "teacher" else "3",
        }
        run = tracking.start_run(f"{row}-{method}-{seed}", tags)
        psnr = _psnr(row, method or "at", seed)
        folder = root / run
        folder.mkdir(parents=True)
        (folder / "eval_test.json").write_text(json.dumps(_eval_json(psnr, TEST_VOLUMES)))
        (folder / "eval_val.json").write_text(json.dumps(_eval_json(psnr[:1], val_volumes)))
        tracking.log_artifact(run, folder / "eval_test.json", "eval")
        tracking.log_artifact(run, folder / "eval_val.json", "eval")
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
    from raykd.report.compare import compare

    out = tmp_path_factory.mktemp("out")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = compare([EXPERIMENT], out_dir=out, tracking_uri=store["uri"], log_to_mlflow=False)
    msgs = [str(w.message) for w in caught if issubclass(w.category, ReportWarning)]
    return {"result": result, "out": out, "warnings": msgs}


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
    assert "Seeds pooled (3): 42, 43, 44." in md
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
    assert hit["std_over"] == "seeds" and hit["seeds"] == "42;43;44" and hit["n_seeds"] == 3
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


def test_pooled_wilcoxon_matches_scipy(compared):
    csv = pd.read_csv(compared["out"] / "wilcoxon.csv")
    psnr = csv[(csv["metric"] == "psnr") & (csv["method"] == "at")].set_index("comparison")
    for key, baseline in [
        ("sft_vs_std", "std_kd"),
        ("sft_vs_equal_compute", "equal_compute"),
        ("sft_init_vs_random_init", "sft_kd_random"),
    ]:
        a, b = _pairs(baseline, "sft_kd")
        rec = psnr.loc[key]
        assert rec["n"] == len(SEEDS) * len(TEST_VOLUMES) * N_SLICES
        assert rec["seeds"] == "42;43;44"
        assert rec["p_value"] == pytest.approx(sps.wilcoxon(b, a).pvalue, rel=1e-12), key
        assert rec["median_diff"] == pytest.approx(np.median(b - a), abs=1e-12), key
    assert psnr.loc["sft_vs_std", "p_value"] < 1e-6
    assert psnr.loc["sft_vs_std", "verdict"] == "SFT-KD better (p < 0.05)"
    assert psnr.loc["sft_vs_equal_compute", "p_value"] > 0.5
    assert not psnr.loc["sft_vs_equal_compute", "significant"]
    assert psnr.loc["sft_init_vs_random_init", "verdict"] == "SFT init better (p < 0.05)"
    # FitNets: Std-KD exists for two seeds only, so the pooled test uses those (and says so).
    fit = csv[(csv["metric"] == "psnr") & (csv["method"] == "fitnets")].set_index("comparison")
    assert fit.loc["sft_vs_std", "seeds"] == "42;43"
    assert any("seed(s) 44 lack one of the runs" in w for w in compared["warnings"])


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
    n = f"3 seeds × {len(TEST_VOLUMES) * N_SLICES} slices"
    a, b = _pairs("std_kd", "sft_kd")
    expected = (
        f"SFT-KD beats Std-KD for AT (median {np.median(b - a):+.2f} dB, "
        f"{format_p(sps.wilcoxon(b, a).pvalue)}, {n})"
    )
    assert expected in text
    a, b = _pairs("equal_compute", "sft_kd")
    expected = (
        f"SFT-KD does not beat the equal-compute control for AT (median "
        f"{np.median(b - a):+.2f} dB, {format_p(sps.wilcoxon(b, a).pvalue)}, {n})"
    )
    assert expected in text
    assert "SFT-KD with SFT initialisation beats random initialisation for AT" in text
    assert "\n" not in text and text.startswith("On phantom 4x (held-out test volumes, seeds 42")
    summary_md = (compared["out"] / "summary.md").read_text()
    assert text in summary_md and result.summary[0] == text  # the CLI prints result.summary


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
    assert rec["n_seeds"] == 3 and rec["n_pairs"] == 3 * len(TEST_VOLUMES) * N_SLICES
    assert "equal compute" in rows[0] and "SFT-KD random init" in rows[0]
    assert "Without KD the teacher–student gap is 1.00 dB (95% CI" in compared["result"].paragraph


def test_bootstrap_ci_coverage():
    """The stratified percentile bootstrap covers the true mean about 95% of the time."""
    from raykd.report.stats import bootstrap_ci

    rng = np.random.default_rng(1)
    hits = 0
    trials = 200
    for t in range(trials):
        groups = [rng.normal(0.5 + 0.2 * k, 1.0, 30) for k in range(3)]  # true mean 0.7
        _, low, high = bootstrap_ci(groups, resamples=1000, seed=t)
        hits += low < 0.7 < high
    assert 0.88 <= hits / trials <= 0.99
    est, low, high = bootstrap_ci([np.array([1.0, 2.0, 3.0])], resamples=500)
    assert est == 2.0 and low < 2.0 < high and not math.isnan(low)
