"""``vqkit runs``: list run folders with their headline numbers."""

from __future__ import annotations

import argparse

from vqkit.cli.common import add_command
from vqkit.runs import runs_table

HELP = """
List the run folders inside ROOT (default: runs/) as a table: dataset, preset, epochs done
(done/planned when training stopped early), test MSE and codes used after the last epoch, the
prior's best test bits per code when a prior was trained, and whether report.html exists.
Folders without a config.json are not runs and are skipped.

examples:
  vqkit runs
  vqkit runs experiments/
"""


def register(subparsers) -> None:
    parser = add_command(
        subparsers, "runs", "list run folders and their headline numbers", HELP, run
    )
    parser.add_argument(
        "root",
        metavar="ROOT",
        nargs="?",
        default="runs",
        help="folder holding run folders (default: runs)",
    )


def run(args: argparse.Namespace) -> int:
    print(runs_table(args.root))
    return 0
