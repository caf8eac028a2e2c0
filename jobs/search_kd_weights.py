"""Optuna search (through Ray Tune) over the imitation/KD loss weights and the KD method.

    python jobs/search_kd_weights.py                                   # kd_weights search
    python jobs/search_kd_weights.py --space depth_acceleration        # student depth × accel.
    python jobs/search_kd_weights.py --space pareto                    # PSNR vs size, Pareto
    ray job submit --working-dir . -- python jobs/search_kd_weights.py --preset cpu

The Optuna study is stored in sqlite under --root: rerun to resume or --num-samples to extend.
The same as ``raykd search``; errors a user can cause print ``search_kd_weights.py: error: ...``
(status 2).
Needs raykd importable: ``pip install -e .`` (or ``pip install raykd``); ``ray job submit
--working-dir .`` from a checkout puts the checkout on the job's ``PYTHONPATH`` itself.
"""

from __future__ import annotations

import sys

from raykd.cli.grid import search_main


def main(argv: list[str] | None = None) -> int:
    return search_main(argv, prog="search_kd_weights.py")


if __name__ == "__main__":
    sys.exit(main())
