"""``raykd`` command line: one parser, one module per group of subcommands.

``data`` (prepare), ``train`` (train, evaluate, reconstruct), ``grid`` (grid, search) and
``report`` (compare, benchmark-inference, export) each add their subparsers; every handler
imports what it runs inside its body, so building the parser (and ``raykd --help``) imports
neither torch, Ray nor MLflow. Errors a user can cause print one line (file/key/value and what
was expected) and exit with status 2; no traceback unless ``RAYKD_DEBUG=1``.
"""

from __future__ import annotations

import argparse

from raykd.cli import data, grid, report, train
from raykd.errors import run_cli

EPILOG = """examples:
  raykd prepare mni152                       # built-in brain data (from the nilearn wheel)
  raykd prepare dicom SunnybrookDICOM/ data/  # DICOM folders -> one h5 per series
  raykd train configs/teacher.yaml --set optim.epochs=10
  raykd evaluate runs/teacher/best.pt --data data/val/ --out metrics.json
  raykd reconstruct runs/student/best.pt --input vol.h5 --out recon.h5
  raykd grid --preset smoke                  # the paper's grid on Ray (jobs/full_grid.py)
  raykd compare --parent-run RUN_ID --out comparison/
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Every subcommand and its help on one line (the widest name is ``benchmark-inference``)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=26, width=100)

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            # argparse sizes the help column by the subcommands' names at the parent's indent,
            # but prints them one level deeper: without this the longest name wraps its help.
            self._action_max_length += self._indent_increment


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raykd",
        description="Knowledge distillation for cascaded MRI reconstruction (SFT-KD-Recon).",
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (data, train, grid, report):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_cli(args.func, args, "raykd")
