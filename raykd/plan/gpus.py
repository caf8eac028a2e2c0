"""GPUs per stage: whole GPUs for DDP ranks, fractions so several small stages share one GPU.

Pure planning (no Ray, no torch): the CLI, the presets, ``--plan`` and the job's trial sizing
all take the GPU share of a worker from here.

The default rule (``gpus_per_worker`` not given): a stage kind with several workers (DDP ranks)
gets one whole GPU per worker (NCCL cannot run two ranks of one group on one GPU); a
single-worker stage gets **0.25 GPU** (four stages at once per GPU) when the grid's networks
have at most 64 channels and its slices are at most 256 × 256 pixels (every shipped preset:
32-channel DCCNN / DC-UNet / VDSR on 150–240 px slices, well under 2 GB of GPU memory each at
the presets' batch sizes), else **1 GPU**. A given fraction applies to single-worker stages; a
kind with several workers still gets whole GPUs.
"""

from __future__ import annotations

import math

from raykd.errors import ConfigError

SMALL_CHANNELS = 64
SMALL_SIDE = 256
SMALL_SHARE = 0.25


def check_gpus_per_worker(value: float, flag: str = "--gpus-per-worker") -> float:
    """A share of one GPU in (0, 1]: fractions pack several stages on a GPU, 1 is a whole one."""
    if not (value > 0 and value <= 1) or math.isnan(value):
        raise ConfigError(
            f"{flag} {value:g}: expected a share of one GPU in (0, 1], e.g. 0.25 (four stages "
            "per GPU) or 1 (a whole GPU per worker)"
        )
    return float(value)


def stages_per_gpu(share: float) -> int:
    """How many workers of this share Ray fits on one GPU at once."""
    return max(1, math.floor(1.0 / share + 1e-9))


def default_gpus_per_worker(channels: int, largest_side: int | None) -> float:
    """The default rule (module docstring): 0.25 for small networks on small slices, else 1."""
    if largest_side is not None and channels <= SMALL_CHANNELS and largest_side <= SMALL_SIDE:
        return SMALL_SHARE
    return 1.0


def spec_gpus_per_worker(spec, given: float | None = None) -> float:
    """``given`` (``--gpus-per-worker``), else the preset's ``gpus_per_worker``, else the
    default rule on the grid's channels and its largest slice (unknown size: a whole GPU)."""
    if given is not None:
        return check_gpus_per_worker(given)
    if spec.gpus_per_worker is not None:
        return check_gpus_per_worker(spec.gpus_per_worker, "gpus_per_worker")
    return default_gpus_per_worker(spec.channels, largest_side(spec))


def largest_side(spec) -> int | None:
    """The longest slice side a grid trains at (its ``size``, else each dataset's native size;
    None when a folder dataset's size is only known from its files)."""
    if spec.size:
        return max(spec.size)
    sides = []
    for name in spec.datasets:
        entry = spec.dataset(name)
        if entry is None:  # a folder named directly: its size is in its files
            return None
        sides.append(max(entry.native_size))
    return max(sides) if sides else None


def kind_shares(workers: dict[str, int], share: float) -> dict[str, float]:
    """GPUs per worker of each stage kind: ``share`` for single-worker kinds, 1 for DDP kinds."""
    return {kind: (share if n == 1 else 1.0) for kind, n in workers.items()}


def describe_gpus(workers: dict[str, int], share: float) -> str:
    """``teacher 4 × 1 GPU, kd 1 × 0.25 GPU (4 per GPU)``, grouped when kinds agree."""
    shares = kind_shares(workers, share)
    groups: dict[tuple[int, float], list[str]] = {}
    for kind, n in workers.items():
        groups.setdefault((n, shares[kind]), []).append(kind)
    parts = []
    for (n, s), kinds in groups.items():
        who = "every stage" if len(groups) == 1 else "/".join(kinds)
        per = f" ({stages_per_gpu(s)} stages at once per GPU)" if s < 1 else ""
        parts.append(f"{who} {n} worker(s) × {s:g} GPU{per}")
    return "; ".join(parts)


def on_device(spec, use_gpu: bool):
    """The spec whose stages train on the job's device class: ``device: cuda`` on a GPU
    cluster (GPU stage identities), unchanged on CPU."""
    return spec.model_copy(update={"device": "cuda"}) if use_gpu else spec
