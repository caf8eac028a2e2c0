"""The Ray Train worker function: one rank of a (possibly 1-rank) DDP run of a stage chain.

Ray starts the process group (gloo on CPU, NCCL on GPU); :class:`raykd.train.loop.Trainer`
reads it. Every rank calls ``ray.train.report`` once per epoch (it is a barrier); rank 0 attaches
the checkpoint and is the only rank that talks to MLflow. On a restart after a worker failure,
``ray.train.get_checkpoint()`` holds the last reported epoch and training resumes from it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray.train
import torch
from ray.train import Checkpoint

from raykd.lines import line
from raykd.models.base import count_parameters
from raykd.orchestration.devices import rank_device, stage_device
from raykd.orchestration.identity import StageStore
from raykd.orchestration.messages import (
    ChainRequest,
    ChainState,
    FaultInjection,
    PlannedStage,
    StageResult,
)
from raykd.orchestration.node_copy import on_this_node, shared
from raykd.orchestration.stage_runs import log_eval, open_stage_run
from raykd.orchestration.tracking_repair import (
    COMPLETE_TAG,
    BestEffort,
    events,
    log_event,
    short_budget,
)
from raykd.tracking.schema import METRIC_PARAMS
from raykd.train.evaluate import evaluate_split, slice_count, write_json
from raykd.train.loop import Trainer
from raykd.train.stages import load_model

CHAIN_STATE = "chain.json"


def train_fn(config: dict[str, Any]) -> None:
    """Ray Train worker entry point: train the chain the runner dumped into ``config``."""
    request = ChainRequest.model_validate(config)  # the boundary: checked once, typed after
    rank = ray.train.get_context().get_world_rank()

    def report(metrics: dict[str, float], last_path: Path | None, stage: str) -> None:
        if rank == 0 and last_path is not None:
            with tempfile.TemporaryDirectory() as tmp:
                shutil.copy2(last_path, Path(tmp) / "last.pt")
                (Path(tmp) / CHAIN_STATE).write_text(ChainState(stage=stage).model_dump_json())
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)

    device = rank_device(request.use_gpu)  # a rank without its device fails here, clearly
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            run_chain(request, rank, report, Path(ckpt_dir), device)
    else:
        run_chain(request, rank, report, None, device)


def _agree(values: list[bool]) -> list[bool]:
    """Rank 0's view, on every rank: all ranks must skip and train the same stages."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [values]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return values


def run_chain(
    request: ChainRequest,
    rank: int,
    report: Callable[[dict[str, float], Path | None, str], None] | None,
    ray_checkpoint: Path | None,
    device: str = "auto",
) -> None:
    """Train each stage of the chain that has not finished, in order.

    After a worker failure (or a killed driver) the chain starts again: finished stages (their
    ``result.json`` exists) are skipped and the interrupted one resumes from Ray's checkpoint or
    from its own ``last.pt``.
    """
    store = StageStore(request.root)
    request = on_this_node(request, store)
    done = _agree([s.result_path.is_file() for s in request.stages])
    state = None  # the stage Ray's checkpoint belongs to (a restarted worker resumes it)
    if ray_checkpoint is not None and (ray_checkpoint / CHAIN_STATE).is_file():
        state = ChainState.model_validate_json((ray_checkpoint / CHAIN_STATE).read_text())
    # Rank 0's MLflow calls fail in seconds while the chain runs (a dead server costs a stage
    # seconds, not minutes per call); the process's settings are restored after it, so an
    # in-process trial's other MLflow calls keep the usual budget.
    tracked = rank == 0 and request.tracking_uri
    with short_budget() if tracked else contextlib.nullcontext():
        _run_stages(request, store, done, state, rank, report, ray_checkpoint, device)


def _run_stages(request, store, done, state, rank, report, ray_checkpoint, device) -> None:
    """The chain's unfinished stages in order (see :func:`run_chain`)."""
    created: dict[str, str] = {}  # MLflow runs opened in this chain, by stage name (rank 0)
    for stage, finished in zip(request.stages, done, strict=True):
        if finished:
            continue
        if stage.teacher_stage:  # trained earlier in this chain, perhaps on another node
            store.pull(stage.teacher_stage)
        if rank == 0:
            stage = _open_run(request, stage, created)
        if state is not None and state.stage == stage.name and ray_checkpoint is not None:
            resume: Path | None = ray_checkpoint / "last.pt"
        else:
            last = Path(stage.output_dir) / "last.pt"
            resume = last if last.is_file() else None
        if rank == 0:
            _announce_start(request, stage, resume is not None)
        # An object-store root: rank 0 shares each epoch's last.pt and metrics, so a stage whose
        # worker dies resumes from the store on whichever node retries it.
        share = rank == 0 and not store.storage.shared
        stage_report = None
        if report is not None or share:

            def stage_report(metrics, last_path, _name=stage.name, _share=share):
                if _share:
                    store.push(_name)
                if report is not None:
                    report(metrics, last_path, _name)

        run_training(request, stage, rank, stage_report, resume, device)
        shared(store, stage, rank)


