"""Stage identities and the stage store: train each distinct stage once, reuse it everywhere.

A stage's identity is a hash of everything that determines its result: kind, data (source,
splits, size, mask), models, optimisation, stage weights, KD settings, precision, seed, and,
for a KD run, the *identity of its teacher stage* (not the checkpoint path).

Precision enters as the *requested policy* (``auto``, ``fp32``, ``bf16``), not as what ``auto``
resolves to: the identity is computed by the trial driver, which need not run on the machine
(GPU, CPU class) that trains the stage, and ``auto``'s accuracy is parity-checked against fp32
(``benchmarks/precision_parity.py``, within 0.1 dB). What a stage actually ran with is
recorded with it (``compute`` in ``result.json``, ``compute.*`` MLflow params). Whoever needs
fp32 arithmetic asks for ``precision: fp32`` and gets a stage of its own. The device class
does enter a GPU stage's identity (``device: cuda`` in its plan; CPU identities are unchanged),
and reuse checks the device a stored stage recorded against the class it is planned for. The
memory format only changes the layout (the same arithmetic in another reduction order, like the
thread count) and is not part of the identity. Runs land in
``<root>/stages/<kind>-<id>/``; ``done.json`` marks a finished stage. A claim (a file lock, or
a conditional write on an object store: :mod:`raykd.storage`) serialises concurrent trials that
need the same stage, so the second one waits and reuses the result.
This module does not import Ray: it works the same from a test, a trial or a script.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import zipfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from raykd.plan.identity import (  # noqa: F401 - the identity rules live in the plan
    KD_LOSS_DEFINITIONS,
    LATER_DEFAULTS,
    LEGACY_CONSTANTS,
    NON_IDENTITY,
    NON_IDENTITY_DATA,
    device_class,
    stage_identity,
)
from raykd.storage import storage_for


class StageRecord(BaseModel):
    """A finished stage (``done.json``): written by the process that trained it, read by every
    trial, job and search that reuses it — typed and frozen on both sides."""

    model_config = ConfigDict(frozen=True, extra="forbid")
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
    wall_clock_s: float | None = None  # ensure_stages' whole call, Ray start/stop included
    compute_s: float | None = None  # set-up, training and evaluation inside the worker
    compute: dict[str, str] | None = None  # the resolved path: device, CPU class, precision...
    # {file name: {"size": bytes, "sha256": hex}} of the stage's checkpoints when it finished;
    # reuse checks them (records written before this field get a structural check instead).
    checkpoints: dict[str, dict[str, Any]] | None = None

    def to_json(self) -> str:
        return self.model_dump_json(indent=1)


class StageStore:
    """The stages under ``<root>/stages``, wherever the root lives (:mod:`raykd.storage`): a
    local folder, or an object store this process sees through its own working copy."""

    def __init__(self, root: str | Path) -> None:
        self.storage = storage_for(root)
        self.root = self.storage.local
        (self.root / "stages").mkdir(parents=True, exist_ok=True)

    @property
    def uri(self) -> str:
        """The root as every node can open it: the folder, or the object-store URI."""
        return self.storage.uri

    def stage_dir(self, stage_id: str) -> Path:
        return self.root / "stages" / stage_id

    def pull(self, stage_id: str) -> Path:
        """This process's copy of a stage's folder, up to date with the store."""
        self.storage.pull(f"stages/{stage_id}")
        return self.stage_dir(stage_id)

    def push(self, stage_id: str) -> None:
        """Share what this process wrote into a stage's folder (every node sees it after)."""
        self.storage.push(f"stages/{stage_id}")

    def get(self, stage_id: str) -> StageRecord | None:
        text = self.storage.read_text(f"stages/{stage_id}/done.json")
        if text is None:
            return None
        record = StageRecord.model_validate_json(text)
        if not self.storage.shared:
            # Perhaps written by another node: its files are in this node's copy once pulled.
            out = self.pull(stage_id)
            best = str(out / Path(record.best_checkpoint).name)
            record = record.model_copy(update={"output_dir": str(out), "best_checkpoint": best})
        return record

    def put(self, record: StageRecord) -> StageRecord:
        """Mark a stage finished, with the digests of its checkpoints as they are now: its files
        are shared first, then its record is published (once: a record another job published
        first stands, and is returned)."""
        if record.checkpoints is None:
            record = record.model_copy(
                update={"checkpoints": checkpoint_digests(Path(record.output_dir))}
            )
        self.push(record.stage_id)
        if not self.storage.publish(f"stages/{record.stage_id}/done.json", record.to_json()):
            return self.get(record.stage_id) or record
        return record

    def get_intact(
        self, stage_id: str, device: str | None = None
    ) -> tuple[StageRecord | None, str | None]:
        """``(record, None)`` for a finished stage whose checkpoints are intact; ``(None,
        problem)`` for a damaged one, whose folder is then moved aside (``<id>.damaged-<time>``)
        so the stage trains again from scratch and the evidence is kept; ``(None, None)`` for a
        stage that never finished. ``device``: the device class (``cpu`` | ``cuda``) the stage
        is planned for; a record trained on the other class (stored before the class entered
        GPU identities) is never reused as this one: it is moved aside the same way."""
        record = self.get(stage_id)
        if record is None:
            return None, None
        problem = damaged_checkpoint(Path(record.output_dir), record.checkpoints)
        trained_on = (record.compute or {}).get("compute.device")
        if problem is None and device and trained_on and device_class(trained_on) != device:
            problem = f"stage {stage_id} was trained on {trained_on}, not on a {device} device"
        if problem is None:
            return record, None
        aside = f"{stage_id}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
        where = self.storage.move_aside(f"stages/{stage_id}", f"stages/{aside}")
        return None, f"{problem} (stage moved aside to {where})"

    def log_use(self, stage_id: str, how: str, job: str | None) -> None:
        """Append which job used which stage and how: ``trained`` (from scratch), ``resumed``
        (from a ``last.pt`` an interrupted job left) or ``reused`` (finished before: by another
        job, or by an interrupted one whose driver died before recording it)."""
        assert how in USES, how
        event = {"stage_id": stage_id, "how": how, "trained": how != "reused", "job": job}
        self.storage.append_line("stages/usage.jsonl", json.dumps({**event, "t": time.time()}))

    def uses(self, job: str) -> dict[str, list[str]]:
        """``{trained|resumed|reused: [stage ids]}`` for one job, each stage counted once (the
        strongest use wins: trained > resumed > reused)."""
        how: dict[str, str] = {}
        for event in self.usage(job):
            # Events written before "how" existed: trained True/False.
            use = event.get("how") or ("trained" if event["trained"] else "reused")
            sid = event["stage_id"]
            if sid not in how or USES.index(use) < USES.index(how[sid]):
                how[sid] = use
        return {u: sorted(s for s, h in how.items() if h == u) for u in USES}

    def usage(self, job: str | None = None) -> list[dict[str, Any]]:
        events = self.storage.read_lines("stages/usage.jsonl")
        return [e for e in events if job is None or e["job"] == job]

    def ray_storage(self, rel: str) -> dict[str, Any]:
        """``RunConfig`` keywords that put Ray Train/Tune's state under ``<root>/<rel>``."""
        path, filesystem = self.storage.ray_storage(rel)
        return {"storage_path": path} | ({"storage_filesystem": filesystem} if filesystem else {})

    def lock(self, stage_id: str, poll_s: float = 2.0) -> contextlib.AbstractContextManager[None]:
        """Exclusive per-stage claim among every process using this root: an ``fcntl`` lock on
        a local folder, a conditional write on an object store."""
        return self.storage.claim(stage_id, poll_s)


