"""Tracking outages that heal: a stage's MLflow writes are best-effort, its files are the truth.

A stage's rank 0 writes to MLflow through :class:`BestEffort`: the first write that fails (the
server is down past the client's retry budget) marks the stage *pending* for that tracking URI
(``<stage>/tracking_pending.json``), is recorded as an event, and every later write of that
stage is skipped, so training never waits on a dead server and never fails because of it. A stage
whose writes all went through tags its run ``raykd.tracking_complete``.

:func:`repair_pending` then makes MLflow match the files: for each pending stage it keeps the one
complete run of the stage, or re-registers it from the stage folder (config, per-epoch metrics —
each epoch once —, evaluation, artifacts), and deletes every other run of that stage id (an empty
run a failed attempt left). The runner calls it when a chain ends, and every job calls it when it
starts and ends, so an outage is healed at the latest by the next job on the same root.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from raykd.errors import error_summary
from raykd.lines import line
from raykd.paths import write_atomic
from raykd.storage import storage_for

PENDING_FILE = "tracking_pending.json"
COMPLETE_TAG = "raykd.tracking_complete"
EVENTS_FILE = "events.jsonl"
# A stage's writes are best-effort: a short client retry budget (MLflow's default waits ~4 min
# per call) so a dead server costs a stage seconds once, not minutes per epoch. The user's own
# settings win.
WORKER_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


def log_event(root: str | Path, job: str | None, event: str, **fields: Any) -> None:
    """Append a recovery event (``tracking_failed``, ``tracking_repaired``, ``stage_restart``)
    to ``<root>/stages/events.jsonl``; the job summary counts them."""
    line = json.dumps({"job": job, "event": event, "t": time.time(), **fields})
    storage_for(root).append_line(f"stages/{EVENTS_FILE}", line)


def events(root: str | Path, job: str) -> list[dict[str, Any]]:
    lines = storage_for(root).read_lines(f"stages/{EVENTS_FILE}")
    return [e for e in lines if e.get("job") == job]


def pending(stage_dir: str | Path) -> dict[str, str]:
    """Tracking URI → the first error, for stores that missed some of this stage's writes."""
    path = Path(stage_dir) / PENDING_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def _write_pending(stage_dir: Path, data: dict[str, str]) -> None:
    path = stage_dir / PENDING_FILE
    if not data:
        path.unlink(missing_ok=True)
        return
    write_atomic(path, json.dumps(data, indent=1))


class BestEffort:
    """A stage's tracking on rank 0: every call goes through until one fails; then the stage is
    marked pending for this store and the rest of its calls are skipped (``None``)."""

    def __init__(
        self,
        tracking: Any,
        stage_dir: str | Path,
        root: str | Path,
        job: str | None,
        uri: str | None = None,
    ):
        self.tracking, self.stage_dir = tracking, Path(stage_dir)
        self.root, self.job = root, job
        self.uri: str = uri or tracking.uri
        self.failed: str | None = None

    @classmethod
    def open(cls, uri: str, experiment: str, stage_dir, root, job) -> BestEffort:
        """Connect; a server that is down gives a failed instance. Callers hold
        :func:`short_budget` while they use it (a dead server costs seconds, not minutes)."""
        from raykd.tracking import Tracking

        try:
            return cls(Tracking(uri, experiment), stage_dir, root, job)
        except Exception as exc:
            out = cls(None, stage_dir, root, job, uri)
            out.fail(exc)
            return out

    def metric_steps(self, run_id: str, key: str) -> set[int]:
        history = self.call_client("get_metric_history", run_id, key) or []
        return {m.step for m in history}

    def call_client(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.failed is not None:
            return None
        try:
            return getattr(self.tracking.client, method)(*args, **kwargs)
        except Exception as exc:
            self.fail(exc)
            return None

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.failed is not None:
            return None
        try:
            return getattr(self.tracking, method)(*args, **kwargs)
        except Exception as exc:  # the server is gone; the files keep everything
            self.fail(exc)
            return None

    def fail(self, exc: BaseException | str) -> None:
        self.failed = error_summary(exc)
        self.stage_dir.mkdir(parents=True, exist_ok=True)
        _write_pending(self.stage_dir, {self.uri: self.failed, **pending(self.stage_dir)})
        log_event(self.root, self.job, "tracking_failed", stage=self.stage_dir.name,
                  error=self.failed)  # fmt: skip
        line(
            f"[raykd] WARNING: MLflow at {self.uri} failed ({self.failed}); stage "
            f"{self.stage_dir.name} trains on and is written to MLflow when it is back"
        )

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *a, **k: self.call(name, *a, **k)


def repair_stage(record: Any, store: Any, tracking: Any, parent_run_id: str | None) -> str:
    """Exactly one complete run of ``record``'s stage in ``tracking``; returns its id."""
    from raykd.orchestration.stage_runs import remember_run, reregister, resolve_run
    from raykd.tracking import schema as S

    runs = tracking.runs(f"tags.`{S.TAG_STAGE_ID}` = '{record.stage_id}'")
    complete = [
        r for r in runs if r.info.status == "FINISHED" and r.data.tags.get(COMPLETE_TAG) == "1"
    ]
    keep = complete[0].info.run_id if complete else None
    for run in runs:
        if run.info.run_id != keep:
            tracking.client.delete_run(run.info.run_id)  # MLflow's trash: restorable
    if keep is None:
        teacher_run = ""
        if record.teacher_stage and (teacher := store.get(record.teacher_stage)) is not None:
            if tracking.uri in pending(teacher.output_dir):  # its teacher first: the lineage
                teacher_run = repair_stage(teacher, store, tracking, parent_run_id)
            else:
                teacher_run = resolve_run(teacher, store, tracking, parent_run_id)
        keep = reregister(record, tracking, parent_run_id, teacher_run)
        tracking.set_tags(keep, {COMPLETE_TAG: "1"})
    remember_run(record.output_dir, tracking.uri, keep)
    data = pending(record.output_dir)
    data.pop(tracking.uri, None)
    _write_pending(Path(record.output_dir), data)
    return keep


def repair_pending(
    store: Any, tracking: Any, parent_run_id: str | None, job: str | None = None
) -> tuple[list[str], list[str]]:
    """Repair every finished stage of ``store`` pending for ``tracking``'s URI: ``(repaired,
    still pending)`` stage ids. A server still down leaves them for the next call."""
    repaired: list[str] = []
    left: list[str] = []
    markers = sorted(store.root.glob(f"stages/*/{PENDING_FILE}"))
    if not markers:
        return repaired, left
    with _env(WORKER_HTTP_ENV):  # a server still down: fail in seconds, try again later
        for marker in markers:
            _repair_one(marker, store, tracking, parent_run_id, job, repaired, left)
    # A KD stage's repair repairs its pending teacher first: count every marker that went.
    for marker in markers:
        sid = marker.parent.name
        if sid not in repaired and sid not in left and not marker.exists():
            repaired.append(sid)
            log_event(store.root, job, "tracking_repaired", stage=sid)
    return repaired, left


def short_budget():
    """MLflow calls inside this block fail in seconds when the server is down (the user's own
    settings win): for calls whose failure is journaled and repaired, never waited out."""
    return _env(WORKER_HTTP_ENV)


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if old[k] is None})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)


