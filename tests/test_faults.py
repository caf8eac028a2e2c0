"""Faults that must leave nothing behind: damaged checkpoints of finished stages are never reused.

Stages train in-process (the runner's ``local`` path: the same code a Ray Train worker runs)
on the tiny fixture volumes, so each case takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raykd.orchestration.cluster import TrialResources
from raykd.orchestration.identity import StageStore
from raykd.orchestration.runner import StageContext, StageRequest, ensure_stages
from raykd.train.config import load_config
from tests.conftest import tiny_overrides


def _requests(data: Path) -> tuple[StageRequest, StageRequest]:
    def cfg(kind: str, **extra: str):
        over = {"optim.epochs": "2", **extra}
        return load_config(None, tiny_overrides(data, Path("unused"), kind, **over))

    teacher = StageRequest(cfg("teacher"))
    kd = StageRequest(
        cfg("kd", **{"kd.method": "at", "teacher_checkpoint": "set-by-the-runner"}),
        teacher.stage_id,
    )
    return teacher, kd


def _usage(store: StageStore, job: str) -> dict[str, bool]:
    return {sid: how == "trained" for how, sids in store.uses(job).items() for sid in sids}


@pytest.mark.parametrize("name", ["best.pt", "last.pt"])
def test_damaged_checkpoint_is_trained_again_not_reused(tiny_data, tmp_path, capsys, name):
    store = StageStore(tmp_path / "store")
    teacher, kd = _requests(tiny_data)

    def ctx(job: str) -> StageContext:
        return StageContext(store, None, TrialResources(1, False, 1, 1, 1), job, local=True)

    first = ensure_stages([teacher, kd], ctx("job1"))
    assert first[teacher.stage_id].checkpoints.keys() == {"best.pt", "last.pt"}
    path = Path(first[teacher.stage_id].output_dir) / name
    with open(path, "r+b") as f:  # a copy cut short, a disk that filled up
        f.truncate(1000)
    capsys.readouterr()
    again = ensure_stages([teacher, kd], ctx("job2"))
    err = capsys.readouterr().err
    assert f"WARNING: checkpoint {path} is damaged" in err, err
    # The teacher trained again from scratch (same seed, fp32: the same result); the KD stage,
    # whose identity names the teacher's identity, is reused.
    assert _usage(store, "job2") == {teacher.stage_id: True, kd.stage_id: False}
    rec = again[teacher.stage_id]
    assert rec.best_val_loss == pytest.approx(first[teacher.stage_id].best_val_loss, rel=1e-5)
    assert (Path(rec.output_dir) / name).stat().st_size > 1000
    aside = list((tmp_path / "store" / "stages").glob(f"{teacher.stage_id}.damaged-*"))
    assert len(aside) == 1 and (aside[0] / name).stat().st_size == 1000  # evidence kept
    # Intact now: a third run reuses everything without a warning.
    ensure_stages([teacher, kd], ctx("job3"))
    assert "WARNING" not in capsys.readouterr().err
    assert _usage(store, "job3") == {teacher.stage_id: False, kd.stage_id: False}


def test_stage_stored_without_digests_gets_a_structural_check(tiny_data, tmp_path):
    """Stages finished before digests were recorded: a truncated zip archive is caught too."""
    store = StageStore(tmp_path / "store")
    teacher, _ = _requests(tiny_data)
    ctx = StageContext(store, None, TrialResources(1, False, 1, 1, 1), "job", local=True)
    record = ensure_stages([teacher], ctx)[teacher.stage_id]
    marker = store.stage_dir(teacher.stage_id) / "done.json"
    old = json.loads(marker.read_text())
    old.pop("checkpoints")
    marker.write_text(json.dumps(old))
    assert store.get_intact(teacher.stage_id)[0] is not None  # intact: reused as before
    best = Path(record.output_dir) / "best.pt"
    best.write_bytes(best.read_bytes()[:-200])
    intact, problem = store.get_intact(teacher.stage_id)
    assert intact is None and problem.startswith(f"checkpoint {best} is damaged")
    assert store.get(teacher.stage_id) is None  # moved aside: the next request trains it


def test_error_summary_keeps_the_root_cause_whole():
    from raykd.errors import error_summary

    long_path = "/very/long/" + "x" * 400 + "/stages/teacher-abc/best.pt"
    text = (
        "RaykdError: stage chain starting at kd-1 failed after 2 retries: Training failed due to "
        "worker errors:\n[Rank 0 Error Snippet]:\nTraceback (most recent call last):\n"
        '  File "/site-packages/raykd/train/loop.py", line 80, in __init__\n'
        f"raykd.errors.CheckpointError: checkpoint {long_path}: truncated (PytorchStreamReader "
        "failed reading zip archive)\n"
    )
    assert error_summary(text) == (
        f"CheckpointError: checkpoint {long_path}: truncated (PytorchStreamReader failed reading "
        "zip archive)"
    )
    assert error_summary(ValueError("bad value\nmore")) == "bad value"
