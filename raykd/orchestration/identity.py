"""Stage identities and the stage store: train each distinct stage once, reuse it everywhere.

A stage's identity is a hash of everything that determines its result: kind, data (source,
splits, size, mask), models, optimisation, stage weights, KD settings, precision, seed, and,
for a KD run, the *identity of its teacher stage* (not the checkpoint path).

Precision enters as the *requested policy* (``auto``, ``fp32``, ``bf16``), not as what ``auto``
resolves to: the identity is computed by the trial driver, which need not run on the machine
(GPU, CPU class) that trains the stage, and ``auto``'s accuracy is parity-checked against fp32
(``benchmarks/precision_parity.py``, within 0.1 dB). What a stage actually ran with is
recorded with it (``compute`` in ``result.json``, ``compute.*`` MLflow params). Whoever needs
fp32 arithmetic asks for ``precision: fp32`` and gets a stage of its own. The memory format
only changes the layout (the same arithmetic in another reduction order, like the thread count)
and is not part of the identity. Runs land in
``<root>/stages/<kind>-<id>/``; ``done.json`` marks a finished stage. A file lock serialises
concurrent trials that need the same stage, so the second one waits and reuses the result.
This module does not import Ray: it works the same from a test, a trial or a script.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
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
}
# The KD loss definitions a kd stage was trained with. Bump it whenever a method's formula,
# reduction or default weight changes, so stages trained under another definition are never
# reused silently. 2: the RepDistiller reference definitions (summed tap pairs, issue 12).
KD_LOSS_DEFINITIONS = 2
# Fields that do not change what a stage computes but were hashed before: hashed at their old
# value whatever they are set to, so every stored identity stays valid.
LEGACY_CONSTANTS = {"channels_last": False}


def stage_identity(cfg: StageConfig, teacher_id: str | None = None) -> str:
    data = cfg.to_dict()
    for key in NON_IDENTITY:
        data.pop(key, None)
    data.update(LEGACY_CONSTANTS)
    for key in NON_IDENTITY_DATA:
        data["data"].pop(key, None)
    for (*sections, key), default in LATER_DEFAULTS.items():
        node = data
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(key, default) == default:
            node.pop(key, None)
    # Sections a kind does not use do not change its result.
    if cfg.kind != "kd":
        data.pop("kd")
    if cfg.kind != "sft":
        data.pop("sft")
    if cfg.kind == "teacher":
        data.pop("student")
    if cfg.kind == "student":
        data.pop("teacher")
    if cfg.kind == "kd":
        if teacher_id is None:
            raise ValueError("a kd stage identity needs its teacher's identity")
        data["teacher_stage"] = teacher_id
        data["kd_loss_definitions"] = KD_LOSS_DEFINITIONS
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return f"{cfg.kind}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


@dataclass
class StageRecord:
    stage_id: str
    kind: str
    output_dir: str
    best_checkpoint: str
    best_val_loss: float
    best_epoch: int
    mlflow_run_id: str | None = None
    teacher_stage: str | None = None
    metrics: dict[str, Any] | None = None
    finished_at: float = 0.0
    wall_clock_s: float | None = None  # ensure_stage's whole call, Ray start/stop included
    compute_s: float | None = None  # set-up, training and evaluation inside the worker
    compute: dict[str, str] | None = None  # the resolved path: device, CPU class, precision...

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


class StageStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        (self.root / "stages").mkdir(parents=True, exist_ok=True)

    def stage_dir(self, stage_id: str) -> Path:
        return self.root / "stages" / stage_id

    def get(self, stage_id: str) -> StageRecord | None:
        marker = self.stage_dir(stage_id) / "done.json"
        if not marker.is_file():
            return None
        return StageRecord(**json.loads(marker.read_text()))

    def put(self, record: StageRecord) -> None:
        marker = self.stage_dir(record.stage_id) / "done.json"
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(record.to_json())
        os.replace(tmp, marker)

    def log_use(self, stage_id: str, trained: bool, job: str | None) -> None:
        """Append who used which stage, and whether it was trained or reused (job summaries)."""
        line = json.dumps({"stage_id": stage_id, "trained": trained, "job": job, "t": time.time()})
        with open(self.root / "stages" / "usage.jsonl", "a") as f:
            f.write(line + "\n")

    def usage(self, job: str | None = None) -> list[dict[str, Any]]:
        path = self.root / "stages" / "usage.jsonl"
        if not path.is_file():
            return []
        events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [e for e in events if job is None or e["job"] == job]

    @contextlib.contextmanager
    def lock(self, stage_id: str, poll_s: float = 2.0) -> Iterator[None]:
        """Exclusive per-stage lock (advisory, works across processes on one file system)."""
        path = self.root / "stages" / f"{stage_id}.lock"
        with open(path, "w") as f:
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    time.sleep(poll_s)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
