"""The ``complex_smoke`` preset end to end: every row on complex (synthetic-phase) data through
the real grid job (real Ray, MLflow sqlite; stages trained in-process), then ``raykd compare``
reads the store like any other grid's."""

from __future__ import annotations

import pytest

from raykd.plan.presets import load_preset
from raykd.plan.rows import grid_rows


def test_complex_smoke_plans_every_row_on_complex_data():
    spec = load_preset("complex_smoke")
    rows = grid_rows(spec)
    assert {r.kind for r in rows} == set(spec.rows)
    from raykd.plan.stages import row_requests

    for row in rows:
        for request in row_requests(spec, row):
            assert request.cfg.data.complex and request.cfg.data.source == "mni152_complex"


@pytest.mark.ray
def test_complex_smoke_grid_trains_and_compares(ray_session, tmp_path, monkeypatch):
    from raykd.orchestration.grid import run_grid
    from raykd.orchestration.job import finish_job, start_job
    from raykd.report.compare import compare

    spec = load_preset("complex_smoke")
    job = start_job("complex-smoke", {}, root=tmp_path, experiment="cx", local_train=True)
    rows = run_grid(spec, job)
    summary = finish_job(job, rows)
    assert len(rows) == len(grid_rows(spec)) == 14
    assert all(r.ok and r.psnr > 0 for r in rows)
    assert summary.stages_trained == 14
    # The registered best student is an exported (pt2) network on the packed complex input.
    import mlflow.pytorch
    import torch

    monkeypatch.setenv("MLFLOW_TRACKING_URI", job.tracking.uri)
    mlflow.set_tracking_uri(job.tracking.uri)
    model = mlflow.pytorch.load_model(f"models:/{summary.registered_model.name}@champion")
    assert model(torch.rand(2, 5, 64, 64)).shape == (2, 2, 64, 64)

    result = compare(["cx"], out_dir=tmp_path / "cmp", tracking_uri=job.tracking.uri)
    table = (tmp_path / "cmp" / "table_1.md").read_text()
    assert "## mni152_complex 4x" in table
    for label in ("| ZF |", "| Teacher |", "| Student |", "| AT |", "| CC |", "| SP |"):
        assert label in table
    assert "—" not in table.split("## mni152_complex 4x")[1]  # no missing cell
    assert (tmp_path / "cmp" / "figures" / "reconstructions.png").is_file()
    assert result.files["table_1"] == (tmp_path / "cmp" / "table_1.md").resolve()
