"""Subcommands contributed by the orchestration/report layers (kept out of the core CLI)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Hook for extra subcommands (grid, search, compare); none in the core install."""
