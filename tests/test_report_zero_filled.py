"""Zero-filled baselines are computed once, when a stage finishes, and the report reads them.

A real (tiny) teacher stage trains through ``run_training`` → ``finish_stage`` into a real sqlite
MLflow store; its eval JSON carries the zero-filled input's report on the same volumes and
slices, its run the ``zero_filled_<split>_<metric>`` and ``model_params`` metrics, and the
report's ZF row shows exactly those numbers. The gap's one-level bootstrap (scipy) reproduces
the hand-written percentile bootstrap it replaced.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from raykd.report.inference import bootstrap_ci, hierarchical_bootstrap
from raykd.tracking import schema as S
from tests.report_helpers import cell, section, stage_tags


@pytest.fixture(scope="module")
def finished_stage(tmp_path_factory, tiny_data) -> dict:
    from raykd.orchestration.messages import ChainRequest, PlannedStage
    from raykd.orchestration.train_fn import run_training
    from raykd.tracking import Tracking
    from raykd.train.config import load_config
    from tests.conftest import tiny_overrides

    root = tmp_path_factory.mktemp("zf")
    cfg = load_config(
        None,
        tiny_overrides(
            tiny_data,
            root / "teacher",
            "teacher",
            **{"data.train": "[vol0, vol1]", "data.val": "[vol2, vol3]"},
        ),
    )
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracking = Tracking(uri, "zf", root / "artifacts")
    tags = {**stage_tags("teacher"), S.TAG_TEACHER_DEPTH: "3"}
    run_id = tracking.start_run("teacher", tags)
    stage = PlannedStage(stage=cfg, output_dir=cfg.output_dir, mlflow_run_id=run_id)
    chain = ChainRequest(stages=[stage], tracking_uri=uri, experiment="zf", root=str(root))
    run_training(chain, stage, rank=0, report=None, resume_from=None)
    return {"cfg": cfg, "uri": uri, "run_id": run_id, "tracking": tracking}


def test_stage_finish_logs_zero_filled(finished_stage):
    from raykd.data.sources import build_datasets
    from raykd.models.base import count_parameters
    from raykd.models.registry import build_model
    from raykd.train.evaluate import evaluate_model

    cfg = finished_stage["cfg"]
    report = json.loads((Path(cfg.output_dir) / "eval_val.json").read_text())
    zf = report[S.EVAL_ZERO_FILLED]
    # Same volumes and slices as the model's report, per-volume and per-slice values.
    assert [v["volume"] for v in zf["volumes"]] == [v["volume"] for v in report["volumes"]]
    assert [v["slices"] for v in zf["volumes"]] == [v["slices"] for v in report["volumes"]]
    assert len(zf["volumes"]) == 2 and all(v["per_slice"]["psnr"] for v in zf["volumes"])
    # The same metric code on the stage's own val split, computed independently here.
    expected = evaluate_model(None, build_datasets(cfg.data)["val"], progress=False)
    for got, want in zip(zf["volumes"], expected["volumes"], strict=True):
        assert got["metrics"]["psnr"] == pytest.approx(want["metrics"]["psnr"], abs=1e-6)
        assert got["per_slice"]["ssim"] == pytest.approx(want["per_slice"]["ssim"], abs=1e-7)
    # A trained teacher beats its input, so the two reports are not the same numbers.
    assert report["summary"]["psnr"][0] > zf["summary"]["psnr"][0] + 0.1
    metrics = finished_stage["tracking"].client.get_run(finished_stage["run_id"]).data.metrics
    for m in S.METRICS:
        if zf["summary"][m][0] is not None:
            key = S.zero_filled_metric("val", m)
            assert metrics[key] == pytest.approx(zf["summary"][m][0], rel=1e-6, abs=1e-9)
    t = cfg.teacher
    params = count_parameters(build_model(t.arch, t.depth, t.cascades, t.channels))
    assert metrics[S.METRIC_PARAMS] == params


def test_report_reads_logged_zero_filled(finished_stage, recwarn):
    from raykd.report.collect import collect
    from raykd.report.tables import table_1

    report = json.loads((Path(finished_stage["cfg"].output_dir) / "eval_val.json").read_text())
    mean, std = report[S.EVAL_ZERO_FILLED]["summary"]["psnr"]
    with collect(finished_stage["uri"], ["zf"]) as runs:
        rows = section(table_1(runs, teacher_depth=3, student_depth=2).markdown(), "phantom 4x")
    assert cell(rows, "ZF", "Std-KD PSNR") == f"{mean:.2f} ± {std:.2f}"
    assert not any("zero-filled" in str(w.message) for w in recwarn)


def test_scipy_bootstrap_reproduces_the_hand_written_one():
    """One seed: the units are volumes only, and scipy's percentile bootstrap gives the interval
    the hand-written one gave (same data; Monte-Carlo error only) and an independent
    percentile computation; several seeds × volumes stay hierarchical (unchanged)."""
    rng = np.random.default_rng(7)
    x = 0.5 + rng.normal(0, 0.3, 12)
    est, low, high = bootstrap_ci([x])
    old_est, old_low, old_high = hierarchical_bootstrap([x])  # the previous one-seed path
    means = x[rng.integers(0, x.size, (20_000, x.size))].mean(axis=1)
    ind_low, ind_high = np.percentile(means, [2.5, 97.5])
    se = x.std(ddof=1) / np.sqrt(x.size)
    assert est == pytest.approx(old_est, abs=1e-12) and low < est < high
    for a, b in ((low, old_low), (high, old_high), (low, ind_low), (high, ind_high)):
        assert abs(a - b) < 0.05 * se * 4  # 4 se ≈ the interval's width
    # One volume per seed: seeds are the units, scipy again.
    groups = [np.array([v]) for v in x[:8]]
    est, low, high = bootstrap_ci(groups)
    _, old_low, old_high = hierarchical_bootstrap(groups)
    assert est == pytest.approx(x[:8].mean()) and abs(low - old_low) < 0.05
    assert abs(high - old_high) < 0.05
    # Both levels vary: the hierarchical bootstrap itself.
    two = [x[:4], x[4:8], x[8:]]
    assert bootstrap_ci(two) == hierarchical_bootstrap(two)
    # Identical values: a zero-width interval, not NaN.
    assert bootstrap_ci([np.full(6, 0.25)]) == (0.25, 0.25, 0.25)
