"""Compare finished runs like the paper does: tables, Wilcoxon tests and figures from MLflow.

The same as ``raykd compare`` (it shares the argument parser and the implementation)::

    python jobs/compare_runs.py --experiment raykd-grid --out comparison/
    python jobs/compare_runs.py --parent-run <job run id> --tracking-uri sqlite:///runs/mlflow.db

Errors a user can cause print ``compare_runs: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import raykd  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    from raykd.errors import run_cli
    from raykd.report.cli import add_compare_args, run_compare

    parser = argparse.ArgumentParser(
        prog="compare_runs",
        description="Paper-style tables, Wilcoxon tests and figures from MLflow stage runs; "
        "logged as a comparison run.",
    )
    add_compare_args(parser)
    args = parser.parse_args(argv)
    return run_cli(run_compare, args, "compare_runs")


if __name__ == "__main__":
    sys.exit(main())
