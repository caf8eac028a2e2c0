"""Optuna search (through Ray Tune) over the imitation/KD loss weights and the KD method.

    python jobs/search_kd_weights.py                                   # kd_weights search
    python jobs/search_kd_weights.py --space depth_acceleration        # student depth × accel.
    python jobs/search_kd_weights.py --space pareto                    # PSNR vs size, Pareto
    ray job submit --working-dir . -- python jobs/search_kd_weights.py --preset cpu

The Optuna study is stored in sqlite under --root: rerun to resume or --num-samples to extend.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

from raykd.orchestration.cli import search_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(search_main())
