"""Subcommands contributed by the orchestration and report layers.

Each layer exposes ``register(subparsers)`` in its own ``cli`` module, so the core CLI does not
import Ray or MLflow until one of those subcommands runs.
"""

from __future__ import annotations

import argparse
import importlib

LAYERS = ("raykd.orchestration.cli", "raykd.report.cli")


def register(sub: argparse._SubParsersAction) -> None:
    for name in LAYERS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency inside the layer: show it
                raise
            continue
        module.register(sub)
