"""Where the shipped presets and search spaces (``search_spaces/*.yaml``) are read from.

The top-level ``search_spaces/`` folder is the source of truth. A wheel ships it as the package
``raykd.search_spaces`` (``package-dir`` in pyproject.toml/setup.py), read here through
:mod:`importlib.resources`. Code running from a checkout (tests, ``jobs/*.py``, an editable
install) reads the checkout's own folder first: an editable install made from another checkout
would otherwise map ``raykd.search_spaces`` to that checkout's files.
"""

from __future__ import annotations

import importlib.resources
from importlib.resources.abc import Traversable
from pathlib import Path

from raykd.errors import ConfigError

PACKAGE = "raykd.search_spaces"
GRID_FILE_NAME = "paper_grid.yaml"


def checkout_dir() -> Path | None:
    """``search_spaces/`` of the checkout this ``raykd`` was imported from, if it is one."""
    root = Path(__file__).resolve().parents[2]
    folder = root / "search_spaces"
    if (root / "pyproject.toml").is_file() and (folder / GRID_FILE_NAME).is_file():
        return folder
    return None


def search_spaces_dir() -> Traversable:
    """The folder holding ``paper_grid.yaml`` and the search spaces (a Path or a Traversable)."""
    local = checkout_dir()
    if local is not None:
        return local
    try:
        folder = importlib.resources.files(PACKAGE)
    except ModuleNotFoundError:
        folder = None
    if folder is None or not (folder / GRID_FILE_NAME).is_file():
        raise ConfigError(
            f"search spaces: neither a checkout's search_spaces/ nor the package data "
            f"{PACKAGE} (a wheel built without it?) holds {GRID_FILE_NAME}"
        )
    return folder


def search_space_file(name: str) -> Traversable:
    """``<name>.yaml`` among the shipped search spaces (may not exist: check ``is_file()``)."""
    return search_spaces_dir() / f"{name}.yaml"


def shipped_names() -> list[str]:
    """Stems of every shipped YAML file (``paper_grid`` included)."""
    return sorted(
        p.name[: -len(".yaml")]
        for p in search_spaces_dir().iterdir()
        if p.name.endswith(".yaml") and p.is_file()
    )
