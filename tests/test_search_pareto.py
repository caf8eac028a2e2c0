"""A search over two objectives (PSNR up, parameters down) runs to its Pareto front.

Per-epoch results carry only Train's keys (``val/psnr``...), so a trial whose objectives include
``student_params`` must not stream them: Tune refuses a result without the searcher's metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import tiny_grid


@pytest.mark.ray
def test_two_objective_search_reaches_its_pareto_front(ray_session, tiny_data, tmp_path):
    from raykd.orchestration.job import finish_job, start_job
    from raykd.orchestration.search import run_search, search_rows
    from raykd.plan.search_space import SearchSpec

    search = SearchSpec.model_validate(
        {
            "name": "pareto-test",
            "row": "std_kd",
            "num_samples": 2,
            "objectives": [
                {"metric": "val_psnr", "mode": "max"},
                {"metric": "student_params", "mode": "min"},
            ],
            "scheduler": {"type": "none"},
            "params": {"student_depth": {"choices": [2, 3]}},
        }
    )
    job = start_job("search-pareto", {}, root=tmp_path, experiment="pareto", local_train=True)
    out = run_search(search, tiny_grid(tiny_data), job, resume=False)
    summary = finish_job(job, search_rows(out), quiet=True)
    assert [t.error for t in out.trials] == [None, None]
    assert all(t.report is not None and t.report.student_params > 0 for t in out.trials)
    assert out.best is None and out.pareto and all(t in out.trials for t in out.pareto)
    # The job summary file lists each trial with the KD runs it trained (the report follows them).
    rows = json.loads(Path(summary.summary_file).read_text())["rows"]
    assert [len(r["stage_run_ids"]) for r in rows] == [1, 1]
