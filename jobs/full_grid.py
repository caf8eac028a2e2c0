"""The paper's Table-1 grid on Ray: teachers, SFT teachers, students, Std-KD and SFT-KD.

    python jobs/full_grid.py --preset smoke                  # minutes on a laptop CPU
    ray job submit --working-dir . -- python jobs/full_grid.py --preset cpu
    python jobs/full_grid.py --preset paper --datasets sunnybrook --accelerations 4 5

Every stage is tracked in MLflow (sqlite under --root unless --tracking-uri/MLFLOW_TRACKING_URI)
and trained once: rerunning the job (or another job needing the same stage) reuses it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

from raykd.orchestration.cli import grid_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(grid_main())
