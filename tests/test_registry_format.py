"""The champion's format: a ``torch.export`` program (MLflow's ``pt2``) that loads from the
registry in a fresh process and directory and runs any batch size; TorchScript only for a
network that does not export, and the version's ``raykd.format`` tag says which."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from raykd.tracking import Tracking

pytestmark = pytest.mark.slow  # torch.export, MLflow logging and a fresh process: minutes

REPO = Path(__file__).resolve().parents[1]

LOAD = """
import sys, torch, mlflow, mlflow.pytorch
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pytorch.load_model(f"models:/{sys.argv[2]}@champion")
packed = torch.rand(int(sys.argv[3]), 4, 32, 32)
print("TYPE", type(model).__name__, "SCRIPT", isinstance(model, torch.jit.ScriptModule))
print("SHAPE", tuple(model(packed).shape))
"""


class Branchy(torch.nn.Module):
    """A toy network with data-dependent control flow: ``torch.export`` refuses it (it cannot
    decide the branch), ``torch.jit.trace`` records the one branch it saw."""

    complex = False

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, zero_filled, y, mask):
        if zero_filled.sum() > 0:
            return zero_filled * self.scale
        return zero_filled


def _champion(tmp_path: Path, model: torch.nn.Module, name: str) -> tuple[str, str]:
    from raykd.deploy.registry import register_model

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = Tracking(uri, "e", tmp_path / "artifacts")
    run_id = tracking.start_run("stage")
    version = register_model(tracking, run_id, model, name, score=20.0)
    tag = tracking.client.get_model_version(name, version).tags.get("raykd.format")
    return uri, tag


def _load_elsewhere(tmp_path: Path, uri: str, name: str, batch: int) -> str:
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", LOAD, uri, name, str(batch)],
        cwd=fresh,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(fresh)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_champion_is_an_exported_program_for_any_batch(tmp_path):
    from raykd.models.dccnn import DCCNN

    uri, tag = _champion(tmp_path, DCCNN(2, 1, 2), "m")
    assert tag == "pt2"
    text = _load_elsewhere(tmp_path, uri, "m", 5)
    assert "SCRIPT False" in text and "SHAPE (5, 1, 32, 32)" in text, text


def test_a_network_that_does_not_export_is_registered_as_torchscript(tmp_path):
    uri, tag = _champion(tmp_path, Branchy(), "b")
    assert tag == "torchscript"
    text = _load_elsewhere(tmp_path, uri, "b", 3)
    assert "SCRIPT True" in text and "SHAPE (3, 1, 32, 32)" in text, text