def _open_run(request: ChainRequest, stage: PlannedStage, created: dict[str, str]) -> PlannedStage:
    """Rank 0: the stage with its MLflow run opened; without one when the server is down (it
    trains anyway and is repaired from its files later)."""
    try:
        return open_stage_run(request.tracking_uri, request.experiment, stage, created)
    except Exception as exc:
        mark = BestEffort(None, stage.output_dir, request.root, request.job, request.tracking_uri)
        mark.fail(exc)
        return stage.model_copy(update={"mlflow_run_id": None})


def _announce_start(request: ChainRequest, stage: PlannedStage, resuming: bool) -> None:
    """Rank 0: record the start (a second start under the same job is a restart: a worker
    died, Tune retried the trial; the job summary counts them) and say it on the console."""
    root, job = request.root, request.job
    if resuming and any(
        e["event"] == "stage_start" and e.get("stage") == stage.name for e in events(root, job)
    ):
        log_event(root, job, "stage_restart", stage=stage.name)
    log_event(root, job, "stage_start", stage=stage.name)
    what = stage.announce or f"stage {stage.name}"
    line(f"[raykd] {what}: {'resuming' if resuming else 'starting'}")


def run_training(
    request: ChainRequest,
    stage: PlannedStage,
    rank: int,
    report: Callable[[dict[str, float], Path | None], None] | None,
    resume_from: Path | None,
    device: str = "auto",
) -> None:
    """Train one stage on this rank; rank 0 logs to MLflow and finishes the stage.

    Shared by Ray Train workers and in-process runs (``local=True`` in the runner), so both
    paths train, log and evaluate identically.
    """
    torch.set_num_threads(max(1, request.threads))
    cfg = stage.stage
    cfg = cfg.model_copy(update={"device": stage_device(cfg.device, device)})
    run_id = stage.mlflow_run_id
    tracking = None
    if rank == 0 and run_id:
        # Best-effort: an MLflow outage never stalls or fails training (tracking_repair).
        tracking = BestEffort.open(
            request.tracking_uri, request.experiment, stage.output_dir, request.root, request.job
        )
    on_epoch = _EpochCallback(request.fault_injection, cfg.kind, rank, report, tracking, run_id)
    if tracking is not None and resume_from is not None:
        # Epochs an interrupted attempt already logged (it died before its checkpoint reached
        # Ray): trained again on resume, but each MLflow step is logged once.
        on_epoch.logged |= tracking.metric_steps(run_id, "train_loss")
    t0 = time.perf_counter()
    trainer = Trainer(
        cfg,
        Path(stage.output_dir),
        callbacks=[on_epoch],
        resume_from=resume_from,
        announce=stage.announce or None,
    )
    fresh = trainer.balance is None  # a resumed run logged its balance the first time
    balance = trainer.calibrate()  # every rank: the measurement is averaged over ranks
    if tracking is not None and fresh:
        log_balance(tracking, run_id, balance)
    if tracking is not None:
        log_compute_path(tracking, run_id, trainer.compute_params())
    result = trainer.fit()
    if rank == 0:
        finish_stage(cfg, trainer, result, tracking, run_id, request.eval_splits, started=t0)


class _EpochCallback:
    """Per epoch: log to MLflow (each step once), report to Ray, and (tests) die on cue."""

    def __init__(
        self, fault: FaultInjection | None, kind: str, rank: int, report, tracking, run_id
    ):
        self.fault, self.rank, self.report = fault, rank, report
        self.tracking, self.run_id = tracking, run_id
        self.inject = fault is not None and fault.kind in (None, kind)
        self.logged: set[int] = set()

    def __call__(self, epoch: int, metrics: dict[str, float], last_path: Path | None) -> None:
        if self.tracking is not None and epoch + 1 not in self.logged:
            self.tracking.log_metrics(self.run_id, metrics, step=epoch + 1)
        fault = self.fault
        due = self.inject and fault is not None and fault.kill_after_epoch == epoch + 1
        early = fault is not None and fault.when == "before_report"  # logged, no checkpoint yet
        if due and early:
            _die_once(fault, self.rank)
        if self.report is not None:
            self.report(metrics, last_path)
        if due and not early:
            _die_once(fault, self.rank)


def _die_once(fault: FaultInjection, rank: int) -> None:
    """Fault injection (tests): SIGKILL this rank once, like a preempted node or an OOM kill.
    ``when: before_report`` dies after the epoch is written and logged but before its
    checkpoint reaches Ray, so the restart resumes one epoch earlier than the files say."""
    if rank != fault.rank:
        return
    marker = Path(fault.marker)
    if not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)


