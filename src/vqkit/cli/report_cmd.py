"""``vqkit report``: write a run's self-contained HTML report."""

from __future__ import annotations

import argparse

from vqkit.cli.common import add_command

HELP = """
Write RUN_DIR/report.html: one self-contained page (images embedded, no network needed) that
shows what the run holds. Sections appear for whatever the run has: training curves,
reconstructions, codebook usage and code atlas, samples of each strategy with their scores,
interpolation strips, the prior's bits per code against its baselines, timings, and last the
configuration.
Missing stages are left out; a damaged optional file is noted instead of stopping the report.

Open the file in any browser. Run it again after adding stages to a run to refresh the page.

examples:
  vqkit report runs/RUN
  xdg-open "$(vqkit report runs/RUN)"      # write it, then open it (macOS: open)
"""


def register(subparsers) -> None:
    parser = add_command(
        subparsers, "report", "write the run's self-contained HTML report", HELP, run
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by vqkit train")


def run(args: argparse.Namespace) -> int:
    from vqkit.report import write_report

    print(write_report(args.run_dir))
    return 0
