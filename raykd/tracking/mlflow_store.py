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

import os
import subprocess
from pathlib import Path
from typing import Any

from raykd.errors import RaykdError

PARENT_TAG = "mlflow.parentRunId"


def default_tracking_uri(root: str | Path) -> str:
    """Local sqlite store under the run directory (``$MLFLOW_TRACKING_URI`` wins)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    root = Path(root).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:500]  # MLflow's param value limit
    return out


def git_commit() -> str | None:
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
        self.client = MlflowClient(tracking_uri=tracking_uri)
        try:
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                location = None
                if artifact_root is not None:
                    location = Path(artifact_root).expanduser().resolve().as_uri()
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=location
                )
            else:
                self.experiment_id = exp.experiment_id
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
    ) -> str:
        all_tags = {k: str(v) for k, v in (tags or {}).items()}
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        if commit := git_commit():
            all_tags["mlflow.source.git.commit"] = commit
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
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

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

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

    # ---- registry -------------------------------------------------------------------------
    def register_model(self, run_id: str, model, name: str) -> str:
        """Log ``model`` to ``run_id`` (pickle format: MLflow 3's traced default froze batch
        size 1) and register it; returns the new model version."""
        import mlflow
        import mlflow.pytorch

        # mlflow's fluent API needs the global URI, and set_tracking_uri also exports
        # $MLFLOW_TRACKING_URI: restore both, or the next job of this process (and its
        # subprocesses) would silently log into this store.
        previous_env = os.environ.get("MLFLOW_TRACKING_URI")
        previous_uri = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(self.uri)
        try:
            with mlflow.start_run(run_id=run_id):
                info = mlflow.pytorch.log_model(model, name="model", serialization_format="pickle")
            version = mlflow.register_model(info.model_uri, name)
        finally:
            mlflow.set_tracking_uri(previous_uri)
            if previous_env is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = previous_env
        return str(version.version)