def _repair_one(marker, store, tracking, parent_run_id, job, repaired, left) -> None:
    """Repair one pending stage's run, appending its id to ``repaired`` or ``left``."""
    if tracking.uri not in pending(marker.parent):
        return
    record = store.get(marker.parent.name)
    if record is None:
        return  # not finished yet: its own chain repairs it when it ends
    with store.lock(f"mlflow-{record.stage_id}", poll_s=0.2):
        try:
            repair_stage(record, store, tracking, parent_run_id)
        except Exception as exc:
            left.append(record.stage_id)
            log_event(store.root, job, "tracking_unrepaired", stage=record.stage_id,
                      error=error_summary(exc))  # fmt: skip
            return
    repaired.append(record.stage_id)
    log_event(store.root, job, "tracking_repaired", stage=record.stage_id)


def outage_summary(root: str | Path, job: str) -> dict[str, Any]:
    """What this job's recovery events say: stages whose tracking failed, repaired, pending."""
    evs = events(root, job)
    failed = sorted({e["stage"] for e in evs if e["event"] == "tracking_failed"})
    repaired = sorted({e["stage"] for e in evs if e["event"] == "tracking_repaired"})
    pending_now = sorted(p.parent.name for p in (Path(root) / "stages").glob(f"*/{PENDING_FILE}"))
    errors = [e["error"] for e in evs if e["event"] == "tracking_failed"]
    return {
        "tracking_failed": failed,
        "tracking_repaired": repaired,
        "tracking_pending": pending_now,
        "first_error": errors[0] if errors else None,
        "stage_restarts": sum(e["event"] == "stage_restart" for e in evs),
    }


def outage_lines(summary: dict[str, Any]) -> list[str]:
    """The job summary's lines about outages and recovery (none when nothing happened)."""
    lines = []
    if summary["tracking_failed"] or summary["tracking_repaired"]:
        lines.append(
            f"tracking: MLflow writes of {len(summary['tracking_failed'])} stage(s) failed "
            f"during this job ({summary['first_error'] or 'earlier job'}); "
            f"{len(summary['tracking_repaired'])} stage run(s) repaired from the stage files"
        )
    if summary["tracking_pending"]:
        lines.append(
            f"tracking: {len(summary['tracking_pending'])} stage(s) still missing from MLflow "
            "(server unreachable); the next job on this root writes them"
        )
    if summary["stage_restarts"]:
        lines.append(
            f"recovery: {summary['stage_restarts']} stage restart(s) after a failure (resumed "
            "from their last checkpoint)"
        )
    return lines
