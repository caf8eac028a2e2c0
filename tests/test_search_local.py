"""Small searches train a trial's stages in the trial's process (no Ray Train start-up)."""

from __future__ import annotations

from raykd.orchestration.cluster import TrialResources
from raykd.orchestration.identity import StageStore
from raykd.orchestration.job import start_job, trial_failure_config, tune_trainable
from raykd.orchestration.runner import StageContext


def _ctx(tmp_path, workers: int, gpu: bool, local: bool) -> StageContext:
    res = TrialResources(workers, gpu, 2, 1, 2)
    return StageContext(StageStore(tmp_path), None, res, local=local)


def _trial(config):  # pragma: no cover - never run, only wrapped
    return None


def test_in_trial_stages_reserve_the_workers_cpus(tmp_path):
    local = tune_trainable(_trial, _ctx(tmp_path, 1, False, True))
    assert local._resources.required_resources["CPU"] == 2  # the trial trains: it holds them
    remote = tune_trainable(_trial, _ctx(tmp_path, 1, False, False))
    assert remote._resources.required_resources.get("CPU", 0) == 0  # Train workers hold them
    assert trial_failure_config(_ctx(tmp_path, 1, False, True)).max_failures == 2
    assert trial_failure_config(_ctx(tmp_path, 1, False, False)).max_failures == 0


def test_auto_trains_in_trial_only_for_single_cpu_workers(ray_session, tmp_path):
    job = start_job("s", {}, root=tmp_path / "a", experiment="s", local_train="auto")
    assert job.ctx.local and not job.resources.use_gpu and job.resources.workers == 1
    job.tracking.end_run(job.run_id)
    ddp = start_job("s", {}, root=tmp_path / "b", experiment="s", local_train="auto", workers=2)
    assert not ddp.ctx.local  # DDP stages need Ray Train's worker group
    ddp.tracking.end_run(ddp.run_id)
