"""Cross-validation by subject, budget studies and held-out test volumes in full (plan side)."""

from __future__ import annotations

import pytest

from raykd.errors import ConfigError
from raykd.plan.budgets import Epochs
from raykd.plan.folds import fold_split
from raykd.plan.presets import load_preset
from raykd.plan.rows import grid_rows, trial_groups
from raykd.plan.stages import row_requests, stage_config
from tests.conftest import tiny_grid

SUBJECTS = ["a", "b", "c", "d"]


def test_every_subject_tests_once_and_roles_never_overlap():
    splits = [fold_split("ds", SUBJECTS, k, 4, None) for k in range(4)]
    assert [s.test for s in splits] == [["a"], ["b"], ["c"], ["d"]]
    assert [s.val for s in splits] == [["b"], ["c"], ["d"], ["a"]]  # the next one, cyclically
    for s in splits:
        assert sorted(s.train + s.val + s.test) == SUBJECTS
        assert len(s.train) == 2 and not set(s.train) & set(s.val + s.test)


def test_fixed_test_set_stays_out_and_folds_rotate_validation():
    splits = [fold_split("ds", SUBJECTS, k, 3, ["d"]) for k in range(3)]
    assert all(s.test == ["d"] for s in splits)
    assert [s.val for s in splits] == [["a"], ["b"], ["c"]]
    assert all("d" not in s.train for s in splits)


@pytest.mark.parametrize(
    ("volumes", "folds", "test", "words"),
    [
        (["a", "b"], 2, None, "2 subject(s)"),
        (SUBJECTS, 5, None, "5 folds need at least 5"),
        (["a", "b", "c"], 3, ["c"], "outside the test set"),
    ],
)
def test_impossible_folds_are_refused_in_one_line(volumes, folds, test, words):
    with pytest.raises(ConfigError) as err:
        fold_split("ds", volumes, 0, folds, test)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_folds_of_a_folder_dataset_are_its_volumes(tiny_data):
    spec = tiny_grid(tiny_data, folds=4, rows=["teacher", "student", "sft_kd"])
    rows = grid_rows(spec)
    assert sorted({r.fold for r in rows}) == [0, 1, 2, 3]
    tests = set()
    for fold in range(4):
        row = next(r for r in rows if r.fold == fold and r.kind == "sft_kd")
        assert f"/f{fold}/" in row.label
        reqs = row_requests(spec, row)
        data = reqs[-1].cfg.data
        assert len(data.train) == 2 and len(data.val) == 1 and len(data.test) == 1
        assert reqs[-1].tags["raykd.fold"] == str(fold)
        assert reqs[0].cfg.data == data  # the SFT teacher learns on the fold's split too
        tests.add(data.test[0])
    assert tests == {"vol0", "vol1", "vol2", "vol3"}
    # One trial per fold and seed; every fold is its own set of stages.
    assert len(trial_groups(spec.model_copy(update={"trial_unit": "seed"}), rows)) == 4
    ids = {row_requests(spec, r)[0].stage_id for r in rows if r.kind == "teacher"}
    assert len(ids) == 4


def test_folds_refused_at_load_for_a_dataset_too_small_or_of_one_subject():
    with pytest.raises(ConfigError, match="folds: dataset 'sunnybrook'"):
        load_preset("cpu", {"folds": 5})
    with pytest.raises(ConfigError, match="one subject"):  # MNI152's slabs are one brain
        load_preset("smoke", {"folds": 2})


def test_budget_scales_every_stage_and_keeps_equal_compute(tiny_data):
    assert Epochs(teacher=10, sft=8, student=5, kd=5).scaled(2) == Epochs(
        teacher=20, sft=16, student=10, kd=10
    )
    spec = tiny_grid(
        tiny_data,
        budget_scales=[1, 4],
        epochs={"teacher": 3, "sft": 2, "student": 1, "kd": 1},
        rows=["student", "equal_compute", "sft_kd"],
    )
    rows = grid_rows(spec)
    at = {(r.budget, r.kind): row_requests(spec, r) for r in rows}
    assert at[(4, "student")][-1].cfg.optim.epochs == 4
    assert at[(4, "equal_compute")][-1].cfg.optim.epochs == 4 * 2 + 4 * 1  # scaled SFT + KD
    assert at[(4, "sft_kd")][0].cfg.optim.epochs == 8  # its SFT teacher
    assert at[(1, "equal_compute")][-1].cfg.optim.epochs == 3
    assert at[(4, "sft_kd")][-1].tags["raykd.budget"] == "4"
    assert "raykd.budget" not in at[(1, "sft_kd")][-1].tags
    assert "/3x/b4/s42/" in next(r for r in rows if r.budget == 4).label
    # Budget 1 of a study is the plain grid: the same stages, reused across studies.
    plain = tiny_grid(tiny_data, epochs={"teacher": 3, "sft": 2, "student": 1, "kd": 1})
    row = next(r for r in rows if r.budget == 1 and r.kind == "sft_kd")
    assert row_requests(spec, row)[-1].stage_id == row_requests(plain, row)[-1].stage_id


def test_test_volumes_in_full_unless_limited(tiny_data):
    from raykd.data.sources import build_datasets

    spec = tiny_grid(tiny_data, max_slices_per_volume=2, test=["vol3"])
    row = grid_rows(spec)[0]
    data = stage_config(spec, row, "teacher").data
    assert data.test_slices is None
    sets = build_datasets(data.model_copy(update={"val": ["vol2"], "train": ["vol0", "vol1"]}))
    assert len(sets["val"]) == 2 and len(sets["test"]) == 6  # 6-slice fixture volumes
    limited = stage_config(spec.model_copy(update={"test_slices": 3}), row, "teacher").data
    assert len(build_datasets(limited.model_copy(update={"val": ["vol2"]}))["test"]) == 3
    # The limit is part of what the stage reports, so of its identity; its default is not.
    ids = {
        row_requests(s, row)[0].stage_id for s in (spec, spec.model_copy(update={"test_slices": 3}))
    }
    assert len(ids) == 2
