"""Loss balance in the comparison: ratio metrics logged into a real sqlite MLflow store.

Contract with the trainer: ``train/ratio/<term>`` per stage run, step 0 before training, step k
= epoch k's mean (``raykd.tracking`` stores it as ``train_ratio_<term>``; one run here logs the
raw ``train/ratio/`` name through MLflow's client, so both spellings are read).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from raykd.tracking import Tracking
from tests.report_helpers import cell as _cell
from tests.report_helpers import compare_quietly, eval_json, log_stage, stage_tags
from tests.report_helpers import section as _section

VOLUMES = ("vol_c", "vol_d")

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

    root = tmp_path_factory.mktemp("balance")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracking = Tracking(uri, "balance", artifact_root=root / "artifacts")
    rng = np.random.default_rng(0)
    for row, method, ratios in RUNS:
        report = eval_json(30 + rng.normal(0, 1, (2, 4)), VOLUMES)
        run = log_stage(tracking, root / "tmp", stage_tags(row, method), {"val": report})
        for term, values in (ratios or {}).items():
            for step, value in enumerate(values):
                if row == "sft_teacher":  # the contract's own spelling, straight into MLflow
                    MlflowClient(uri).log_metric(run, f"train/ratio/{term}", value, step=step)
                else:
                    tracking.log_metrics(run, {f"train/ratio/{term}": value}, step=step)
        tracking.end_run(run)
    return compare_quietly(["balance"], uri, root / "out", log_to_mlflow=False)


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
        s.startswith("loss balance phantom 4x: CC Std-KD") for s in compared["result"].summary_lines
    )
