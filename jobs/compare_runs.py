"""Compare finished runs like the paper does: tables, Wilcoxon tests and figures from MLflow.

    python jobs/compare_runs.py --experiment raykd-grid --out comparison/
    python jobs/compare_runs.py --parent-run <job run id> --tracking-uri sqlite:///runs/mlflow.db

The same as ``raykd compare`` (it shares the argument parser and the implementation); errors a
user can cause print ``compare_runs: error: ...`` (status 2).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run from a checkout without `pip install`: this checkout's raykd comes first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raykd.cli.report import compare_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return compare_main(argv, prog="compare_runs")


if __name__ == "__main__":
    sys.exit(main())
