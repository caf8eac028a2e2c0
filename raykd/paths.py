"""Where shared data, caches and job runs live (no hostnames, no absolute paths in code)."""

from __future__ import annotations

import os
from pathlib import Path


def shared_data_dir() -> Path:
    """The shared data folder: ``$RAYKD_SHARED_DATA``, else ``../shared/data`` from the checkout
    raykd runs from, else (an installed wheel: no checkout) ``../shared/data`` from the current
    directory."""
    env = os.environ.get("RAYKD_SHARED_DATA")
    if env:
        return Path(env).expanduser().resolve()
    repo_root = Path(__file__).resolve().parent.parent
    if (repo_root / "pyproject.toml").is_file():
        return (repo_root.parent / "shared" / "data").resolve()
    return (Path.cwd().parent / "shared" / "data").resolve()


def cache_dir() -> Path:
    """Cache for prepared built-in datasets: ``$RAYKD_CACHE`` or ``~/.cache/raykd``."""
    env = os.environ.get("RAYKD_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "raykd"
    base.mkdir(parents=True, exist_ok=True)
    return base


def default_run_root() -> Path:
    """Where jobs write and reports read when no ``--root`` is given: ``$RAYKD_HOME``, else
    ``~/raykd-runs`` (read at call time, so a job and its report agree in one environment)."""
    return Path(os.environ.get("RAYKD_HOME", "~/raykd-runs")).expanduser()


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename, so a reader (another
    trial, a killed process's successor) sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