def log_balance(tracking, run_id: str, balance: dict[str, Any]) -> None:
    """Resolved weights as params (``weights.<term>``, ``balance.rule``) and the ratios measured
    before training as ``train/ratio/<term>`` at step 0 (``train_ratio_<term>`` in MLflow)."""
    params: dict[str, Any] = {f"weights.{k}": v for k, v in balance["weights"].items()}
    params["balance.rule"] = balance["rule"]
    try:
        tracking.log_params(run_id, params)
    except Exception as exc:  # a retried stage logs the same params again; MLflow may refuse
        line(f"[raykd] could not log balance params: {exc}")
    ratios = {f"train/ratio/{k}": v for k, v in balance["ratios"].items()}
    if ratios:
        tracking.log_metrics(run_id, ratios, step=0)


def log_compute_path(tracking, run_id: str, params: dict[str, str]) -> None:
    """The resolved compute path as run params (how the result was computed).

    A stage resumed on a machine of another class cannot change a logged param: the new path
    goes to ``raykd.compute_resumed.*`` tags instead, so both are on record.
    """
    try:
        tracking.log_params(run_id, params)
    except Exception:  # MLflow refuses to overwrite a param with another value
        tracking.set_tags(run_id, {f"raykd.compute_resumed.{k[8:]}": v for k, v in params.items()})


def save_examples(model, trainer, split: str, out_dir: Path, n: int = 3) -> Path:
    """A few fixed slices (evenly spaced, first volume) for figures: no retraining later."""
    import numpy as np

    from raykd.train.evaluate import reconstruct_volume

    dataset = trainer.datasets[split]
    rec = reconstruct_volume(model, dataset, 0, trainer.device)
    idx = np.linspace(0, len(rec["target"]) - 1, min(n, len(rec["target"]))).round().astype(int)
    path = out_dir / f"{split}_examples.npz"
    np.savez_compressed(
        path,
        volume=dataset.volumes[0].key,
        slices=np.asarray(dataset.volumes[0].slice_ids)[idx],
        **{k: v[idx] for k, v in rec.items()},
    )
    return path


def finish_stage(
    cfg, trainer, result, tracking, run_id, splits, started: float | None = None
) -> StageResult:
    """Rank 0: evaluate the best checkpoint per volume, log artifacts, write result.json.

    Each split's report carries the zero-filled input's metrics on the same volumes and slices
    (the report's ZF row reads them); none of it enters the stage identity (the config does).
    """
    part = "teacher" if cfg.kind in ("teacher", "sft") else "student"
    model = load_model(result.best_checkpoint, part=part).to(trainer.device)
    summary = {
        split: _evaluate(cfg, model, trainer, result, tracking, run_id, split)
        for split in splits
        if split in trainer.datasets
    }
    record = StageResult(
        best_checkpoint=str(result.best_checkpoint),
        best_val_loss=result.best_val_loss,
        best_epoch=result.best_epoch,
        metrics=summary,
        lineage=result.lineage,
        compute=trainer.compute_params(),
        compute_s=time.perf_counter() - started if started else None,
        mlflow_run_id=run_id,
        **stage_times(started),  # the job's timeline reads them
    )
    if tracking is not None:
        params = count_parameters(model)
        tracking.log_metrics(run_id, {"best_val_loss": result.best_val_loss, METRIC_PARAMS: params})
        tracking.log_artifact(run_id, result.best_checkpoint, "checkpoints")
        tracking.log_artifact(run_id, result.output_dir / "config.yaml")
        if getattr(tracking, "failed", None) is None:  # every write of the stage went through
            tracking.set_tags(run_id, {COMPLETE_TAG: "1"})
        tracking.end_run(run_id, "FINISHED")  # now: the run's duration is the stage's
    record.write(result.output_dir)
    return record


def _evaluate(cfg, model, trainer, result, tracking, run_id, split: str) -> dict[str, float]:
    """One split's per-volume evaluation (file, MLflow, examples); its summary metrics."""
    report = evaluate_split(model, trainer.datasets[split], trainer.device)
    path = write_json(report, result.output_dir / f"eval_{split}.json")
    summary = {k: v[0] for k, v in report["summary"].items()}
    if split == "val" and "psnr" in summary:
        trainer.log(
            f"done: val PSNR {summary['psnr']:.2f} dB of the best epoch "
            f"({slice_count(report, split, cfg.data.max_slices_per_volume)})"
        )
    if tracking is not None:
        log_eval(tracking, run_id, split, report)
        tracking.log_artifact(run_id, path, "eval")
        examples = save_examples(model, trainer, split, result.output_dir)
        tracking.log_artifact(run_id, examples, "examples")
    return summary


def stage_times(started: float | None) -> dict[str, Any]:
    """When and where rank 0 ran this stage (epoch seconds, Ray node id, host, pid)."""
    import os
    import socket

    now = time.time()
    node = ""
    if ray.is_initialized():  # not when a test calls run_chain outside Ray
        node = ray.get_runtime_context().get_node_id() or ""
    return {
        "started_at": now - (time.perf_counter() - started) if started else None,
        "finished_at": now,
        "node_id": node,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
