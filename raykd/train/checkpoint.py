"""Checkpoints: atomic save, ``weights_only`` load, architecture check.

A checkpoint is a dict of tensors and plain Python values only (so ``torch.load(...,
weights_only=True)`` can read it): model state, architecture, optimiser, scheduler, epoch,
RNG states, best validation value and the resolved config (as JSON text).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from raykd.errors import CheckpointError

FORMAT_VERSION = 1


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """CPU, Python and NumPy RNG states, plus the CUDA RNG state of ``device`` only (a rank's
    own GPU: Ray shows every GPU of a node to each worker, and a resume may see fewer)."""
    # legacy=True: always the (name, keys, pos, has_gauss, cached) tuple
    np_state = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state(legacy=True))
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def cuda_state_for(saved: Any, index: int) -> torch.Tensor | None:
    """The CUDA RNG state to restore on device ``index`` from a checkpoint's ``cuda`` entry: one
    tensor (this rank's device when it was saved), or, from checkpoints written before that, a
    list with one state per GPU the process saw: the one at ``index`` if the list is long enough,
    else the first (every device is seeded alike)."""
    if isinstance(saved, torch.Tensor):
        return saved
    if isinstance(saved, list | tuple) and saved:
        return saved[index] if index < len(saved) else saved[0]
    return None


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore what :func:`rng_state` saved; the CUDA state only on a CUDA ``device`` (a CPU
    checkpoint resumes on a GPU with the GPU's seeded state, a GPU one on CPU without it)."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    if device is not None and device.type == "cuda" and "cuda" in state:
        index = device.index if device.index is not None else torch.cuda.current_device()
        cuda = cuda_state_for(state["cuda"], index)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)


OS_CAUSES = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system or process limit",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EIO: "I/O error",
}


def os_cause(exc: OSError) -> str:
    """A short human cause for an OS error ('disk full' for ENOSPC)."""
    cause = OS_CAUSES.get(exc.errno) if exc.errno is not None else None
    return cause or exc.strerror or type(exc).__name__


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write atomically: a crash mid-write leaves the previous file intact.

    The checkpoint is serialised in memory first and written with plain file writes, so a
    full disk surfaces as the OS error it is ("disk full") rather than torch's zip writer
    complaining about stream positions.
    """
    path = Path(path)
    payload = {"format_version": FORMAT_VERSION, **payload}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise CheckpointError(
            f"cannot write checkpoint {path}: {os_cause(exc)} ({len(buffer.getbuffer())} "
            f"bytes; errno {errno.errorcode.get(exc.errno or 0, exc.errno)}); the previous "
            "checkpoint there, if any, is intact"
        ) from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def clean_stale_temp(folder: str | Path) -> list[Path]:
    """Remove temporary files a killed save left behind (``.best.pt.*.tmp``...)."""
    removed = []
    for pattern in (".*.pt.*.tmp", "*.json.tmp", "*.h5.tmp"):
        for tmp in Path(folder).glob(pattern):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: file not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path}: cannot be read (truncated, corrupt or not a raykd checkpoint: "
            f"{type(exc).__name__})"
        ) from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt or "arch" not in ckpt:
        raise CheckpointError(f"checkpoint {path}: not a raykd checkpoint (no 'model'/'arch')")
    return ckpt


def check_arch(ckpt: dict[str, Any], expected: dict[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint of another architecture before any tensor is copied."""
    if ckpt["arch"] != expected:
        raise CheckpointError(
            f"checkpoint {path}: architecture {ckpt['arch']} does not match the model "
            f"{expected}; expected a checkpoint of the same type/depth/cascades/channels"
        )


def checkpoint_config(ckpt: dict[str, Any]) -> dict[str, Any]:
    return json.loads(ckpt.get("config", "{}"))
