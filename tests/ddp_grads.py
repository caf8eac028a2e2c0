"""One training step's gradients on every stage kind, for the DDP gradient test.

Kept apart from the test module so that spawned ranks import torch and the stage modules only
(not Ray, MLflow or pytest): each rank then starts in about a second.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

from raykd.distill import available_kd_methods, build_kd_method
from raykd.models.registry import build_model
from raykd.models.sft import SFTModel
from raykd.train.stages import KDStage, PlainStage, SFTStage

GLOBAL_BATCH = 4


def stages() -> dict[str, torch.nn.Module]:
    """Every stage kind and every registered KD method on tiny random models (seeded)."""
    torch.manual_seed(0)
    out: dict[str, torch.nn.Module] = {
        "teacher": PlainStage(build_model("dccnn", 3, 2, 4, True)),
        "sft": SFTStage(
            SFTModel(build_model("dccnn", 3, 2, 4, True), build_model("dccnn", 2, 2, 4, True)), 1, 1
        ),
    }
    for method in available_kd_methods():
        teacher = build_model("dccnn", 3, 2, 4, True)
        student = build_model("dccnn", 2, 2, 4, True)
        taps, options = {}, {}
        if method == "fitnets":  # 1-channel student tap vs 4-channel teacher tap: a regressor
            taps = {"teacher_taps": ["cascades.{c}.conv.1"]}
            taps["student_taps"] = ["cascades.{c}.conv.1"]
        if method == "ft":
            options = {"pretrain_steps": 0}  # frozen random paraphraser; translators train
        kd = build_kd_method(method, teacher, student, **taps, **options)
        out[f"kd-{method}"] = KDStage(student, teacher, kd, w_kd=1.0, w_out=0.5)
    return out


def batch() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    target = torch.rand(GLOBAL_BATCH, 1, 16, 16, generator=g) + 0.1
    mask = (torch.rand(1, 1, 16, 1, generator=g) < 0.5).float().expand(1, 1, 16, 16)
    y = mask * torch.fft.fft2(target, norm="ortho")
    return torch.fft.ifft2(y, norm="ortho").abs(), y, mask, target


def grads(stage: torch.nn.Module, data, rows=slice(None)) -> dict[str, torch.Tensor]:
    """Gradients of the stage's weighted loss on ``data[rows]`` (through DDP when distributed)."""
    x, y, mask, target = data
    model = stage
    if dist.is_initialized():
        model = torch.nn.parallel.DistributedDataParallel(stage)
    terms = model(x[rows], y[rows], mask, target[rows])
    sum(stage.weights[k] * v for k, v in terms.items()).backward()
    return {n: p.grad.clone() for n, p in stage.named_parameters() if p.requires_grad}


def worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=120),  # a rank that died fails the test, not the CI timeout
    )
    try:
        data = batch()
        # Rank r gets global rows r, r + world, ... (as ShardedSampler deals them).
        result = {k: grads(s, data, slice(rank, None, world)) for k, s in stages().items()}
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()
