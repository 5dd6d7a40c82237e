"""``vqkit evaluate``: test metrics of a trained run."""

from __future__ import annotations

import argparse

from vqkit.checkpoint import load_config, load_model
from vqkit.cli.common import add_command, add_device_flag, print_json
from vqkit.data import load_split
from vqkit.metrics import evaluate_reconstruction
from vqkit.report_text import format_metrics
from vqkit.training import resolve_device

HELP = """
Measure a trained run on its dataset's whole test set: mean squared error and PSNR of the
reconstructions, codebook perplexity and codes used, and the size of a code grid in bits.

examples:
  vqkit evaluate runs/RUN
  vqkit evaluate runs/RUN --json > metrics.json
"""


def register(subparsers) -> None:
    parser = add_command(subparsers, "evaluate", "test metrics of a trained run", HELP, run)
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument("--data-dir", help="folder holding the dataset's IDX files (optional)")
    add_device_flag(parser)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.run_dir)
    model = load_model(args.run_dir, device=resolve_device(args.device))
    test = load_split(config.train.dataset, "test", config.train.data_folder(args.data_dir))
    metrics = evaluate_reconstruction(model, test.images, config.train.eval_batch_size)
    if args.json:
        print_json(metrics)
    else:
        print(format_metrics(metrics))
    return 0
