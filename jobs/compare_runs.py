"""Compare finished runs like the paper does: tables, Wilcoxon tests and figures from MLflow.

    python jobs/compare_runs.py --experiment raykd-grid --out comparison/
    python jobs/compare_runs.py --parent-run <job run id> --tracking-uri sqlite:///runs/mlflow.db

The same as ``raykd compare`` (it shares the argument parser and the implementation); errors a
user can cause print ``compare_runs: error: ...`` (status 2).
Needs raykd importable: ``pip install -e .`` (or ``pip install raykd``); ``ray job submit
--working-dir .`` from a checkout puts the checkout on the job's ``PYTHONPATH`` itself.
"""

from __future__ import annotations

import sys

from raykd.cli.report import compare_main


def main(argv: list[str] | None = None) -> int:
    return compare_main(argv, prog="compare_runs")


if __name__ == "__main__":
    sys.exit(main())
