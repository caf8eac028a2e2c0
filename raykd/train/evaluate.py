"""Evaluation: reconstruct whole volumes and compute per-volume and per-slice metrics."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from raykd.data.dataset import SliceDataset
from raykd.data.transforms import degrade, is_complex_batch, magnitude, to_complex
from raykd.metrics import evaluate_volume, summarise
from raykd.strict_json import json_safe
from raykd.train.precision import autocast


@torch.no_grad()
def reconstruct_volume(
    model: torch.nn.Module | None,
    dataset: SliceDataset,
    volume: int,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    precision: str = "fp32",
) -> dict[str, np.ndarray]:
    """Target, zero-filled and reconstruction of one volume, each float32 [N, H, W].

    ``model=None`` returns the zero-filled image as the reconstruction. Complex data: the three
    are magnitudes (metrics are computed on them) and ``recon_complex`` (complex64 [N, H, W])
    holds the complex reconstruction. Measured k-space (``dataset.kspace``): the three are the
    centre crop fastMRI scores (``dataset.scored``), ``recon_complex`` too.
    """
    device = torch.device(device)
    if model is not None:
        model.eval()
    out: dict[str, list[np.ndarray]] = {"target": [], "zero_filled": [], "recon": []}
    indices = list(dataset.volume_slices(volume))
    for start in range(0, len(indices), batch_size):
        samples = [dataset[i] for i in indices[start : start + batch_size]]
        target = torch.stack([s.target for s in samples]).to(device)
        mask = torch.stack([s.mask for s in samples]).to(device)
        zero_filled, y = degrade(target, mask, dataset.sr)
        if model is None:
            recon = zero_filled
        else:
            with autocast(device, precision):
                recon = model(zero_filled, y, mask)
        if is_complex_batch(target):
            z = dataset.scored(to_complex(recon))[:, 0]
            out.setdefault("recon_complex", []).append(z.cpu().numpy())
        # Measured k-space: the centre crop fastMRI scores (dataset.scored), else the image.
        for key, x in (("target", target), ("zero_filled", zero_filled), ("recon", recon)):
            out[key].append(dataset.scored(magnitude(x))[:, 0].float().cpu().numpy())
    return {
        k: np.concatenate(v).astype(np.complex64 if k == "recon_complex" else np.float32)
        for k, v in out.items()
    }


def volume_subject(path: str | Path, key: str) -> str:
    """The subject of a volume: the h5 file's ``patient_id`` attribute where it has one
    (fastMRI, DICOM conversions), else the volume itself (one file = one subject)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            pid = f.attrs.get("patient_id")
    except OSError:
        return key
    if isinstance(pid, bytes):
        pid = pid.decode(errors="replace")
    return str(pid) if isinstance(pid, str) and pid else key


def evaluate_model(
    model: torch.nn.Module | None,
    dataset: SliceDataset,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics for every volume: ``{'volumes': [...], 'summary': {metric: [mean, std]}}``.

    Each volume entry holds its name, its subject (:func:`volume_subject`: the report's unit of
    inference with folds), per-volume metrics and per-slice values (kept for paired
    significance tests).
    """
    volumes = []
    for v in tqdm(
        range(len(dataset.volumes)), desc="evaluate", disable=not progress, file=sys.stderr
    ):
        rec = reconstruct_volume(model, dataset, v, device, batch_size)
        result = evaluate_volume(rec["target"], rec["recon"])
        volumes.append(
            {
                "volume": dataset.volumes[v].key,
                "path": str(dataset.volumes[v].path),
                "subject": volume_subject(dataset.volumes[v].path, dataset.volumes[v].key),
                "slices": list(dataset.volumes[v].slice_ids),
                "metrics": result.volume,
                "per_slice": result.slices,
            }
        )
    summary = summarise([v["metrics"] for v in volumes])
    out = {"volumes": volumes, "summary": {k: list(v) for k, v in summary.items()}}
    return {**out, "kspace": dataset.kspace} if dataset.kspace != "simulated" else out


def evaluate_split(
    model: torch.nn.Module, dataset: SliceDataset, device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """:func:`evaluate_model` of ``model`` plus, under ``zero_filled``, the zero-filled input's
    report on the same volumes and slices with the same metric code (a stage's baseline)."""
    report = evaluate_model(model, dataset, device, progress=False)
    # The key is raykd.tracking.schema.EVAL_ZERO_FILLED (the report reads it there).
    report["zero_filled"] = evaluate_model(None, dataset, device, progress=False)
    return report


def slice_count(report: dict[str, Any], split: str, max_per_volume: int | None = None) -> str:
    """What a report's numbers average over, e.g. ``split val: 1 volume, 4 slices`` (a PSNR on
    4 slices of a volume and one on all 34 differ; the console says which one it prints)."""
    text = f"split {split}: {coverage(report)}"
    if max_per_volume:
        text += f", at most {max_per_volume} per volume"
    return text


def coverage(report: dict[str, Any]) -> str:
    """``1 volume, 4 slices``: how many volumes and slices a report's metrics average over."""
    volumes = report.get("volumes") or []
    slices = sum(len(v.get("slices") or []) for v in volumes)
    return f"{_count(len(volumes), 'volume')}, {_count(slices, 'slice')}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def write_json(data: dict[str, Any], path: str | Path) -> Path:
    """Atomic, strictly valid JSON write: non-finite values become ``null`` with a reason."""
    path = Path(path)
    clean, reasons = json_safe(data)
    if reasons:
        clean["null_reasons"] = reasons
    text = json.dumps(clean, indent=1, allow_nan=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
