"""The MLflow model registry: one version per distinct best run, an alias on the best.

What is registered is built by the caller (:mod:`raykd.deploy.registry` traces a network to
TorchScript with one packed input); this module only knows MLflow: it logs the given model to
its run once, tags the version with its score and row, and points the ``champion`` alias at
the best-scoring version.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from raykd.tracking import schema as S

ALIAS = "champion"
SCORE_TAG = "raykd.val_psnr"
FORMAT_TAG = "raykd.format"  # pt2 (torch.export) or torchscript (the fallback)


def register_version(
    tracking,
    run_id: str,
    export: Callable[[], tuple[Any, torch.Tensor, str]],
    name: str,
    score: float | None = None,
    label: str = "",
) -> str:
    """Register ``run_id``'s model (once per run) and move the ``champion`` alias to the best
    registered version by ``score`` (validation PSNR); returns the version.

    ``export()`` gives the model to log, an input example (for the signature) and its format
    (``pt2``: an ``nn.Module`` MLflow saves with ``torch.export``; ``torchscript``: a
    ``ScriptModule``); it is called only when the run has no version yet. The model is logged
    with ``run_id=`` rather than by reopening the run, so the run's status and end time (its
    duration) are left as they were.
    """
    from raykd.tracking.mlflow_store import store_lock

    # Two jobs finishing together must not both see "no version of this run" and register it
    # twice: on a sqlite store the check and the registration run under the store's file lock
    # (a tracking server has no such lock; there, simultaneous jobs may still add a duplicate).
    with store_lock(tracking.uri):
        version = _register_once(tracking, run_id, export, name, score, label)
    _move_champion(tracking.client, name)
    return version


def _register_once(tracking, run_id, export, name, score, label) -> str:
    client = tracking.client
    existing = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if existing:
        return str(max(int(v.version) for v in existing))
    model, example, fmt = export()
    version = _log_and_register(tracking, run_id, model, example, name, fmt)
    client.set_model_version_tag(name, version, FORMAT_TAG, fmt)
    if score is not None:
        client.set_model_version_tag(name, version, SCORE_TAG, f"{score:.6f}")
    if label:
        client.set_model_version_tag(name, version, "raykd.label", label)
    client.update_model_version(name, version, description=version_note(client, run_id, score))
    return version


def _log_and_register(
    tracking, run_id: str, model: Any, example: torch.Tensor, name: str, fmt: str
) -> str:
    """Log ``model`` as ``run_id``'s model (signature from ``example``) and register it:
    ``pt2`` (``torch.export``, dynamic batch) or, for a ScriptModule, ``torch.jit.save``."""
    import mlflow
    import mlflow.pytorch
    from mlflow.models import infer_signature

    with torch.no_grad():
        signature = infer_signature(example.numpy(), model(example).numpy())
    with _global_uri(tracking.uri):
        # The logged model belongs to the run's experiment, so its artifacts land in that
        # experiment's artifact root (the job's store); left to MLflow, it would go to the
        # "Default" experiment, i.e. ./mlruns/0/models of the working directory.
        logged = tracking.client.create_logged_model(
            experiment_id=tracking.experiment_id, name="model", source_run_id=run_id
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            info = mlflow.pytorch.log_model(
                model,
                name="model",
                run_id=run_id,
                model_id=logged.model_id,
                # 'pt2': torch.export.save. For a ScriptModule 'pickle' is torch.jit.save, not
                # pickle ('pt2' is refused for TorchScript).
                serialization_format="pt2" if fmt == "pt2" else "pickle",
                signature=signature,
                input_example=example.numpy(),
            )
        return str(mlflow.register_model(info.model_uri, name).version)


@contextlib.contextmanager
def _global_uri(uri: str) -> Iterator[None]:
    """MLflow's logging API reads the global URI, and set_tracking_uri also exports
    ``$MLFLOW_TRACKING_URI``: both are restored after, or the next job of this process (and its
    subprocesses) would silently log into this store. Quiets ``mlflow.pytorch`` meanwhile: it
    warns about pickle for any non-'pt2' format, TorchScript included (saved with
    ``torch.jit.save``), and torch about loading TorchScript via torch.load."""
    import mlflow

    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    quiet = logging.getLogger("mlflow.pytorch")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        yield
    finally:
        quiet.setLevel(level)
        mlflow.set_tracking_uri(previous_uri)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


def version_note(client, run_id: str, score: float | None) -> str:
    """A model version's description: its row, KD method, teacher and validation PSNR."""
    tags = client.get_run(run_id).data.tags
    row, method = tags.get(S.TAG_ROW, "?"), tags.get(S.TAG_METHOD) or "none"
    lines = [f"Row **{row}**, KD method **{method}**, from run `{run_id}`."]
    if teacher := tags.get(S.TAG_TEACHER_RUN):
        try:
            teacher_name = client.get_run(teacher).info.run_name
        except Exception:  # lineage from another store
            teacher_name = "(not in this store)"
        lines.append(f"Teacher: run `{teacher}` ({teacher_name}).")
    else:
        lines.append("Teacher: none (trained from the data alone).")
    if score is not None:
        lines.append(f"Validation PSNR (best checkpoint, whole val volumes): {score:.2f} dB.")
    return "\n\n".join(lines)


def _move_champion(client, name: str) -> None:
    """Point the alias at the version with the highest score (ties: the older version)."""
    scored = []
    for v in client.search_model_versions(f"name='{name}'"):
        if SCORE_TAG in (v.tags or {}):
            scored.append((float(v.tags[SCORE_TAG]), -int(v.version), v.version))
    if scored:
        client.set_registered_model_alias(name, ALIAS, str(max(scored)[2]))
