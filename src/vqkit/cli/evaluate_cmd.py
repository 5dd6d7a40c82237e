"""``vqkit evaluate``: test metrics of a trained run."""

from __future__ import annotations

import argparse

from vqkit.cli.common import add_command, add_device_flag, print_json

HELP = """
Measure a trained run on its dataset's whole test set: mean squared error and PSNR of the
reconstructions, codebook perplexity and codes used, and the size of a code grid in bits.

examples:
  vqkit evaluate runs/RUN
  vqkit evaluate runs/RUN --json > metrics.json
"""


def register(subparsers) -> None:
    parser = add_command(
        subparsers, "evaluate", "test MSE, PSNR and codebook usage of a run", HELP, run
    )
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument("--data-dir", help="folder holding the dataset's IDX files (optional)")
    add_device_flag(parser)


def run(args: argparse.Namespace) -> int:
    from vqkit.evaluate import evaluate_run
    from vqkit.report_text import format_metrics

    metrics = evaluate_run(args.run_dir, device=args.device, data_dir=args.data_dir)
    if args.json:
        print_json(metrics)
    else:
        print(format_metrics(metrics))
    return 0
