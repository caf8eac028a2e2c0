"""The paper's Table-1 grid on Ray: teachers, SFT teachers, students, Std-KD and SFT-KD.

    python jobs/full_grid.py --preset smoke                  # minutes on a laptop CPU
    ray job submit --working-dir . -- python jobs/full_grid.py --preset cpu
    python jobs/full_grid.py --preset paper --datasets sunnybrook --accelerations 4 5

Every stage is tracked in MLflow (sqlite under --root unless --tracking-uri/MLFLOW_TRACKING_URI)
and trained once: rerunning the job (or another job needing the same stage) reuses it.
The same as ``raykd grid``; errors a user can cause print ``full_grid.py: error: ...`` (status 2).
Needs raykd importable: ``pip install -e .`` (or ``pip install raykd``); ``ray job submit
--working-dir .`` from a checkout puts the checkout on the job's ``PYTHONPATH`` itself.
"""

from __future__ import annotations

import sys

from raykd.cli.grid import grid_main


def main(argv: list[str] | None = None) -> int:
    return grid_main(argv, prog="full_grid.py")


if __name__ == "__main__":
    sys.exit(main())
