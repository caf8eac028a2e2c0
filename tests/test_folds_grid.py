"""Cross-validation by subject end to end on the shared Sunnybrook subjects (tiny shapes): the
real grid job (real Ray, MLflow sqlite; stages trained in-process) with ``folds: 4``, each held-out
subject evaluated on all its slices, then ``raykd compare`` counting folds x seeds as units."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest

from raykd.plan.presets import load_preset
from raykd.plan.rows import grid_rows

TINY = {
    "folds": 4,
    "size": [32, 32],
    "max_slices_per_volume": 2,
    "channels": 4,
    "cascades": 2,
    "teacher_depth": 3,
    "student_depths": [2],
    "methods": ["at"],
    "seeds": 1,
    "epochs": {"teacher": 1, "sft": 1, "student": 1, "kd": 1},
    "rows": ["teacher", "student", "std_kd", "sft_kd"],
    "precision": "fp32",
}


@pytest.mark.ray
def test_four_folds_on_sunnybrook_train_and_report_subject_units(
    ray_session, shared_data, tmp_path, capsys
):
    from raykd.orchestration.grid import run_grid
    from raykd.orchestration.job import finish_job, start_job
    from raykd.report.compare import compare

    spec = load_preset("cpu", TINY)
    job = start_job("folds", {}, root=tmp_path, experiment="folds", local_train=True)
    rows = run_grid(spec, job)
    summary = finish_job(job, rows, quiet=True)
    assert len(rows) == len(grid_rows(spec)) == 4 * 4
    assert all(not r.error for r in rows), [r.error for r in rows]
    assert summary.stages_trained == 4 * 5  # teacher, SFT teacher, student, 2 KD per fold

    # Every subject is held out exactly once, on all of its slices.
    volumes = {p.stem: p for p in (shared_data / "sunnybrook").glob("*.h5")}
    tested = {}
    for stage in (tmp_path / "stages").iterdir():
        report_path = stage / "eval_test.json"
        if report_path.is_file() and stage.name.startswith("teacher-"):
            (vol,) = json.loads(report_path.read_text())["volumes"]
            tested[Path(vol["path"]).stem] = vol
    assert len(tested) == 4
    for name, vol in tested.items():
        with h5py.File(volumes[name], "r") as f:
            n = f["image"].shape[0]
        counts = {len(v) for v in vol.get("per_slice", {}).values()}
        assert counts == {n}, (name, counts, n)

    capsys.readouterr()
    compare(["folds"], out_dir=tmp_path / "cmp", tracking_uri=job.tracking.uri)
    paired = (tmp_path / "cmp" / "wilcoxon.md").read_text()
    # Subject-level units: 4 test subjects (patients SCD0000101 …), so no verdict is possible.
    assert "test subjects (4 subjects;" in paired and "4 folds × 1 seed" in paired
    assert "no verdict possible: 4 subjects" in paired and "| p adj |" in paired
    assert "better (" not in paired
    assert {v["subject"] for v in tested.values()} == {f"SCD0000{k}01" for k in range(1, 5)}
