"""The ``--confirm`` flags of ``raykd search`` (kept apart from :mod:`raykd.cli.grid`, which
stays import-light and under the house's module size); the step is
:mod:`raykd.orchestration.confirm`."""

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
