"""``vqkit runs``: list run folders with their headline numbers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vqkit.cli.common import add_command
from vqkit.constants import RUNS_ROOT

HELP = """
List the run folders inside ROOT (default: runs/) as a table: dataset, preset, epochs done
(done/planned when training stopped early), test MSE and codes used after the last epoch, the
prior's best test bits per code when a prior was trained, and whether report.html exists
(yes, no, or outdated when a file it shows changed, or was removed, after it was written).
A second table lists the settings in which the runs differ (seeds, rates, codebook sizes, ...).
Folders without a config.json are not runs and are skipped; with no runs/ folder yet there is
nothing to list.

With --json, one object per run instead: the same numbers unrounded, each mark as a field of
its own, and all of the run's active settings (for pandas.read_json or jq).

examples:
  vqkit runs
  vqkit runs experiments/
  vqkit runs --json > runs.json
"""


def register(subparsers) -> None:
    parser = add_command(
        subparsers, "runs", "list run folders and their headline numbers", HELP, run,
        uses_torch=False,
    )  # fmt: skip
    parser.add_argument(
        "root",
        metavar="ROOT",
        nargs="?",
        help=f"folder holding run folders (default: {RUNS_ROOT})",
    )
    parser.add_argument("--json", action="store_true", help="print the runs as JSON")


def run(args: argparse.Namespace) -> int:
    from vqkit.runs import runs_records, runs_table

    if args.root is None and not Path(RUNS_ROOT).exists():  # a first look, before any run
        if args.json:
            print("[]")
        else:
            print(f"No runs yet: there is no '{RUNS_ROOT}' folder here; 'vqkit train' makes one.")
        return 0
    root = RUNS_ROOT if args.root is None else args.root
    print(json.dumps(runs_records(root), indent=2) if args.json else runs_table(root))
    return 0
