"""The validation metrics every stage selects its checkpoint by: mean slice L1 and volume PSNR,
over equal-length shards of the validation set, reduced over DDP ranks."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch.utils.data import Subset

from raykd.data.dataset import SliceDataset
from raykd.data.sampling import validation_shard
from raykd.data.transforms import magnitude
from raykd.train.precision import autocast


class Predictor(Protocol):
    """What validation uses of a stage (:class:`raykd.train.stages.StageModule`)."""

    def eval(self) -> Any: ...
    def predict(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor: ...


@torch.no_grad()
def validate_stage(
    stage: Predictor,
    dataset: SliceDataset,
    make_loader: Callable[[Subset], Iterable],
    prepare: Callable[[object], tuple[torch.Tensor, ...]],
    device: torch.device,
    precision: str,
    rank: int = 0,
    world: int = 1,
) -> dict[str, float]:
    """``val/loss`` (mean slice L1) and ``val/psnr`` of ``stage.predict`` on ``dataset``.

    ``make_loader`` turns this rank's shard into batches, ``prepare`` a batch into
    ``(x, y, mask, target)`` on ``device`` (the trainer's own, so validation sees exactly the
    inputs training does). ``val/psnr`` is the fastMRI volume PSNR (peak = the volume's target
    max, MSE over all its voxels) averaged over volumes: the same number as the final
    evaluation's ``final_val_psnr`` (:mod:`raykd.metrics`), so model selection, searches and
    tables use one PSNR. Per-volume sums are accumulated, so any sharding gives the same value.
    Complex data (two channels): ``val/loss`` is the training L1 over real and imaginary parts,
    ``val/psnr`` is computed on the magnitudes, like every reported metric.
    """
    stage.eval()
    idx, w = validation_shard(len(dataset), rank, world)
    loader = make_loader(Subset(dataset, idx))
    weights = torch.tensor(w, device=device)
    acc = torch.zeros(2, device=device)  # sum L1, count
    # Per volume: squared-error sum, voxel count, target peak (float64 where supported).
    dt = torch.float32 if device.type == "mps" else torch.float64
    vol = torch.zeros(3, len(dataset.volumes), dtype=dt, device=device)
    pos = 0
    for sample in loader:
        v = sample.volume.to(device)
        x, y, mask, target = prepare(sample)
        with autocast(device, precision):
            pred = stage.predict(x, y, mask)
        pred = pred.float()
        wb = weights[pos : pos + len(target)]
        pos += len(target)
        l1 = (pred - target).abs().mean(dim=(1, 2, 3))
        acc += torch.stack([(l1 * wb).sum(), wb.sum()])
        # Scored on the magnitude; measured k-space: on the centre crop (fastMRI's 320x320).
        pred, target = dataset.scored(magnitude(pred)), dataset.scored(magnitude(target))
        sse = ((pred - target).to(dt) ** 2).sum(dim=(1, 2, 3))
        vol[0].index_add_(0, v, sse * wb.to(dt))
        vol[1].index_add_(0, v, wb.to(dt) * target[0].numel())
        peak = target.amax(dim=(1, 2, 3)).to(dt)
        vol[2].scatter_reduce_(0, v, peak, reduce="amax")
    if world > 1:
        dist.all_reduce(acc)
        dist.all_reduce(vol[:2])
        dist.all_reduce(vol[2], op=dist.ReduceOp.MAX)
    l1_sum, count = acc.tolist()
    seen = vol[1] > 0
    psnr = 10 * torch.log10(vol[2][seen] ** 2 / (vol[0][seen] / vol[1][seen]))
    val_psnr = psnr.mean().item() if psnr.numel() else math.nan
    return {"val/loss": l1_sum / max(count, 1), "val/psnr": val_psnr}
