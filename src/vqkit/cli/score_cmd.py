"""``vqkit score``: sample quality of every strategy, in numbers."""

from __future__ import annotations

import argparse
import sys

from vqkit.cli.common import add_command, add_device_flag, print_json, seed, whole_number_at_least

HELP = """
Draw --n code grids with every sampling strategy of a run (random, used, and prior when the run
has one; a conditional prior adds one row per class), decode them, and judge them with a small
classifier trained once per dataset (cached in $VQKIT_CACHE/classifiers, by default
~/.cache/vqkit/classifiers; where that default cannot be written, trained anew each time).
Real test images, real training images and the model's reconstructions come first for reference.

Columns: n, the images scored in the row (the real test images all; a per-class row n divided
by the number of classes, at least 2);
FID, the Frechet distance between the classifier's penultimate features of the images
and of the real test images (lower is better; per-class rows compare with that class's test
images); confidence, the mean top softmax probability; IS, the classifier Inception Score
(at most the number of classes); label acc, the fraction classified as the requested or true label.
FID is biased upwards at small n, so compare rows and runs scored with the same --n.
Also written to RUN_DIR/scores.json, with the digests of the weights it scored: the report
marks the scores stale once the run trains on or gets a new prior.

examples:
  vqkit score runs/RUN
  vqkit score runs/RUN --n 2000 --json
"""


def register(subparsers) -> None:
    parser = add_command(
        subparsers,
        "score",
        "classifier-based quality scores (FID, confidence) of samples",
        HELP,
        run,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument(
        "--n",
        type=whole_number_at_least(2),  # a covariance needs two images
        default=10000,
        help="images scored per row: samples per strategy, training images and reconstructions"
        " (default 10000; FID grows as n shrinks, so compare runs at equal n)",
    )
    parser.add_argument(
        "--seed", type=seed, default=0, help="seeds the samples that are scored (default 0)"
    )
    parser.add_argument("--json", action="store_true", help="print scores.json instead")
    parser.add_argument("--data-dir", help="folder holding the dataset's IDX files (optional)")
    add_device_flag(parser)


def run(args: argparse.Namespace) -> int:
    from vqkit.score import format_scores, score_run

    scores = score_run(
        args.run_dir,
        args.n,
        seed=args.seed,
        device=args.device,
        data_dir=args.data_dir,
        log=lambda line: print(line, file=sys.stderr),
    )
    if args.json:
        print_json(scores)
    else:
        print(format_scores(scores))
    return 0
