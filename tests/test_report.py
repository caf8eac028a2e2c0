"""The report layer against a small, real MLflow store built here (sqlite + file artifacts).

The store follows ``raykd/tracking/schema.py``: a job run with ``stages.json`` and an Optuna
study, stage runs with tags, ``eval/eval_val.json`` (per-volume and per-slice numbers chosen
here), example reconstructions, ``val_loss`` histories and ``config.yaml``. One run is missing
on purpose (SFT-KD with FSP: only a FAILED attempt exists) and must show as "—" with a warning.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from raykd.data.dataset import SliceDataset
from raykd.data.sources import build_mask
from raykd.data.transforms import undersample
from raykd.data.volumes import write_volume
from raykd.errors import RaykdError
from raykd.models.base import count_parameters
from raykd.models.dccnn import DCCNN
from raykd.report import ReportWarning
from raykd.tracking import Tracking
from raykd.tracking import schema as S
from raykd.train.config import load_config, save_config
from raykd.train.evaluate import evaluate_model
from tests.conftest import phantom_volume
from tests.report_helpers import cell as _cell
from tests.report_helpers import section as _section

REPO = Path(__file__).resolve().parent.parent
EXPERIMENT = "grid"
SIZE = 48  # >= 41 so VIF is defined
N_SLICES = 4
VOLUMES = ("vol_a", "vol_b")
METRIC_BASE = {"ssim": 0.90, "hfn": 0.30, "vif": 0.85, "nmse": 0.01, "hfen": 0.2}

# (row, method, student_depth, PSNR base); teacher depth is 5 throughout.
STAGES = [
    ("teacher", "", None, 36.0),
    ("sft_teacher", "", 3, 36.2),
    ("student", "", 3, 34.0),
    ("std_kd", "at", 3, 34.5),
    ("sft_kd", "at", 3, 35.5),
    ("std_kd", "fsp", 3, 34.2),
    ("std_kd", "sp", 3, 34.3),
    ("sft_kd", "sp", 3, 34.3),  # identical per-slice values to std_kd sp (see _slice_values)
    ("student", "", 2, 32.0),
    ("std_kd", "at", 2, 32.5),
    ("sft_kd", "at", 2, 33.0),
]
KIND = {
    "teacher": "teacher",
    "sft_teacher": "sft",
    "student": "student",
    "std_kd": "kd",
    "sft_kd": "kd",
}


def _slice_values(row: str, method: str, base: float, metric: str) -> np.ndarray:
    """[volume, slice] values: a fixed pattern around ``base`` (SP's pair shares one pattern)."""
    key = f"{method}{metric}" if method == "sp" else f"{row}{method}{base}{metric}"
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    scale = 0.5 if metric == "psnr" else 0.01
    pattern = rng.normal(0, scale, (len(VOLUMES), N_SLICES))
    pattern[1] += 2 * scale  # volumes differ, so the std over volumes is not tiny
    return base + pattern


def _metric_base(metric: str, psnr: float) -> float:
    """Better PSNR → better other metrics, so bold/verdicts agree across metrics."""
    sign = 1.0 if metric in ("ssim", "vif") else -1.0
    return METRIC_BASE[metric] + sign * (psnr - 34.0) * 0.01


def _eval_json(values: dict[str, np.ndarray], paths: list[Path]) -> dict:
    volumes = []
    for v, name in enumerate(VOLUMES):
        volumes.append(
            {
                "volume": name,
                "path": str(paths[v]),
                "slices": list(range(N_SLICES)),
                "metrics": {m: float(values[m][v].mean()) for m in S.METRICS},
                "per_slice": {m: [float(x) for x in values[m][v]] for m in S.METRICS},
            }
        )
    means = {m: [float(np.mean([vol["metrics"][m] for vol in volumes])), 0.0] for m in S.METRICS}
    return {"volumes": volumes, "summary": means}


def _examples(dataset: SliceDataset, quality: float, seed: int) -> dict[str, np.ndarray]:
    idx = [0, 2, 3]
    target = torch.stack([dataset[i].target for i in idx])
    mask = torch.stack([dataset[i].mask for i in idx])
    zero_filled, _ = undersample(target, mask)
    noise = torch.from_numpy(np.random.default_rng(seed).normal(0, 1, target.shape)).float()
    recon = target + noise * 10 ** (-quality / 20)
    return {
        "target": target[:, 0].numpy(),
        "zero_filled": zero_filled[:, 0].numpy(),
        "recon": recon[:, 0].numpy(),
        "slices": np.array(idx),
        "volume": np.array("vol_a"),
    }


def _make_study(path: Path) -> tuple[str, str]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{path}"
    study = optuna.create_study(
        study_name="kd_weights",
        storage=storage,
        directions=["maximize", "minimize"],
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # set_metric_names is marked experimental
        study.set_metric_names(["val_psnr", "params"])

    def objective(trial):
        w = trial.suggest_float("w_kd", 1e-2, 1e3, log=True)
        depth = trial.suggest_int("depth", 2, 4)
        return 34 + math.log10(w) * 0.1 + depth * 0.2, depth * 1000.0

    study.optimize(objective, n_trials=10)
    return storage, "kd_weights"


def build_store(
    root: Path,
    volume_dir: Path,
    experiment: str = EXPERIMENT,
    uri: str | None = None,
    with_study: bool = True,
    logged_at_finish: bool = True,
) -> dict:
    """The MLflow store of a finished (tiny) grid, with every value known to the test.

    ``uri`` adds the grid as another experiment of an existing store (no new sqlite schema).
    ``logged_at_finish``: stages log the zero-filled input's report (computed with the same
    ``evaluate_model`` as ``finish_stage``) and their parameter count; False = runs finished
    before stages logged them.
    """
    root.mkdir(parents=True, exist_ok=True)
    paths = [volume_dir / f"{name}.h5" for name in VOLUMES]
    uri = uri or f"sqlite:///{root / 'mlflow.db'}"
    tracking = Tracking(uri, experiment, artifact_root=root / "artifacts")
    cfg = load_config(
        None,
        [
            "kind=teacher",
            f"data.source={volume_dir}",
            f"data.val=[{', '.join(VOLUMES)}]",
            f"data.size=[{SIZE}, {SIZE}]",
            "data.mask.acceleration=4",
            "data.mask.num_low=4",
        ],
    )
    save_config(cfg, root / "config.yaml")
    dataset = SliceDataset(paths, (SIZE, SIZE), build_mask(cfg.data.mask))
    zero_filled = evaluate_model(None, dataset, progress=False) if logged_at_finish else None
    storage, study = _make_study(root / "optuna.db") if with_study else ("", "")
    job_tags = {S.TAG_ROLE: "job"}
    if with_study:
        job_tags |= {"raykd.optuna_storage": storage, "raykd.optuna_study": study}
    job = tracking.start_run("grid-job", tags=job_tags)
    values: dict[tuple[str, str, int | None], dict[str, np.ndarray]] = {}
    listed = []
    for i, (row, method, s_depth, psnr) in enumerate(STAGES):
        kind = KIND[row]
        tags = {
            S.TAG_ROLE: "stage",
            S.TAG_KIND: kind,
            S.TAG_ROW: row,
            S.TAG_STAGE_ID: f"{kind}-{i:012d}",
            S.TAG_METHOD: method,
            S.TAG_INIT: {"std_kd": "random", "sft_kd": "sft"}.get(row, ""),
            S.TAG_DATASET: "phantom",
            S.TAG_ACCELERATION: "4",
            S.TAG_SEED: "42",
            S.TAG_TEACHER_DEPTH: "" if kind == "student" else "5",
            S.TAG_STUDENT_DEPTH: "" if kind == "teacher" else str(s_depth),
            S.TAG_TASK: "recon",
        }
        params = {
            "kind": kind,
            "teacher": {"depth": 5, "cascades": 5, "channels": 32},
            "student": {"depth": s_depth or 3, "cascades": 5, "channels": 32},
        }
        run = tracking.start_run(f"{row}-{method}-{s_depth}", tags, job, params)
        vals = {m: _slice_values(row, method, psnr, m) for m in ("psnr",)}
        for m in METRIC_BASE:
            vals[m] = _slice_values(row, method, _metric_base(m, psnr), m)
        values[(row, method, s_depth)] = vals
        eval_path = root / "tmp" / run / "eval_val.json"
        eval_path.parent.mkdir(parents=True)
        report = _eval_json(vals, paths)
        if zero_filled is not None:
            report[S.EVAL_ZERO_FILLED] = zero_filled
            depth = 5 if kind in ("teacher", "sft") else s_depth
            tracking.log_metrics(run, {S.METRIC_PARAMS: count_parameters(DCCNN(depth, 5, 32))})
        eval_path.write_text(json.dumps(report))
        tracking.log_artifact(run, eval_path, "eval")
        npz = root / "tmp" / run / "val_examples.npz"
        np.savez_compressed(npz, **_examples(dataset, psnr, seed=i))
        tracking.log_artifact(run, npz, "examples")
        if row in ("teacher", "student"):
            tracking.log_artifact(run, root / "config.yaml")
        for epoch in range(1, 6):
            loss = 0.05 / epoch + (40 - psnr) * 1e-3
            tracking.log_metrics(run, {"val_loss": loss, "val_psnr": psnr - 1 / epoch}, epoch)
        tracking.end_run(run)
        listed.append({"run_id": run, "row": row, "method": method})
    failed = tracking.start_run(
        "sft_kd-fsp-failed",
        {**tags, S.TAG_ROW: "sft_kd", S.TAG_METHOD: "fsp", S.TAG_STUDENT_DEPTH: "3"},
        job,
    )
    tracking.end_run(failed, "FAILED")
    stages_json = root / "stages.json"
    stages_json.write_text(json.dumps(listed + [{"run_id": failed, "row": "sft_kd"}]))
    tracking.log_artifact(job, stages_json)
    # The grid job's own summary format: {"rows": [{"mlflow_run_id": ...}, ...]}, failed rows
    # without a run.
    summary = root / f"grid-{job[:8]}-stages.json"
    rows = [{"label": f"{e['row']} {e['method']}", "mlflow_run_id": e["run_id"]} for e in listed]
    rows.append({"label": "sft_kd fsp", "mlflow_run_id": None, "error": "RayTaskError: boom"})
    summary.write_text(json.dumps({"job_run_id": job, "rows": rows}))
    tracking.log_artifact(job, summary)
    tracking.end_run(job)
    return {
        "uri": uri,
        "tracking": tracking,
        "job": job,
        "values": values,
        "paths": paths,
        "dataset": dataset,
        "zero_filled": zero_filled,
        "study": (storage, study),
    }


@pytest.fixture(scope="module")
def volume_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("volumes")
    for v, name in enumerate(VOLUMES):
        write_volume(root / f"{name}.h5", phantom_volume(N_SLICES, SIZE, seed=10 + v))
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory, volume_dir) -> dict:
    from raykd.deploy.latency import benchmark_inference, log_benchmark

    info = build_store(tmp_path_factory.mktemp("store"), volume_dir)
    bench = benchmark_inference(depths=(2, 5), size=32, repeats=2, warmup=1, threads=1)
    info["benchmark_run"] = log_benchmark(bench, info["tracking"])
    return info


@pytest.fixture(scope="module")
def compared(store, tmp_path_factory) -> dict:
    from raykd.report.compare import compare

    out = tmp_path_factory.mktemp("comparison")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = compare([EXPERIMENT], out_dir=out, tracking_uri=store["uri"])
    report_warnings = [str(w.message) for w in caught if issubclass(w.category, ReportWarning)]
    return {"result": result, "out": out, "warnings": report_warnings}


def _vol_stats(values: np.ndarray) -> tuple[float, float]:
    per_volume = values.mean(axis=1)
    return float(per_volume.mean()), float(per_volume.std(ddof=1))


# ---- tables --------------------------------------------------------------------------------------
def test_table_1_values_bold_and_missing(store, compared):
    md = (compared["out"] / "table_1.md").read_text()
    rows = _section(md, "phantom 4x")
    values = store["values"]
    for (row, method, depth), col, label in [
        (("teacher", "", None), "Std-KD PSNR", "Teacher"),
        (("sft_teacher", "", 3), "SFT-KD PSNR", "Teacher"),
        (("student", "", 3), "Std-KD PSNR", "Student"),
        (("std_kd", "at", 3), "Std-KD PSNR", "AT"),
        (("std_kd", "fsp", 3), "Std-KD PSNR", "FSP"),
    ]:
        mean, std = _vol_stats(values[(row, method, depth)]["psnr"])
        assert _cell(rows, label, col).strip("*") == f"{mean:.2f} ± {std:.2f}"
    mean, std = _vol_stats(values[("std_kd", "at", 3)]["ssim"])
    assert _cell(rows, "AT", "Std-KD SSIM") == f"{mean:.4f} ± {std:.4f}"
    # Best student-sized model: SFT-KD with AT, in bold; the teacher is not a contender.
    mean, std = _vol_stats(values[("sft_kd", "at", 3)]["psnr"])
    assert _cell(rows, "AT", "SFT-KD PSNR") == f"**{mean:.2f} ± {std:.2f}**"
    assert "**" not in _cell(rows, "Teacher", "Std-KD PSNR")
    assert "**" not in _cell(rows, "Student", "Std-KD PSNR")
    # The missing run (only a FAILED attempt exists) is a dash and a warning, never a number.
    assert _cell(rows, "FSP", "SFT-KD PSNR") == "—"
    assert _cell(rows, "FSP", "SFT-KD SSIM") == "—"
    assert any("sft_kd fsp" in w and "FAILED" in w for w in compared["warnings"])
    assert _cell(rows, "ZF", "SFT-KD PSNR") == ""  # not applicable, not missing

    csv = pd.read_csv(compared["out"] / "table_1.csv")
    hit = csv[(csv["row"] == "teacher") & (csv["metric"] == "psnr")].iloc[0]
    mean, std = _vol_stats(values[("teacher", "", None)]["psnr"])
    assert hit["mean"] == pytest.approx(mean, abs=1e-12)
    assert hit["std"] == pytest.approx(std, abs=1e-12)
    assert hit["n_volumes"] == len(VOLUMES) and hit["split"] == "val"
    missing = csv[(csv["method"] == "fsp") & (csv["row"] == "sft_kd")]
    assert set(missing["status"]) == {"missing"} and missing["mean"].isna().all()


def test_table_1_direct_call_warns(store):
    from raykd.report.collect import collect
    from raykd.report.tables import table_1

    runs = collect(store["uri"], [EXPERIMENT])
    try:
        assert runs.split == "val" and len(runs.frame) == len(STAGES) + 1
        with pytest.warns(ReportWarning, match="missing run: phantom 4x sft_kd fsp"):
            table = table_1(runs)
    finally:
        runs.close()
    assert "—" in table.markdown()


def test_zero_filled_read_from_stage_runs(store, compared):
    """The ZF row is what the stages logged at finish (the same evaluate_model on the same
    volumes), read from their eval JSONs: no dataset is rebuilt."""
    rows = _section((compared["out"] / "table_1.md").read_text(), "phantom 4x")
    expected = evaluate_model(None, store["dataset"], progress=False)
    assert store["zero_filled"]["summary"]["psnr"] == pytest.approx(expected["summary"]["psnr"])
    mean, std = (expected["summary"]["psnr"][0], expected["summary"]["psnr"][1])
    assert _cell(rows, "ZF", "Std-KD PSNR") == f"{mean:.2f} ± {std:.2f}"
    mean, std = (expected["summary"]["ssim"][0], expected["summary"]["ssim"][1])
    assert _cell(rows, "ZF", "Std-KD SSIM") == f"{mean:.4f} ± {std:.4f}"
    assert not any("zero-filled" in w for w in compared["warnings"])


def test_runs_finished_before_zero_filled_logging(tmp_path, volume_dir, store):
    """Older runs logged neither zero-filled metrics nor parameter counts: ZF is missing with one
    warning saying why (nothing is recomputed, even though the volume files are still there);
    parameter counts come from the benchmark run where it measured the same network."""
    from raykd.report.benchmarks import latest_benchmark
    from raykd.report.collect import collect
    from raykd.report.table8 import table_8
    from raykd.report.tables import table_1

    build_store(tmp_path / "store", volume_dir, "before", uri=store["uri"], with_study=False,
                logged_at_finish=False)  # fmt: skip
    runs = collect(store["uri"], ["before"])
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t1 = table_1(runs).markdown()
            bench = latest_benchmark(runs.client, runs.experiment_ids)
            t8 = table_8(runs, bench).markdown()
    finally:
        runs.close()
    msgs = [str(w.message) for w in caught if issubclass(w.category, ReportWarning)]
    zf = [m for m in msgs if "zero-filled" in m]
    assert len(zf) == 1 and "no stage run of this setting logged zero-filled metrics" in zf[0]
    rows = _section(t1, "phantom 4x")
    assert _cell(rows, "ZF", "Std-KD PSNR") == "—" and _cell(rows, "ZF", "Std-KD SSIM") == "—"
    rows = _section(t8, "phantom 4x")
    assert bench is not None and bench.run_id == store["benchmark_run"]
    t_params = count_parameters(DCCNN(5, 5, 32))
    assert _cell(rows, "Teacher (D5C5)", "Parameters") == str(t_params)
    d2 = count_parameters(DCCNN(2, 5, 32))
    assert _cell(rows, "Student (D2C5)", "Parameters") == f"{d2} ({100 * (1 - d2 / t_params):.1f}%)"
    assert _cell(rows, "Student (D3C5)", "Parameters") == "not recorded"  # not benchmarked
    assert any("parameter count of D3C5 not recorded" in m for m in msgs)


def test_table_3_and_table_8(store, compared):
    values = store["values"]
    rows = _section((compared["out"] / "table_3.md").read_text(), "phantom 4x")
    mean, std = _vol_stats(values[("std_kd", "at", 3)]["hfn"])
    assert _cell(rows, "AT", "Std-KD HFN") == f"{mean:.4f} ± {std:.4f}"
    mean, std = _vol_stats(values[("sft_kd", "at", 3)]["hfn"])  # lowest HFN wins
    assert _cell(rows, "AT", "SFT-KD HFN") == f"**{mean:.4f} ± {std:.4f}**"

    md = (compared["out"] / "table_8.md").read_text()
    rows = _section(md, "phantom 4x")
    t_params = count_parameters(DCCNN(5, 5, 32))
    assert _cell(rows, "Teacher (D5C5)", "Parameters") == str(t_params) == "141765"
    d2 = count_parameters(DCCNN(2, 5, 32))
    assert _cell(rows, "Student (D2C5)", "Parameters") == f"{d2} ({100 * (1 - d2 / t_params):.1f}%)"
    assert float(_cell(rows, "Student (D2C5)", "Latency (ms)")) > 0
    assert float(_cell(rows, "Teacher (D5C5)", "Latency (ms)")) > 0
    assert _cell(rows, "Student (D3C5)", "Latency (ms)") == "not measured"  # not benchmarked
    assert store["benchmark_run"] in md
    mean, std = _vol_stats(values[("sft_kd", "at", 2)]["psnr"])
    assert _cell(rows, "Student (D2C5)", "SFT-KD PSNR") == f"**{mean:.2f} ± {std:.2f}**"
    mean, std = _vol_stats(values[("student", "", 2)]["vif"])
    assert _cell(rows, "Student (D2C5)", "Original VIF") == f"{mean:.4f} ± {std:.4f}"


def test_table_8_says_latency_not_measured(store):
    from raykd.report.collect import collect
    from raykd.report.table8 import table_8

    runs = collect(store["uri"], [EXPERIMENT])
    try:
        with pytest.warns(ReportWarning, match="latency not measured"):
            md = table_8(runs, latency=None).markdown()
    finally:
        runs.close()
    assert "Latency not measured" in md
    assert "not measured" in _cell(_section(md, "phantom 4x"), "Student (D3C5)", "Latency (ms)")


def test_gap(store, compared):
    values = store["values"]
    teacher = _vol_stats(values[("teacher", "", None)]["psnr"])[0]
    no_kd = teacher - _vol_stats(values[("student", "", 3)]["psnr"])[0]
    std_at = teacher - _vol_stats(values[("std_kd", "at", 3)]["psnr"])[0]
    sft_at = teacher - _vol_stats(values[("sft_kd", "at", 3)]["psnr"])[0]
    md = (compared["out"] / "gap.md").read_text()
    rows = _section(md, "phantom 4x")
    # One seed × two volumes = 2 independent units: the gap, but no CI (too few units).
    for col, gap in (("no KD", no_kd), ("Std-KD", std_at), ("SFT-KD", sft_at)):
        assert _cell(rows, "AT", col) == f"{gap:.2f} [n=2, no CI]"
    assert "fewer than 6 (seed, volume) units" in md
    assert _cell(rows, "FSP", "SFT-KD") == "—"
    # Headline: best method per framework (AT for both here), named.
    headline = f"no KD {no_kd:.2f} → Std-KD {std_at:.2f} (AT) → SFT-KD {sft_at:.2f} (AT)"
    assert headline in md
    assert any(headline in line for line in compared["result"].summary_lines)


# ---- statistics ----------------------------------------------------------------------------------
def test_one_seed_two_volumes_give_no_verdict(store, compared):
    """One seed × 2 volumes: the per-slice test is reported (descriptive), no verdict is."""
    from raykd.report.stats import wilcoxon_test

    values = store["values"]
    std = values[("std_kd", "at", 3)]["psnr"]
    sft = values[("sft_kd", "at", 3)]["psnr"]
    csv = pd.read_csv(compared["out"] / "wilcoxon.csv")
    csv = csv[csv["comparison"] == "sft_vs_std"]
    at = csv[(csv["method"] == "at") & (csv["metric"] == "psnr")].iloc[0]
    assert at["n_units"] == 2 and at["units"] == "1 seed × 2 volumes" and not at["testable"]
    assert at["mean_diff"] == pytest.approx((sft - std).mean(), abs=1e-12)
    assert at["verdict"] == "no verdict: not enough independent units: n=2, need ≥ 6"
    assert not at["significant"] and np.isnan(at["p_value"]) and np.isnan(at["ci_low"])
    a, b = std.ravel(), sft.ravel()
    assert at["slice_p_value"] == pytest.approx(sps.wilcoxon(b, a).pvalue, rel=1e-12)
    assert at["slice_median_diff"] == pytest.approx(np.median(b - a))
    assert at["slice_p_value"] < 0.05  # "significant" per slice, yet only 2 units
    fsp = csv[(csv["method"] == "fsp") & (csv["metric"] == "psnr")].iloc[0]
    assert fsp["verdict"] == "missing run"
    # The store has no sft_kd_random row at all: that contrast is left out, not "missing".
    every = pd.read_csv(compared["out"] / "wilcoxon.csv")
    assert "sft_init_vs_random_init" not in set(every["comparison"])
    assert "sft_kd_random" not in (compared["out"] / "warnings.txt").read_text()
    text = compared["result"].paragraph
    assert (
        "no verdict (not enough independent units: n=2, need ≥ 6; 1 seed × 2 volumes) on "
        "SFT-KD vs Std-KD for AT, SP" in text
    )
    assert " beats " not in text and "is worse than" not in text
    assert "(no CI: not enough independent units: n=2, need ≥ 6)" in text

    # The descriptive per-slice test itself: the verdict flips between a clearly different
    # and an identical pair.
    rng = np.random.default_rng(0)
    a = rng.normal(30, 1, 20)
    assert wilcoxon_test(a, a + 0.5 + rng.normal(0, 0.01, 20)).significant
    same = wilcoxon_test(a, a.copy())
    assert not same.significant and same.p_value == 1.0
    worse = wilcoxon_test(a, a - 0.5, higher_is_better=True)
    assert worse.verdict.startswith("Std-KD better")
    lower_better = wilcoxon_test(a, a - 0.5, higher_is_better=False)  # e.g. HFN
    assert lower_better.verdict.startswith("SFT-KD better")


def test_wilcoxon_pairs_must_align():
    from raykd.report.slices import paired_slices

    def report(slices):
        return {
            "volumes": [
                {"volume": "v", "slices": slices, "metrics": {}, "per_slice": {"psnr": [1.0] * 3}}
            ]
        }

    keys, a, b = paired_slices(report([0, 1, 2]), report([0, 1, 2]), "psnr")
    assert keys == [("v", 0), ("v", 1), ("v", 2)] and a.tolist() == b.tolist()
    with pytest.raises(RaykdError, match="do not align"):
        paired_slices(report([0, 1, 2]), report([0, 1, 3]), "psnr")


# ---- figures and the comparison run ---------------------------------------------------------
def test_figures_produced(compared):
    figs = compared["out"] / "figures"
    for name in (
        "reconstructions",
        "ssim_boxplots",
        "val_loss",
        "optuna_history",
        "optuna_importance",
        "optuna_pareto",
    ):
        path = figs / f"{name}.png"
        assert path.is_file() and path.stat().st_size > 1000, name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_comparison_run_logged(store, compared):
    result = compared["result"]
    client = store["tracking"].client
    run = client.get_run(result.run_id)
    assert run.data.tags[S.TAG_ROLE] == "comparison"
    assert run.info.status == "FINISHED"
    top = {Path(f.path).name for f in client.list_artifacts(result.run_id)}
    for name in ("table_1", "table_3", "table_8", "gap", "wilcoxon"):
        assert {f"{name}.md", f"{name}.csv"} <= top
    assert {"warnings.txt", "summary.md", "figures"} <= top
    figs = {Path(f.path).name for f in client.list_artifacts(result.run_id, "figures")}
    assert {"reconstructions.png", "ssim_boxplots.png", "val_loss.png"} <= figs
    assert "sft_kd fsp" in (compared["out"] / "warnings.txt").read_text()
    # The typed result: every file it names was written and logged; lines end with the run.
    assert result.out_dir == Path(compared["out"]).resolve()
    assert result.summary_path == result.out_dir / "summary.md"
    assert result.warnings_path.read_text().splitlines() == list(result.warnings)
    assert result.warnings == tuple(dict.fromkeys(compared["warnings"]))
    assert all(path.is_file() for path in result.files.values())
    logged = top | {f"figures/{name}" for name in figs}
    assert {str(p.relative_to(result.out_dir)) for p in result.files.values()} <= logged
    assert result.summary_lines[0] == result.paragraph
    assert result.summary_lines[-1] == f"comparison run {result.run_id}"


def test_parent_run_collects_listed_stages(store):
    from raykd.report.collect import collect

    with pytest.warns(ReportWarning, match="row sft_kd fsp has no stage run .*boom"):
        runs = collect(store["uri"], parent_run_id=store["job"])
    try:
        assert len(runs.frame) == len(STAGES) + 1  # the FAILED attempt is listed too
        assert runs.study() == store["study"]
        assert set(runs.frame["row"]) == {"teacher", "sft_teacher", "student", "std_kd", "sft_kd"}
    finally:
        runs.close()


def test_compare_script_and_cli(store, tmp_path, capsys):
    from raykd.cli import main

    # As a script from the repo root (a fast error path: the store does not exist).
    proc = subprocess.run(
        [sys.executable, "jobs/compare_runs.py", "--tracking-uri", f"sqlite:///{tmp_path}/x.db"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("compare_runs: error: no MLflow store at")
    assert "Traceback" not in proc.stderr

    # The script's main in-process (same code path, without paying the imports twice).
    spec = importlib.util.spec_from_file_location("compare_runs", REPO / "jobs/compare_runs.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "script"
    args = ["--experiment", EXPERIMENT, "--tracking-uri", store["uri"], "--out", str(out)]
    assert script.main([*args, "--no-mlflow"]) == 0
    captured = capsys.readouterr()
    assert "gap (dB)" in captured.out and (out / "table_1.md").is_file()
    assert "warning: missing run: phantom 4x sft_kd fsp" in captured.err
    assert script.main(["--experiment", "nope", "--tracking-uri", store["uri"]]) == 2
    assert "compare_runs: error: experiment 'nope' not found" in capsys.readouterr().err

    assert main(["compare", "--tracking-uri", f"sqlite:///{tmp_path}/none.db"]) == 2
    assert "no MLflow store" in capsys.readouterr().err
    assert main(["compare", "--tracking-uri", store["uri"]]) == 2
    err = capsys.readouterr().err
    assert f"experiments with stage runs in {store['uri']}: [" in err and f"'{EXPERIMENT}'" in err


# ---- latency and export --------------------------------------------------------------------------
def test_benchmark_inference():
    from raykd.deploy.latency import benchmark_inference

    before = torch.get_num_threads()
    results = benchmark_inference(
        depths=(2, 3), cascades=2, size=32, repeats=3, warmup=1, threads=1
    )
    assert torch.get_num_threads() == before  # restored after timing
    assert "(1 threads)" in results[0]["device"]
    assert [r["depth"] for r in results] == [2, 3]
    for r in results:
        assert r["median_ms"] > 0 and r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert r["params"] == count_parameters(DCCNN(r["depth"], 2, 32))
    with pytest.raises(RaykdError, match="repeats"):
        benchmark_inference(depths=(2,), repeats=0)


@pytest.fixture
def student_checkpoint(tmp_path) -> Path:
    from raykd.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = DCCNN(2, 2, 4)
    return save_checkpoint(
        tmp_path / "best.pt",
        {
            "model": model.state_dict(),
            "arch": model.arch,
            "kind": "student",
            "config": json.dumps({"data": {"size": [32, 32]}}),
        },
    )


def test_torchscript_matches_eager(student_checkpoint, tmp_path, capsys):
    from raykd.cli import main
    from raykd.deploy.export import example_inputs, export_torchscript, load_torchscript
    from raykd.train.stages import load_model

    path = export_torchscript(student_checkpoint, tmp_path / "model.pt", trace_batch=2)
    scripted = load_torchscript(path)
    eager = load_model(student_checkpoint).eval()
    for batch, mask_2d in ((5, False), (1, True)):  # not the traced batch size
        inputs = example_inputs(batch, (32, 32), seed=7, mask_2d=mask_2d)
        with torch.no_grad():
            assert torch.allclose(scripted(*inputs), eager(*inputs), atol=1e-5)
    assert main(["export", str(student_checkpoint), "--out", str(tmp_path / "cli.pt")]) == 0
    assert (tmp_path / "cli.pt").stat().st_size > 0
    assert "verified" in capsys.readouterr().out


def test_onnx_exports_or_says_why(student_checkpoint, tmp_path):
    from raykd.deploy.export import example_inputs, export_onnx

    out = tmp_path / "model.onnx"
    try:
        path = export_onnx(student_checkpoint, out)
    except RaykdError as exc:
        msg = str(exc)
        assert "ONNX cannot represent the complex FFT data-consistency layer" in msg
        assert "TorchScript is the supported deployment format" in msg
        assert not out.exists()
        return
    assert path.is_file() and path.stat().st_size > 0
    ort = pytest.importorskip("onnxruntime")
    from raykd.train.stages import load_model

    zf, y, mask = example_inputs(2, (32, 32))
    sess = ort.InferenceSession(str(path))
    got = sess.run(None, {"zero_filled": zf.numpy(), "y": y.numpy(), "mask": mask.numpy()})[0]
    with torch.no_grad():
        expected = load_model(student_checkpoint).eval()(zf, y, mask).numpy()
    assert np.allclose(got, expected, atol=1e-4)


def test_compare_with_an_unreachable_tracking_server_fails_fast(tmp_path, capsys):
    """MLflow's client retries an unreachable server for minutes without a word; compare
    probes it first and names the flag."""
    import socket
    import time

    from raykd.cli import main

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    rc = main(["compare", "--tracking-uri", f"http://127.0.0.1:{port}", "--out", str(tmp_path)])
    assert rc == 2
    assert time.monotonic() - t0 < 30
    err = capsys.readouterr().err
    assert f"--tracking-uri http://127.0.0.1:{port}: no tracking server reachable" in err
