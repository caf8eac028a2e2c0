"""A thin, explicit layer over ``MlflowClient``.

Why not ``mlflow.start_run`` / ``setup_mlflow``: those keep a global "active run" per process,
give flat runs under Tune, and are no-ops off rank 0 in ways that are hard to see. Here every
call names its run id, so the driver can create a child run (``mlflow.parentRunId``), hand its
id to a Ray Train worker, and rank 0 logs into it from another process.

Tags written by raykd (all under ``raykd.``): ``kind``, ``stage_id``, ``teacher_stage``,
``teacher_run_id`` (lineage: which teacher a student learned from), ``role`` (job, stage,
trial, comparison), ``status``; MLflow's own ``mlflow.source.git.commit`` holds the commit.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from raykd.errors import RaykdError

PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"  # the run description shown in the MLflow UI
# Marks the experiment as model training (the UI's kind selector reads it). MLflow 3.17's UI
# picks its landing page from a per-browser setting instead: see raykd.tracking.ui.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
COMMIT_ENV = "RAYKD_GIT_COMMIT"  # set by the submitting side: a `ray job submit` copy has no .git
RETRIES = 12  # "database is locked": back off 0.05 s, 0.1 s, ... capped at 5 s (~40 s in all)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for servers and file stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise creating a sqlite store across processes (MLflow's alembic migration of a
    fresh file races: ``table _alembic_tmp_experiments already exists``)."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _locked(exc: BaseException) -> bool:
    text = f"{exc} {exc.__cause__ or ''}".lower()
    return "database is locked" in text or "database table is locked" in text


def with_retry(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``, retrying with jittered exponential backoff while sqlite says it is locked
    (many trial processes and rank-0 workers write to one file)."""
    for attempt in range(RETRIES):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not _locked(exc) or attempt == RETRIES - 1:
                raise
            time.sleep(min(5.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.5))
    raise AssertionError("unreachable")


class RetryingClient:
    """``MlflowClient`` whose every call survives ``database is locked``."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return with_retry(attr, *args, **kwargs)

        return call


def default_tracking_uri(root: str | Path) -> str:
    """Local sqlite store under the run directory (``$MLFLOW_TRACKING_URI`` wins)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if "://" in str(root):
        raise RaykdError(
            f"--root {root}: an object-store root needs --tracking-uri (or MLFLOW_TRACKING_URI) "
            "of a tracking server every node reaches; sqlite under a local --root serves one "
            "machine"
        )
    root = Path(root).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


# MLflow's limit on a parameter's value (``mlflow.utils.validation.MAX_PARAM_VAL_LENGTH``,
# 6000 characters since MLflow 2.x): a longer value is cut to it rather than refused.
PARAM_VALUE_LIMIT = 6000


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:PARAM_VALUE_LIMIT]
    return out


def git_commit() -> str | None:
    """The commit of the running code: ``$RAYKD_GIT_COMMIT`` (set by whoever submitted the job
    or started the cluster workers), else ``git rev-parse`` next to this file."""
    if env := os.environ.get(COMMIT_ENV):
        return env
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


class Tracking:
    def __init__(self, tracking_uri: str, experiment: str, artifact_root: str | Path | None = None):
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri
        self.experiment_name = experiment
        if artifact_root is None and (db := sqlite_path(tracking_uri)) is not None:
            # Next to the database, never MLflow's default ./mlruns of the working directory.
            artifact_root = db.parent / "mlartifacts"
        try:
            # One process at a time creates the schema (MlflowClient migrates a fresh sqlite
            # file as it opens it) and the experiment.
            with store_lock(tracking_uri):
                self.client = RetryingClient(MlflowClient(tracking_uri=tracking_uri))
                exp = self.client.get_experiment_by_name(experiment)
                if exp is None:
                    location = None
                    if artifact_root is not None:
                        location = Path(artifact_root).expanduser().resolve().as_uri()
                    self.experiment_id = self.client.create_experiment(
                        experiment,
                        artifact_location=location,
                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
                    )
                else:
                    self.experiment_id = exp.experiment_id
                    if EXPERIMENT_KIND_TAG not in exp.tags:  # made by an older raykd
                        self.client.set_experiment_tag(
                            self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
                        )
        except Exception as exc:  # MLflow raises many types for unreachable stores
            raise RaykdError(
                f"MLflow tracking store {tracking_uri} cannot be reached or used "
                f"({type(exc).__name__}: {str(exc)[:300]}); check --tracking-uri / "
                "MLFLOW_TRACKING_URI"
            ) from exc

    # ---- runs -----------------------------------------------------------------------------
    def start_run(
        self,
        name: str,
        tags: dict[str, str] | None = None,
        parent_run_id: str | None = None,
        params: dict[str, Any] | None = None,
        start_time: float | None = None,
    ) -> str:
        """A new run (``start_time``: seconds since the epoch, for runs re-created later)."""
        all_tags = {k: str(v) for k, v in (tags or {}).items()}
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        if "mlflow.source.git.commit" not in all_tags and (commit := git_commit()):
            all_tags["mlflow.source.git.commit"] = commit
        start_ms = int(start_time * 1000) if start_time is not None else None
        run = self.client.create_run(
            self.experiment_id, run_name=name, tags=all_tags, start_time=start_ms
        )
        if params:
            self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten(params)
        items = [Param(k, v) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        import math
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [
            Metric(k.replace("/", "_"), float(v), ts, step or 0)
            for k, v in metrics.items()
            if isinstance(v, int | float) and math.isfinite(float(v))
        ]
        if items:
            self.client.log_batch(run_id, metrics=items)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v))

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None):
        self.client.log_artifact(run_id, str(path), artifact_path)

    def end_run(self, run_id: str, status: str = "FINISHED", end_time: float | None = None):
        end_ms = int(end_time * 1000) if end_time is not None else None
        self.client.set_terminated(run_id, status=status, end_time=end_ms)

    def run_exists(self, run_id: str | None) -> bool:
        """Whether this store knows ``run_id`` (a stage store may remember another store's)."""
        from mlflow.exceptions import MlflowException

        if not run_id:
            return False
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return False
        return run.info.lifecycle_stage == "active"

    def runs(self, filter_string: str = "", max_results: int = 10_000):
        return self.client.search_runs(
            [self.experiment_id], filter_string=filter_string, max_results=max_results
        )

    def children(self, parent_run_id: str):
        return self.runs(f"tags.`{PARENT_TAG}` = '{parent_run_id}'")

    def close_unfinished(self, parent_run_id: str, status: str = "KILLED") -> int:
        """Mark children still RUNNING (e.g. trials an early-stopping scheduler killed)."""
        n = 0
        for run in self.children(parent_run_id):
            if run.info.status == "RUNNING":
                self.end_run(run.info.run_id, status)
                n += 1
        return n
