"""Stage identities: a hash of everything that determines a stage's result.

The identity covers kind, data (source, splits, size, mask), models, optimisation, stage
weights, KD settings, precision, seed, the device class when it is a GPU and, for a KD run, the
*identity of its teacher stage* (not the checkpoint path). Why precision enters as the
requested policy, and how the stage store uses identities:
:mod:`raykd.orchestration.identity`. Pure (no Ray, no files).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from raykd.train.config import StageConfig

# Fields that change where/how a run is shown, not what it computes.
NON_IDENTITY = {"name", "output_dir", "progress", "resume", "device", "teacher_checkpoint"}
NON_IDENTITY_DATA = {"num_workers"}
# Fields added after stages were first stored: at these defaults they are left out of the hash,
# so stages trained before the field existed keep their identity (and are reused).
LATER_DEFAULTS = {
    ("data", "sr"): None,
    ("teacher", "arch"): "dccnn",
    ("student", "arch"): "dccnn",
    ("data", "mask", "allow_full"): False,
    ("kd", "balance"): None,
    ("sft", "balance"): None,
    ("data", "complex"): False,
    ("data", "mask", "center_fraction"): None,
    ("data", "mask", "per_epoch"): False,
    ("data", "test_slices"): None,
    ("data", "kspace"): "simulated",
}
# The KD loss definitions a kd stage was trained with. Bump it whenever a method's formula,
# reduction or default weight changes, so stages trained under another definition are never
# reused silently. 2: the RepDistiller reference definitions (summed tap pairs, issue 12).
KD_LOSS_DEFINITIONS = 2


def device_class(device: str) -> str:
    """``cuda`` for any CUDA device spec (``cuda``, ``cuda:1``), else ``cpu`` (``auto`` is
    planned as CPU: a GPU job plans its stages with ``device: cuda``)."""
    return "cuda" if device.startswith("cuda") else "cpu"


# Fields that do not change what a stage computes but were hashed before: hashed at their old
# value whatever they are set to, so every stored identity stays valid.
LEGACY_CONSTANTS = {"channels_last": False}


def unused_sections(kind: str) -> tuple[str, ...]:
    """Config sections a stage of ``kind`` never reads: left out of its identity and of the
    params its MLflow run logs (a teacher's run has no ``kd.*``), by this one rule."""
    unused = {"kd": kind != "kd", "sft": kind != "sft"}
    unused |= {"student": kind == "teacher", "teacher": kind == "student"}
    return tuple(section for section, drop in unused.items() if drop)


def used_config(cfg: StageConfig) -> dict:
    """``cfg`` as a dict without the sections its kind never reads (what a stage run logs)."""
    data = cfg.to_dict()
    for section in unused_sections(cfg.kind):
        data.pop(section, None)
    return data


def stage_identity(cfg: StageConfig, teacher_id: str | None = None) -> str:
    data = cfg.to_dict()
    for key in NON_IDENTITY:
        data.pop(key, None)
    data.update(LEGACY_CONSTANTS)
    for key in NON_IDENTITY_DATA:
        data["data"].pop(key, None)
    for (*sections, key), default in LATER_DEFAULTS.items():
        node: Any = data
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(key, default) == default:
            node.pop(key, None)
    for section in unused_sections(cfg.kind):  # they do not change its result
        data.pop(section)
    if device_class(cfg.device) != "cpu":
        # A GPU stage computes otherwise (cuDNN kernels, bf16/fp16 units): never reused as a
        # CPU one nor the reverse. Left out on CPU, so every CPU identity stays as it was.
        data["device_class"] = device_class(cfg.device)
    if cfg.kind == "kd":
        if teacher_id is None:
            raise ValueError("a kd stage identity needs its teacher's identity")
        data["teacher_stage"] = teacher_id
        data["kd_loss_definitions"] = KD_LOSS_DEFINITIONS
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return f"{cfg.kind}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"
