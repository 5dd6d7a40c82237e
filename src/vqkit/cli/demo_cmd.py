"""``vqkit demo``: the whole pipeline on one dataset, ending in the HTML report."""

from __future__ import annotations

import argparse
import sys

from vqkit.cli.common import add_command, add_device_flag, positive_int, seed, whole_number_at_least
from vqkit.config import PRESETS
from vqkit.data.catalog import DATASETS, OWN_DATASET
from vqkit.demo_settings import MOST, DemoSettings
from vqkit.wording import stopped_by

DEFAULTS = DemoSettings  # the class's defaults: an instance would check them (and load PyTorch)

HELP = f"""
Run everything vqkit does, in a few minutes on a laptop CPU: train a VQ-VAE (the 'best'
preset: k-means codebook init, EMA updates, dead-code restarts; {DEFAULTS.epochs} epochs), draw
its codebook, fit a class-conditional PixelCNN prior over its code grids, sample with every
strategy, interpolate between two test images of different classes, score the samples with a
classifier-based FID, and write report.html. Prints the headline numbers and where the report
is. The evaluation classifier is trained once per dataset and cached in
$VQKIT_CACHE/classifiers (by default ~/.cache/vqkit/classifiers).

examples:
  vqkit demo
  vqkit demo --dataset fashion-mnist --out runs/fashion-demo
"""


def register(subparsers) -> None:
    parser = add_command(
        subparsers,
        "demo",
        "all of the below into one run folder and its report.html (start here)",
        HELP,
        run,
    )
    named = [name for name in DATASETS if name != OWN_DATASET]  # the demo reads no --data-dir
    parser.add_argument("--dataset", choices=named, default="mnist", help="(default mnist)")
    parser.add_argument("--out", help="run folder to create (default: a new folder in runs/)")
    parser.add_argument(
        "--preset", default="best", choices=sorted(PRESETS), help="VQ-VAE preset (default: best)"
    )
    parser.add_argument(
        "--epochs",
        type=positive_int,
        default=DEFAULTS.epochs,
        help=f"epochs of the VQ-VAE (default {DEFAULTS.epochs}, whatever the preset's own)",
    )
    parser.add_argument(
        "--prior-epochs",
        type=positive_int,
        default=DEFAULTS.prior_epochs,
        help=f"epochs of the PixelCNN prior (default {DEFAULTS.prior_epochs})",
    )
    # score_run needs 2 samples per strategy; checked here, not after minutes of training.
    parser.add_argument(
        "--score-samples",
        type=whole_number_at_least(2),
        default=DEFAULTS.score_samples,
        help=f"samples per strategy for the scores (default {DEFAULTS.score_samples}, at most "
        f"{MOST['score_samples']:,})",
    )
    parser.add_argument(
        "--seed", type=seed, default=0, help="seeds every stage: training, sampling (default 0)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device_flag(parser)


def run(args: argparse.Namespace) -> int:
    from vqkit.demo import DemoInterrupted, format_headline, run_demo

    settings = DemoSettings(
        dataset=args.dataset,
        preset=args.preset,
        epochs=args.epochs,
        prior_epochs=args.prior_epochs,
        score_samples=args.score_samples,
        seed=args.seed,
    )
    try:
        result = run_demo(
            args.out, settings, device=args.device, progress=False if args.quiet else None
        )
    except DemoInterrupted as stop:
        print(f"vqkit: {stopped_by(stop.signal_number)} {stop.sentence()}", file=sys.stderr)
        return 128 + stop.signal_number
    print(format_headline(result))
    return 0