CHECKPOINTS = ("best.pt", "last.pt")
USES = ("trained", "resumed", "reused")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_digests(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of each checkpoint the stage wrote."""
    out = {}
    for name in CHECKPOINTS:
        path = folder / name
        if path.is_file():
            out[name] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    return out


def damaged_checkpoint(folder: Path, recorded: dict[str, dict[str, Any]] | None) -> str | None:
    """What is wrong with a finished stage's checkpoints, naming the file; None if intact.

    With recorded digests: every recorded file must exist with its size and SHA-256. Without
    (stages stored before digests were recorded): ``best.pt`` must exist and every checkpoint
    present must be a complete torch zip archive (each member's CRC checked, nothing unpickled).
    """
    if recorded:
        for name, want in recorded.items():
            path = folder / name
            if not path.is_file():
                return f"checkpoint {path} is missing"
            size = path.stat().st_size
            if size != want["size"]:
                return f"checkpoint {path} is damaged: {size} bytes, {want['size']} when written"
            if _sha256(path) != want["sha256"]:
                return f"checkpoint {path} is damaged: its SHA-256 differs from when written"
        return None
    if not (folder / "best.pt").is_file():
        return f"checkpoint {folder / 'best.pt'} is missing"
    for name in CHECKPOINTS:
        path = folder / name
        if not path.is_file():
            continue
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError) as exc:
            return f"checkpoint {path} is damaged: {exc}"
        if bad is not None:
            return f"checkpoint {path} is damaged: member {bad} fails its CRC"
    return None
