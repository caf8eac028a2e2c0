"""The device each rank or in-process trial trains on: the one Ray assigned, never a guess.

Ray 2.60 shows every GPU of a node to a process that asked for none, so "cuda if available"
would put every CPU trial and every in-process trial on ``cuda:0``. A stage planned for a GPU
whose process got no GPU fails here with one line (no silent CPU fallback: the process group
would be NCCL and crash in its first collective, far from the cause).
"""

from __future__ import annotations

import os

from raykd.errors import RaykdError

# Scheduling tests on a Ray cluster that only *declares* GPUs (``ray start --num-gpus``): the
# trial still asks Ray for its GPU share and must get one, then trains on the CPU.
TRAIN_ON_CPU_ENV = "RAYKD_TRAIN_ON_CPU"


def _train_on_cpu() -> bool:
    return os.environ.get(TRAIN_ON_CPU_ENV) == "1"


def visible_index(gpu_id: str, visible: str | None) -> int:
    """The torch index of Ray's GPU ``gpu_id`` among ``CUDA_VISIBLE_DEVICES`` (``visible``):
    its position in that list (Ray sets it to the assigned GPUs), or the id itself when the
    variable is unset (every GPU visible, in order)."""
    if visible is None or visible.strip() == "":
        return int(gpu_id)
    ids = [v.strip() for v in visible.split(",")]
    if gpu_id not in ids:
        raise RaykdError(
            f"Ray assigned GPU {gpu_id} but CUDA_VISIBLE_DEVICES={visible} hides it; leave "
            "CUDA_VISIBLE_DEVICES to Ray on GPU nodes"
        )
    return ids.index(gpu_id)


def _cuda_problem() -> str | None:
    import torch

    if not torch.cuda.is_available():
        built = "a CPU-only torch build" if torch.version.cuda is None else "no usable CUDA device"
        seen = os.environ.get("CUDA_VISIBLE_DEVICES")
        return f"{built} (CUDA_VISIBLE_DEVICES={seen!r})"
    return None


def trial_device(use_gpu: bool) -> str:
    """An in-process trial's device: ``cpu`` unless the job trains on GPUs; then the GPU (share)
    Ray assigned this trial (``tune.with_resources`` asked for it)."""
    if not use_gpu:
        return "cpu"
    import ray

    ids = [str(i) for i in ray.get_gpu_ids()] if ray.is_initialized() else []
    if not ids:
        raise RaykdError(
            "this trial trains on a GPU but Ray assigned it none (was it started outside a "
            "Tune trial that asked for a GPU?)"
        )
    if _train_on_cpu():
        return "cpu"
    if problem := _cuda_problem():
        raise RaykdError(f"Ray assigned GPU {ids[0]} to this trial but torch sees {problem}")
    return f"cuda:{visible_index(ids[0], os.environ.get('CUDA_VISIBLE_DEVICES'))}"


def rank_device(use_gpu: bool) -> str:
    """A Ray Train rank's device (``ray.train.torch.get_device``), checked against the plan."""
    if _train_on_cpu():
        return "cpu"
    try:
        import ray.train.torch

        device = str(ray.train.torch.get_device())
    except Exception as exc:
        raise RaykdError(
            f"this Ray Train worker cannot get its device ({type(exc).__name__}: {exc})"
        ) from exc
    return check_rank_device(device, use_gpu)


def check_rank_device(device: str, use_gpu: bool) -> str:
    """``device`` if it is the class the stage was planned for, else one clear error."""
    if use_gpu and not device.startswith("cuda"):
        cause = _cuda_problem() or "no GPU assigned by Ray"
        raise RaykdError(
            f"this rank was started for a GPU but got device {device!r}: {cause}; check the "
            "node's CUDA driver and torch build (or run the job on CPU)"
        )
    if not use_gpu and device.startswith("cuda"):
        return "cpu"  # a CPU job on a node with GPUs: the CPU it was sized for
    return device


def stage_device(planned: str, assigned: str) -> str:
    """The device a stage trains on: ``assigned`` for ``auto`` and for a bare ``cuda`` (the
    GPU Ray gave this process); an explicit index or ``cpu`` in the stage config is kept."""
    if planned == "auto" or assigned == "auto":  # assigned "auto": outside Ray (tests, CLI)
        return assigned if planned == "auto" else planned
    if planned == "cuda":
        if not assigned.startswith("cuda") and not _train_on_cpu():
            raise RaykdError(
                f"stage planned for a GPU (device: cuda) but this process got {assigned!r}"
            )
        return assigned
    return planned
