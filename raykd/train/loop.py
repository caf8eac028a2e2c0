"""One trainer for every stage (teacher | sft | student | kd).

Runs in one process, or as one rank of a ``torch.distributed`` group (the Ray layer starts the
group; this module only reads it). Loss terms and validation sums stay on the device during an
epoch (one host sync per epoch, not per step). Rank 0 writes checkpoints atomically:
``last.pt`` every epoch (resume) and ``best.pt`` on the best validation loss (model selection).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from raykd.data.dataset import SliceDataset
from raykd.data.sampling import ShardedSampler
from raykd.data.sources import build_datasets
from raykd.data.transforms import degrade
from raykd.errors import CheckpointError
from raykd.lines import line
from raykd.models.taps import FeatureTaps
from raykd.train import balance
from raykd.train.checkpoint import (
    check_arch,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from raykd.train.config import StageConfig, save_config
from raykd.train.distributed import dist_info, rank_batch, uneven_epoch_note
from raykd.train.precision import autocast, configure_cuda, pick_device, resolve_path
from raykd.train.rundir import (
    METRICS_FILE,
    append_record,
    check_resume_config,
    check_run_dir,
    drop_records_after,
    start_run_dir,
)
from raykd.train.seeding import seed_everything, seed_worker
from raykd.train.stages import build_stage
from raykd.train.validation import validate_stage

# Called after every epoch with (epoch, metrics, path of last.pt or None off rank 0).
EpochCallback = Callable[[int, dict[str, float], Path | None], None]


@dataclass
class StageResult:
    output_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_epoch: int
    best_val_loss: float
    history: list[dict[str, float]] = field(default_factory=list)
    lineage: dict[str, Any] = field(default_factory=dict)


class Trainer:
    def __init__(
        self,
        cfg: StageConfig,
        output_dir: str | Path | None = None,
        callbacks: list[EpochCallback] | None = None,
        resume_from: str | Path | None = None,
        datasets: dict[str, SliceDataset] | None = None,
        announce: str | None = None,
    ) -> None:
        self.cfg = cfg
        # How log lines name the stage: a job's "stage 3/14  <run name> (kd)", else the kind.
        self.announce = announce
        self.output_dir = Path(output_dir or cfg.output_dir)
        self.callbacks = callbacks or []
        self.rank, self.world = dist_info()
        # data.batch_size is the *global* batch, dealt over the ranks (ShardedSampler), so a
        # stage's result does not depend on how many workers trained it, and the stage identity
        # (which holds the batch size but not the world size) stays true under reuse.
        self.rank_batch = rank_batch(cfg.data.batch_size, self.world)
        resuming = resume_from is not None or (cfg.resume and self.last_path.is_file())
        check_run_dir(cfg.to_dict(), self.output_dir, resuming)  # never mix two configs' runs
        self.device = pick_device(cfg.device)  # a GPU with its index: the one Ray assigned
        self.path = resolve_path(cfg.precision, cfg.channels_last, self.device)
        self.precision = self.path.precision
        configure_cuda(self.path, self.device)  # CUDA only: current device, TF32, autotuning
        self.channels_last = self.path.channels_last
        seed_everything(cfg.seed)  # same init on every rank; DDP also broadcasts rank 0's
        self.datasets = datasets if datasets is not None else build_datasets(cfg.data)
        self.stage, self.lineage = build_stage(cfg)
        self.stage.to(self.device)
        self._pretrain_method(resume_from)
        if self.channels_last:
            cast(Any, self.stage).to(memory_format=torch.channels_last)  # kwarg not in stubs
        params = [p for p in self.stage.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(
            params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=cfg.optim.step_size, gamma=cfg.optim.gamma
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.train_module: torch.nn.Module = self.stage
        if self.world > 1:
            # DDP reduces only parameters with requires_grad, exactly the optimised set above: a
            # stage's parameters without a gradient (SFT's S1, FT's pre-trained paraphrasers) are
            # frozen by the stage, so every step gives every reduced parameter a gradient and
            # find_unused_parameters (a graph walk per step) is not needed.
            self.train_module = DistributedDataParallel(
                self.stage, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if cfg.compile:
            self.train_module = cast(torch.nn.Module, torch.compile(self.train_module))  # a Module
        self.start_epoch = 0
        self.best_val = math.inf
        self.best_epoch = -1
        self.history: list[dict[str, float]] = []
        # Set by calibrate() before training (or restored on resume): rule, weights, ratios.
        self.balance: dict[str, Any] | None = None
        self._resume(resume_from)

    # ---- checkpoints -------------------------------------------------------------------
    @property
    def last_path(self) -> Path:
        return self.output_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.output_dir / "best.pt"

    def _payload(self, epoch: int, full: bool) -> dict[str, Any]:
        model = self.stage.saved_model
        payload: dict[str, Any] = {
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "arch": model.arch,
            "kind": self.cfg.kind,
            "epoch": epoch,
            "best_val_loss": self.best_val,
            "best_epoch": self.best_epoch,
            "config": json.dumps(self.cfg.to_dict()),
            "lineage": json.dumps(self.lineage),
            "balance": json.dumps(self.balance),
        }
        if full:
            payload.update(
                stage=self.stage.state_dict(),
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(),
                scaler=self.scaler.state_dict(),
                rng=rng_state(self.device),
                history=json.dumps(self.history),
            )
        return payload

    def compute_params(self) -> dict[str, str]:
        """How this stage computed: the resolved path plus the world size and both batch sizes
        (logged as ``compute.*`` params and kept in ``result.json``)."""
        return {
            **self.path.as_params(),
            "compute.world_size": str(self.world),
            "compute.global_batch": str(self.cfg.data.batch_size),
            "compute.rank_batch": str(self.rank_batch),
        }

    def _resume(self, resume_from: str | Path | None) -> None:
        path = Path(resume_from) if resume_from else None
        if path is None and self.cfg.resume and self.last_path.is_file():
            path = self.last_path
        if path is None:
            return
        ckpt = load_checkpoint(path, map_location="cpu")
        check_arch(ckpt, self.stage.saved_model.arch, path)
        check_resume_config(ckpt, self.cfg.to_dict(), path)
        if "optimizer" not in ckpt or ckpt.get("kind") != self.cfg.kind:
            raise CheckpointError(
                f"checkpoint {path}: cannot resume a '{self.cfg.kind}' run from it (kind "
                f"{ckpt.get('kind')!r}, resumable: {'optimizer' in ckpt})"
            )
        self.stage.load_state_dict(ckpt["stage"], strict=True)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"], self.device)
        self.start_epoch = int(ckpt["epoch"]) + 1
        self.best_val = float(ckpt["best_val_loss"])
        self.best_epoch = int(ckpt["best_epoch"])
        self.history = json.loads(ckpt["history"])
        if self.rank == 0:
            drop_records_after(self.output_dir / METRICS_FILE, self.start_epoch)
        if ckpt.get("balance") and json.loads(ckpt["balance"]):
            # The calibrated weights of the interrupted run, not a new measurement.
            self.balance = json.loads(ckpt["balance"])
            self.stage.weights.update(self.balance["weights"])
        self._log(f"resumed from {path} at epoch {self.start_epoch}")

    def _pretrain_method(self, resume_from: str | Path | None) -> None:
        """A KD method's step before distillation (factor transfer's paraphraser).

        Runs before the optimiser and DDP exist, so the parts it freezes are neither optimised
        nor expected to get gradients. Every rank runs it on the same unshuffled training data in
        batches of the *global* batch size, so the result is the one a single rank would get
        (DDP then broadcasts rank 0's anyway). A resumed run takes the pre-trained state from
        its checkpoint instead (``steps=0`` only freezes).
        """
        method = getattr(self.stage, "method", None)
        if method is None or not method.needs_pretraining:
            return
        resuming = resume_from is not None or (self.cfg.resume and self.last_path.is_file())
        steps = 0 if resuming else int(getattr(method, "pretrain_steps", 0))
        teacher = self.stage.teacher
        loader = self._loader(self.datasets["train"], batch_size=self.cfg.data.batch_size)

        def features():
            for sample in loader:
                x, y, mask, _ = self._batch(sample)
                with torch.no_grad(), FeatureTaps(teacher, method.teacher_taps) as taps:
                    teacher(x, y, mask)
                yield {k: v.float() for k, v in taps.features.items()}

        stats = method.pretrain(features, steps=steps)
        if steps:
            self.lineage["kd_pretrain"] = stats
            self._log(f"{method.name}: pre-trained for {steps} steps {stats}")

    def calibrate(self) -> dict[str, Any]:
        """Before training (every rank): measure the loss terms, resolve calibrated weights and
        the step-0 ratios (:mod:`raykd.train.balance`). Idempotent; a resumed run keeps its own.
        """
        if self.balance is None:
            self.balance = balance.calibrate(self)
            self.lineage["balance"] = self.balance
        return self.balance

    # ---- loops ---------------------------------------------------------------------------
    def log(self, text: str) -> None:
        """One line on rank 0's stderr, prefixed so a job's console keeps it (Ray's are hidden)."""
        if self.rank == 0:
            prefix = f"[raykd] {self.announce}" if self.announce else f"[raykd {self.cfg.kind}]"
            line(f"{prefix} {text}")  # logging: Ray Train patches print() (each line twice)

    _log = log

    def _batch(self, sample) -> tuple[torch.Tensor, ...]:
        target = sample.target.to(self.device, non_blocking=True)
        mask = sample.mask.to(self.device, non_blocking=True)
        zero_filled, y = degrade(target, mask, self.cfg.data.sr)
        if self.channels_last:
            zero_filled = zero_filled.contiguous(memory_format=torch.channels_last)
        return zero_filled, y, mask, target

    def _loader(self, dataset, sampler=None, batch_size=None) -> DataLoader:
        workers = self.cfg.data.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size or self.rank_batch,
            sampler=sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            worker_init_fn=seed_worker if workers else None,
        )

    def step(
        self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One optimisation step; returns the total loss and its named terms (on device)."""
        with autocast(self.device, self.precision):
            terms = self.train_module(x, y, mask, target)
        weights = self.stage.weights
        loss = sum(weights[k] * v.float() for k, v in terms.items())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss, terms

    def train_epoch(self, epoch: int, loader: DataLoader) -> dict[str, float]:
        self.train_module.train()
        sums: dict[str, torch.Tensor] = {}
        steps = 0
        limit = self.cfg.optim.max_steps_per_epoch
        total = min(len(loader), limit) if limit else len(loader)
        bar = tqdm(
            total=total,
            desc=f"{self.cfg.kind} epoch {epoch + 1}/{self.cfg.optim.epochs}",
            disable=not (self.cfg.progress and self.rank == 0),
            leave=False,
            file=sys.stderr,
        )
        for sample in loader:
            if steps >= total:
                break
            loss, terms = self.step(*self._batch(sample))
            for k, v in {"loss": loss, **terms}.items():
                v = v.detach().float()
                sums[k] = sums[k] + v if k in sums else v
            steps += 1
            bar.update(1)
        bar.close()
        self.scheduler.step()
        stacked = torch.stack([sums[k] for k in sums]) / max(steps, 1)
        if self.world > 1:
            dist.all_reduce(stacked)
            stacked /= self.world
        values = stacked.tolist()  # the epoch's single host sync
        return {f"train/{k}": v for k, v in zip(sums, values, strict=True)}

    def validate(self) -> dict[str, float]:
        """``val/loss`` and ``val/psnr`` (:func:`raykd.train.validation.validate_stage`)."""
        return validate_stage(
            self.stage,
            self.datasets["val"],
            self._loader,
            self._batch,
            self.device,
            self.precision,
            self.rank,
            self.world,
        )

    def fit(self) -> StageResult:
        cfg = self.cfg
        if self.rank == 0:
            start_run_dir(cfg.to_dict(), self.output_dir, fresh=self.start_epoch == 0)
            save_config(cfg, self.output_dir / "config.yaml")
        train_set = self.datasets["train"]
        sampler = ShardedSampler(len(train_set), self.rank, self.world, shuffle=True, seed=cfg.seed)
        loader = self._loader(train_set, sampler)
        self._log(
            f"{len(train_set)} train / {len(self.datasets['val'])} val slices, world size "
            f"{self.world}, global batch {cfg.data.batch_size} ({self.rank_batch} per rank), "
            f"epochs {self.start_epoch + 1}..{cfg.optim.epochs}; " + self.path.describe()
        )
        if note := uneven_epoch_note(len(train_set), self.world):
            self._log(note)
        self.calibrate()
        for epoch in range(self.start_epoch, cfg.optim.epochs):
            t0 = time.perf_counter()
            sampler.set_epoch(epoch)
            train_set.set_epoch(epoch)  # fastMRI masks with mask.per_epoch: a fresh mask
            metrics = self._epoch(epoch, loader, t0)
            for cb in self.callbacks:
                cb(epoch, metrics, self.last_path if self.rank == 0 else None)
        return StageResult(
            output_dir=self.output_dir,
            best_checkpoint=self.best_path,
            last_checkpoint=self.last_path,
            best_epoch=self.best_epoch,
            best_val_loss=self.best_val,
            history=self.history,
            lineage=self.lineage,
        )

    def _epoch(self, epoch: int, loader: DataLoader, t0: float) -> dict[str, float]:
        """Train and validate one epoch, then record it: history, checkpoints and
        ``metrics.jsonl`` (rank 0), one log line."""
        cfg = self.cfg
        metrics = self.train_epoch(epoch, loader)
        ratios = balance.epoch_ratios(metrics, self.stage.weights, balance.reference_term(cfg.kind))
        metrics.update(ratios)
        for warning in balance.ratio_warnings(ratios, self.stage.weights):
            self._log(f"epoch {epoch + 1}: {warning}")
        metrics.update(self.validate())
        metrics.update(
            epoch=epoch + 1,
            lr=self.optimizer.param_groups[0]["lr"],
            epoch_time_s=time.perf_counter() - t0,
        )
        improved = metrics["val/loss"] < self.best_val
        if improved:
            self.best_val, self.best_epoch = metrics["val/loss"], epoch
        self.history.append(metrics)
        if self.rank == 0:
            if improved:
                save_checkpoint(self.best_path, self._payload(epoch, full=False))
            save_checkpoint(self.last_path, self._payload(epoch, full=True))
            append_record(self.output_dir, metrics)
        self._log(
            f"epoch {epoch + 1}/{cfg.optim.epochs} loss {metrics['train/loss']:.4f} "
            f"val L1 {metrics['val/loss']:.4f} val PSNR {metrics['val/psnr']:.2f} dB"
            f"{' *' if improved else ''} ({metrics['epoch_time_s']:.1f}s)"
        )
        return metrics


def train_stage(cfg: StageConfig, **kwargs) -> StageResult:
    return Trainer(cfg, **kwargs).fit()
