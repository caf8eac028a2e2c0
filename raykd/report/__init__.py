"""Paper-style comparison of finished runs, read from MLflow (never trains, evaluates or builds
a model: nothing here imports the train, models, data or deploy packages; tests/test_house_report.py
checks it).

Layers, each importing only those above it: ``store`` (MLflow client, URI, run search) →
``folds`` (cross-validation folds and budget scales: replicate keys, the nested bootstrap) →
``records`` (one run as a tidy record, settings) → ``artifacts`` (cached eval JSONs, examples,
histories) → ``runs`` (``StageRuns``: split, seed pooling, cell lookup, logged zero-filled) →
``collect`` (which runs a report reads) → ``subjects`` (test subjects as units with folds, t
intervals) and ``multiplicity`` (Holm) → ``inference`` (paired units, bootstrap, unit tests) →
``slices`` (per-slice pairs) and ``trend`` (tested changes between budgets) →
``table_model`` / ``cells`` (table model, rendering, pooled cells) → ``tables`` (Tables 1, 3),
``table8`` (with ``benchmarks``: latency runs logged by ``raykd.deploy``), ``gap``, ``stats``
(paired-tests table), ``balance``, ``figures``, ``budget`` (the budget study) → ``summary`` →
``compare`` (``raykd compare``).

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
