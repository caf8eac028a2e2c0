"""The flags of the studies a grid or search can run (kept apart from :mod:`raykd.cli.grid`,
which stays import-light and under the house's module size): cross-validation folds, budget
scales and held-out slices (:mod:`raykd.plan.folds`, :meth:`raykd.plan.budgets.Epochs.scaled`),
and a search's confirmation step (:mod:`raykd.orchestration.confirm`)."""

from __future__ import annotations

import argparse

MAX_CONFIRM = 10  # each configuration costs --confirm-seeds full trainings of the row


def _seeds(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected >= 1, got {value}")
    return value


def add_confirm_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("confirmed search")
    g.add_argument(
        "--confirm",
        type=int,
        choices=range(MAX_CONFIRM + 1),
        default=0,
        metavar="K",
        help="after the search, re-train its K best distinct configurations and the default "
        "with --confirm-seeds new seeds and test each against the default over (seed, test "
        f"volume) units (0: off, the default; at most {MAX_CONFIRM})",
    )
    g.add_argument(
        "--confirm-seeds",
        type=_seeds,
        default=6,
        metavar="N",
        help="seeds per configuration of --confirm (default 6: a verdict needs >= 6 units, "
        "which 6 seeds give even with one test volume)",
    )


def add_study_args(p: argparse.ArgumentParser) -> None:
    """``--test-slices``, ``--folds``, ``--budget-scale`` (GridSpec fields of the same names)."""
    p.add_argument(
        "--test-slices",
        type=int,
        help="slices per held-out test volume (evenly spaced; default: all)",
    )
    p.add_argument(
        "--folds",
        type=int,
        metavar="K",
        help="cross-validation by subject: fold k tests on subject k, validates on the next, "
        "trains on the rest (with --test: the test set stays fixed, folds rotate validation)",
    )
    p.add_argument(
        "--budget-scale",
        type=float,
        nargs="+",
        metavar="S",
        dest="budget_scales",
        help="budget study: the grid once per factor with every stage's epochs and LR step "
        "scaled (e.g. 1 2 4; equal compute stays SFT + KD)",
    )
