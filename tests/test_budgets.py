"""Equal training budgets in every shipped preset, the job's warning when an override breaks
them, calibrated KD weights in presets, and the balance-ratio search."""

from __future__ import annotations

import time

import pytest

from raykd.errors import ConfigError
from raykd.kinds import EQUAL_BUDGET_ROWS, STUDENT_ROWS
from raykd.plan import Row, grid_rows, load_preset, preset_names, row_requests, stage_config

PRESETS = sorted(preset_names())


def _epochs(spec, row: Row) -> int:
    return row_requests(spec, row)[-1].cfg.optim.epochs


@pytest.mark.parametrize("name", PRESETS)
def test_every_student_row_gets_equal_epochs(name: str) -> None:
    spec = load_preset(name, {"rows": list(STUDENT_ROWS), "seeds": 1})
    assert spec.budget_warnings() == []
    rows = grid_rows(spec)
    student_epochs = {_epochs(spec, r) for r in rows if r.kind in EQUAL_BUDGET_ROWS}
    assert student_epochs == {spec.epochs.student}
    controls = [r for r in rows if r.kind == "equal_compute"]
    assert controls and all(_epochs(spec, c) == spec.epochs.sft + spec.epochs.kd for c in controls)
    # Default weighting of every KD row: calibrated to the preset's balance ratio.
    kd = next(r for r in rows if r.kind == "std_kd")
    cfg = stage_config(spec, kd, "kd")
    assert cfg.kd.weight is None and cfg.kd.balance is not None
    assert cfg.kd.balance.ratio == spec.kd_balance


def test_cpu_preset_budget() -> None:
    # Stage-epochs per seed, weighted by the measured fp32 per-slice costs on an AVX2 box
    # (D5C5 0.29 s, SFT 0.52 s, D3C5 0.10 s, KD 0.21 s; 72 slices): within the 90 minutes.
    spec = load_preset("cpu")
    e = spec.epochs
    per_seed = 72 * (
        0.29 * e.teacher
        + 0.52 * e.sft
        + 0.10 * (e.student + e.sft + e.kd)
        + 0.21 * e.kd * 2 * len(spec.methods)
    )
    assert per_seed * spec.seeds / 60 < 75  # + Ray start/stop, evaluation: < 90 min


def test_override_that_breaks_the_rule_is_reported(tmp_path, capsys) -> None:
    from raykd.orchestration.cluster import TrialResources
    from raykd.orchestration.identity import StageStore
    from raykd.orchestration.job import Job, finish_job
    from raykd.orchestration.runner import StageContext
    from raykd.tracking import Tracking

    spec = load_preset("smoke", {"epochs": {"teacher": 1, "sft": 1, "student": 3, "kd": 1}})
    warnings = spec.budget_warnings()
    assert len(warnings) == 1 and "3 epochs" in warnings[0]
    assert load_preset("smoke", {"rows": ["teacher", "student"]}).budget_warnings() == []

    tracking = Tracking(f"sqlite:///{tmp_path / 'm.db'}", "budgets", tmp_path / "art")
    run_id = tracking.start_run("job")
    resources = TrialResources(1, False, 1, 1, 1)
    ctx = StageContext(StageStore(tmp_path), tracking, resources, parent_run_id=run_id)
    job = Job("grid-smoke", tmp_path, ctx, tracking, run_id, time.time())
    summary = finish_job(job, [], warnings=warnings)
    assert summary.warnings == warnings
    assert f"WARNING: {warnings[0]}" in capsys.readouterr().out


def test_kd_weights_search_samples_the_balance_ratio() -> None:
    from raykd.plan import load_search, trial_row_and_spec

    for name in ("kd_weights", "kd_weights_extended"):
        search = load_search(name)
        assert "kd_weight_scale" not in search.params
        low, high = search.params["kd_balance"].loguniform
        default = load_preset(search.base_preset).kd_balance
        assert low < default < high  # around the presets' calibrated default
    base = load_preset("smoke", {"kd_weights": {"pkt": 5.0}})
    spec, row, overrides = trial_row_and_spec(search, base, {"method": "pkt", "kd_balance": 0.3})
    cfg = stage_config(spec, row, "kd", overrides)
    assert cfg.kd.weight is None and cfg.kd.balance.ratio == pytest.approx(0.3)
    with pytest.raises(ConfigError, match="not both"):
        params = {k: v.model_dump(exclude_none=True) for k, v in search.params.items()}
        load_search("kd_weights", {"params": {**params, "kd_weight_scale": {"choices": [1]}}})


def test_budget_scale_scales_the_lr_step_with_the_epochs() -> None:
    # The step falls at the same fraction of every stage's training at every budget; the 1×
    # stages are the plain grid's (same identities), so stored stages stay reusable.
    plain = load_preset("cpu", {"methods": ["at"], "seeds": 1})
    study = load_preset("cpu", {"methods": ["at"], "seeds": 1, "budget_scales": [1, 2, 4]})
    plain_ids = {q.stage_id for r in grid_rows(plain) for q in row_requests(plain, r)}
    fractions: dict[tuple[str, str], set[float]] = {}
    for row in grid_rows(study):
        for req in row_requests(study, row):
            optim = req.cfg.optim
            assert optim.step_size == round(40 * row.budget)
            key = (row.kind, req.cfg.kind)
            fractions.setdefault(key, set()).add(optim.step_size / optim.epochs)
            if row.budget == 1:
                assert req.stage_id in plain_ids
            else:
                assert req.stage_id not in plain_ids
    assert fractions and all(len(f) == 1 for f in fractions.values()), fractions
    # The 4× control (52 epochs) no longer passes a step the other rows never reach.
    control = next(r for r in grid_rows(study) if r.kind == "equal_compute" and r.budget == 4)
    cfg = row_requests(study, control)[-1].cfg
    assert cfg.optim.epochs == 52 and cfg.optim.step_size == 160
