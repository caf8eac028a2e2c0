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
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from raykd.plan.identity import (  # noqa: F401 - the identity rules live in the plan
    KD_LOSS_DEFINITIONS,
    LATER_DEFAULTS,
    LEGACY_CONSTANTS,
    NON_IDENTITY,
    NON_IDENTITY_DATA,
    stage_identity,
)


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
