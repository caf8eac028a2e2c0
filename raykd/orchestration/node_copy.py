"""A chain's stages as the process that trains them sees them (Ray Train worker or trial).

With a local run root every process sees the same folder and nothing changes. With an
object-store root (:mod:`raykd.storage`) each node works in its own copy: a chain's stage
folders and its KD stages' teachers are pulled from the store before training and rank 0 pushes
each stage's files back (every epoch, and when it finishes), so the trial driver, a retried
worker on another node and every later job find them in the store.
"""

from __future__ import annotations

from pathlib import Path

from raykd.orchestration.identity import StageStore
from raykd.orchestration.messages import ChainRequest, PlannedStage


def on_this_node(request: ChainRequest, store: StageStore) -> ChainRequest:
    """The chain as this process sees it: every stage's folder (and a KD stage's teacher
    checkpoint) in its copy of the root, brought up to date from the store first. A local root
    is seen by every process as it is: the request is unchanged."""
    for stage in request.stages:
        store.pull(stage.name)
    if store.storage.shared:
        return request
    stages = []
    for stage in request.stages:
        cfg = stage.stage
        if stage.teacher_stage and cfg.teacher_checkpoint:
            teacher = store.pull(stage.teacher_stage) / Path(cfg.teacher_checkpoint).name
            cfg = cfg.model_copy(update={"teacher_checkpoint": str(teacher)})
        out = str(store.stage_dir(stage.name))
        cfg = cfg.model_copy(update={"output_dir": out})
        stages.append(stage.model_copy(update={"stage": cfg, "output_dir": out}))
    return request.model_copy(update={"stages": stages, "root": str(store.root)})


def shared(store: StageStore, stage: PlannedStage, rank: int) -> None:
    """After a stage: rank 0 shares its folder; every rank waits for that, so a teacher trained
    on one node is in the store before a KD stage on another reads it."""
    import torch.distributed as dist

    if store.storage.shared:
        return  # written in place
    if rank == 0:
        store.push(stage.name)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
