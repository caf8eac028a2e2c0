"""MLflow store access for the report: tracking URI, client, experiments, paged run search.

Nothing here knows what a stage is; :mod:`raykd.report.collect` decides which runs to read.
"""

from __future__ import annotations

import os
from pathlib import Path

from raykd.errors import RaykdError
from raykd.paths import default_run_root

PARENT_TAG = "mlflow.parentRunId"


def resolve_uri(tracking_uri: str | None, root: str | Path | None = None) -> str:
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<root>/mlflow.db``.

    Unlike :func:`raykd.tracking.default_tracking_uri` this never creates a store: reading a
    store that is not there is a user error, not an empty report.
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri and "://" in str(root):
        raise RaykdError(
            f"--root {root}: an object-store root needs --tracking-uri (or MLFLOW_TRACKING_URI) "
            "of a tracking server every node reaches; sqlite under a local --root serves one "
            "machine"
        )
    if not uri:
        db = Path(root or default_run_root()).expanduser().resolve() / "mlflow.db"
        uri = f"sqlite:///{db}"
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.is_file():
            raise RaykdError(
                f"no MLflow store at {db} (tracking URI {uri}); pass --tracking-uri or set "
                "MLFLOW_TRACKING_URI to the store the runs were logged to"
            )
    return uri


def make_client(tracking_uri: str):
    """An ``MlflowClient`` with unreachable stores turned into a clear RaykdError."""
    from mlflow.tracking import MlflowClient

    # One progress bar per downloaded JSON would bury the report's own output.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as exc:  # MLflow raises many types for broken stores
        raise RaykdError(
            f"MLflow tracking store {tracking_uri} cannot be read ({type(exc).__name__}: "
            f"{str(exc)[:300]})"
        ) from exc
    return client


def resolve_experiments(client, experiments: list[str]) -> list[str]:
    """Experiment names (or numeric ids) → ids; unknown ones are an error listing what exists."""
    ids = []
    for name in experiments:
        exp = client.get_experiment_by_name(name)
        if exp is None and name.isdigit():
            try:
                exp = client.get_experiment(name)
            except Exception:
                exp = None
        if exp is None or exp.lifecycle_stage == "deleted":
            known = sorted(e.name for e in client.search_experiments())
            raise RaykdError(f"experiment '{name}' not found in the MLflow store; known: {known}")
        ids.append(exp.experiment_id)
    return ids


def search_all(client, experiment_ids: list[str], filter_string: str) -> list:
    """Every matching run (MLflow pages results)."""
    runs, token = [], None
    while True:
        page = client.search_runs(
            experiment_ids, filter_string=filter_string, max_results=1000, page_token=token
        )
        runs.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return runs
