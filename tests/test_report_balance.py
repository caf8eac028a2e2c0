"""Loss balance in the comparison: ratio metrics logged into a real sqlite MLflow store.

Contract with the trainer: ``train/ratio/<term>`` per stage run, step 0 before training, step k
= epoch k's mean (``raykd.tracking`` stores it as ``train_ratio_<term>``; one run here logs the
raw ``train/ratio/`` name through MLflow's client, so both spellings are read).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from raykd.report import ReportWarning
from raykd.tracking import Tracking
from raykd.tracking import schema as S
from tests.test_report import _cell, _section
from tests.test_report_seeds import TEST_VOLUMES, _eval_json

# (row, method, {term: [ratio at step 0, 1, 2, 3]}); None = a run that logged no ratios.
RUNS = [
    ("teacher", "", {}),
    ("student", "", {}),
    ("sft_teacher", "", {"rec_s": [1.0, 1.0, 1.0, 1.0], "imit": [0.3, 0.25, 0.22, 0.2]}),
    ("std_kd", "at", {"kd": [15000.0, 400.0, 80.0, 40.0], "out": [0.5, 0.45, 0.42, 0.4]}),
    ("sft_kd", "at", {"kd": [2.0, 1.5, 1.2, 1.0], "out": [0.5, 0.4, 0.4, 0.3]}),
    ("std_kd", "cc", {"kd": [1e-11, 2e-11, 5e-11, 1e-10]}),
    ("sft_kd", "cc", None),
]


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> dict:
    from mlflow.tracking import MlflowClient

    from raykd.report.compare import compare

    root = tmp_path_factory.mktemp("balance")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracking = Tracking(uri, "balance", artifact_root=root / "artifacts")
    rng = np.random.default_rng(0)
    for row, method, ratios in RUNS:
        kind = {"teacher": "teacher", "student": "student", "sft_teacher": "sft"}.get(row, "kd")
        tags = {
            S.TAG_ROLE: "stage",
            S.TAG_KIND: kind,
            S.TAG_ROW: row,
            S.TAG_METHOD: method,
            S.TAG_DATASET: "phantom",
            S.TAG_ACCELERATION: "4",
            S.TAG_SEED: "42",
            S.TAG_TEACHER_DEPTH: "" if kind == "student" else "5",
            S.TAG_STUDENT_DEPTH: "" if kind == "teacher" else "3",
        }
        run = tracking.start_run(f"{row}-{method}", tags)
        path = root / run / "eval_val.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(_eval_json(30 + rng.normal(0, 1, (2, 4)), TEST_VOLUMES)))
        tracking.log_artifact(run, path, "eval")
        for term, values in (ratios or {}).items():
            for step, value in enumerate(values):
                if row == "sft_teacher":  # the contract's own spelling, straight into MLflow
                    MlflowClient(uri).log_metric(run, f"train/ratio/{term}", value, step=step)
                else:
                    tracking.log_metrics(run, {f"train/ratio/{term}": value}, step=step)
        tracking.end_run(run)
    out = root / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = compare(["balance"], out_dir=out, tracking_uri=uri, log_to_mlflow=False)
    msgs = [str(w.message) for w in caught if issubclass(w.category, ReportWarning)]
    return {"result": result, "out": out, "warnings": msgs}


def test_start_and_end_ratio_per_kd_row(compared):
    rows = _section((compared["out"] / "balance.md").read_text(), "phantom 4x")
    by_term = {(r[0], r[2]): r for r in rows}
    at_kd = by_term[("AT Std-KD", "kd")]
    assert at_kd[3:5] == ["1.5e+04", "40"]
    assert at_kd[5] == "dominates at the start (1.5e+04×, > 10×); dominates at the end (40×, > 10×)"
    assert by_term[("AT Std-KD", "out")][3:] == ["0.5", "0.4", "ok"]
    assert by_term[("AT SFT-KD", "kd")][3:] == ["2", "1", "ok"]
    cc = by_term[("CC Std-KD", "kd")]
    assert cc[3:5] == ["1e-11", "1e-10"] and cc[5].startswith("vanishes at the start (1e-11×")
    assert by_term[("SFT teacher", "imit")][3:] == ["0.3", "0.2", "ok"]
    assert by_term[("SFT teacher", "rec_s")][3:] == ["1", "1", "ok"]
    assert _cell(rows, "CC SFT-KD", "balance") == "no ratio metrics"
    csv = pd.read_csv(compared["out"] / "balance.csv")
    rec = csv[(csv["method"] == "at") & (csv["row"] == "std_kd") & (csv["term"] == "kd")].iloc[0]
    assert rec["start"] == 15000.0 and rec["end"] == 40.0 and rec["start_step"] == 0
    assert rec["end_step"] == 3 and bool(rec["dominates"]) and not bool(rec["vanishes"])


def test_imbalance_is_said_in_words(compared):
    warned = compared["warnings"]
    assert any(
        "AT Std-KD seed 42: the weighted 'kd' term dominates at the start (1.5e+04×, > 10×) "
        "and dominates at the end (40×, > 10×) relative to reconstruction" in w
        for w in warned
    )
    assert any(
        "CC Std-KD seed 42: the weighted 'kd' term vanishes at the start" in w for w in warned
    )
    assert not any("AT SFT-KD seed" in w for w in warned)  # balanced: no warning
    assert any("loss balance unknown for 1 distillation run(s)" in w for w in warned)
    text = compared["result"].paragraph
    assert "Loss balance is off in 2 distillation run(s): AT Std-KD seed 42" in text
    assert "reflect the loss scale, not the distillation method" in text
    assert any(
        s.startswith("loss balance phantom 4x: CC Std-KD") for s in compared["result"].summary
    )
