"""Paper-style comparison of finished runs, read from MLflow (never retrains anything).

``collect`` finds stage runs and their artifacts, ``tables``/``stats``/``figures`` turn them into
the paper's tables, paired tests and figures (``inference``: tests over independent (seed, volume)
units; ``balance``: loss-term ratios of KD runs; ``summary``: the plain-language verdicts),
``latency`` measures inference time, ``export`` writes deployable models and ``compare`` ties it
together (``raykd compare``).

This module stays import-light: the CLI imports it to register subcommands, so pandas, MLflow
and matplotlib are only imported by the submodules that need them.
"""

from __future__ import annotations

import warnings


class ReportWarning(UserWarning):
    """Something the report needs (a run, an artifact, a value) is missing or inconsistent."""


def warn(message: str) -> None:
    """Report a gap loudly: missing numbers are shown as "—", never dropped or zeroed."""
    warnings.warn(message, ReportWarning, stacklevel=3)


__all__ = ["ReportWarning", "warn"]
