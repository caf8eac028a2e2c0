"""The MLflow model registry: one version per distinct best run, an alias on the best.

The registered artifact is TorchScript (``torch.jit.load`` reads a graph and tensors; nothing
arbitrary is unpickled). Its single input packs what the network needs into one float tensor
``[B, 4, H, W]``: zero-filled image, real and imaginary part of the measured k-space, sampling
mask; the output is the reconstruction ``[B, 1, H, W]``. A complex network (two image channels,
real and imaginary) takes ``[B, 5, H, W]`` (zero-filled real and imaginary part, k-space real and
imaginary part, mask) and returns ``[B, 2, H, W]``. That keeps the MLflow signature and
pyfunc serving simple (MLflow has no complex dtype); :func:`pack_inputs` builds it.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import torch

from raykd.tracking import schema as S

ALIAS = "champion"
SCORE_TAG = "raykd.val_psnr"


class PackedInputs(torch.nn.Module):
    """Adapter: one real ``[B, 4, H, W]`` tensor in, the wrapped network's output out."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

        self.c = 2 if getattr(net, "complex", False) else 1  # image channels

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        c = self.c
        zero_filled = packed[:, 0:c]
        y = torch.complex(packed[:, c : c + 1], packed[:, c + 1 : c + 2])
        return self.net(zero_filled, y, packed[:, c + 2 : c + 3])


def pack_inputs(zero_filled: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    b, _, h, w = zero_filled.shape
    mask = mask.expand(b, 1, h, w).to(zero_filled.dtype)
    return torch.cat([zero_filled, y.real, y.imag, mask], dim=1)


def scripted(model: torch.nn.Module, size: tuple[int, int]) -> tuple[Any, torch.Tensor]:
    """TorchScript of ``PackedInputs(model)``, checked against eager on another batch size."""
    from raykd.deploy.export import example_inputs

    wrapper = PackedInputs(model.eval()).eval()
    cplx = bool(getattr(model, "complex", False))
    example = pack_inputs(*example_inputs(2, size, seed=0, complex=cplx))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, (example,), check_trace=False)
        check = pack_inputs(*example_inputs(3, size, seed=1, complex=cplx))
        if not torch.allclose(traced(check), wrapper(check), rtol=1e-4, atol=1e-5):
            raise RuntimeError("TorchScript export differs from the eager model")
    return traced, example[:1]


def register_model(
    tracking,
    run_id: str,
    model: torch.nn.Module,
    name: str,
    score: float | None = None,
    size: tuple[int, int] = (32, 32),
    label: str = "",
) -> str:
    """Register ``run_id``'s model (once per run) and move the ``champion`` alias to the best
    registered version by ``score`` (validation PSNR); returns the version.

    The model is logged with ``run_id=`` rather than by reopening the run, so the run's status
    and end time (its duration) are left as they were.
    """
    from raykd.tracking.mlflow_store import store_lock

    # Two jobs finishing together must not both see "no version of this run" and register it
    # twice: on a sqlite store the check and the registration run under the store's file lock
    # (a tracking server has no such lock; there, simultaneous jobs may still add a duplicate).
    with store_lock(tracking.uri):
        version = _register_once(tracking, run_id, model, name, score, size, label)
    _move_champion(tracking.client, name)
    return version


def _register_once(tracking, run_id, model, name, score, size, label) -> str:
    import mlflow
    import mlflow.pytorch
    from mlflow.models import infer_signature

    client = tracking.client
    existing = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if existing:
        version = str(max(int(v.version) for v in existing))
    else:
        traced, example = scripted(model, size)
        with torch.no_grad():
            signature = infer_signature(example.numpy(), traced(example).numpy())
        # mlflow's logging API reads the global URI, and set_tracking_uri also exports
        # $MLFLOW_TRACKING_URI: restore both, or the next job of this process (and its
        # subprocesses) would silently log into this store.
        previous_env = os.environ.get("MLFLOW_TRACKING_URI")
        previous_uri = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(tracking.uri)
        quiet = logging.getLogger("mlflow.pytorch")
        level = quiet.level
        # MLflow warns about pickle for any non-'pt2' format, TorchScript included (it is
        # saved with torch.jit.save), and torch about loading TorchScript via torch.load.
        quiet.setLevel(logging.ERROR)
        try:
            # The logged model belongs to the run's experiment, so its artifacts land in that
            # experiment's artifact root (the job's store); left to MLflow, it would go to the
            # "Default" experiment, i.e. ./mlruns/0/models of the working directory.
            logged = client.create_logged_model(
                experiment_id=tracking.experiment_id, name="model", source_run_id=run_id
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                info = mlflow.pytorch.log_model(
                    traced,
                    name="model",
                    run_id=run_id,
                    model_id=logged.model_id,
                    # For a ScriptModule this is torch.jit.save, not pickle (the 'pt2'
                    # default is refused for TorchScript).
                    serialization_format="pickle",
                    signature=signature,
                    input_example=example.numpy(),
                )
            mv = mlflow.register_model(info.model_uri, name)
        finally:
            quiet.setLevel(level)
            mlflow.set_tracking_uri(previous_uri)
            if previous_env is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = previous_env
        version = str(mv.version)
        if score is not None:
            client.set_model_version_tag(name, version, SCORE_TAG, f"{score:.6f}")
        if label:
            client.set_model_version_tag(name, version, "raykd.label", label)
        client.update_model_version(name, version, description=version_note(client, run_id, score))
    return version


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
