"""``vqkit train-prior``: fit a PixelCNN prior to a run's code grids."""

from __future__ import annotations

import argparse

from vqkit.cli.common import add_command, add_device_flag, positive_int
from vqkit.prior import PriorConfig
from vqkit.prior_training import train_prior

HELP = """
Train a gated PixelCNN prior over the 7x7 code grids of a trained run. The run's model encodes
the whole training and test sets once (cached in the run folder as codes_*.npy/labels_*.npy);
the prior then learns p(code_i | codes before i in raster order), optionally given the class.

Writes prior_config.json, prior.safetensors (the epoch with the lowest test NLL) and
prior_metrics.jsonl: per epoch, train and test NLL in bits per code and per image, next to the
uniform baseline (log2 K) and the unigram baseline (entropy of the training code frequencies).
Training stops early after --patience epochs without a better test NLL.

examples:
  vqkit train-prior runs/RUN
  vqkit train-prior runs/RUN --conditional     (then: vqkit sample ... --digit 3)
  vqkit train-prior runs/RUN --channels 64 --layers 8 --epochs 20
"""

# Flags that set one PriorConfig field when given.
FIELDS = (
    "epochs",
    "channels",
    "layers",
    "dropout",
    "lr",
    "batch_size",
    "patience",
    "seed",
    "train_limit",
    "test_limit",
)


def register(subparsers) -> None:
    parser = add_command(
        subparsers, "train-prior", "train a PixelCNN prior over a run's codes", HELP, run
    )
    parser.add_argument("run_dir", metavar="RUN_DIR")
    defaults = PriorConfig()
    parser.add_argument("--conditional", action="store_true", help="condition on the class label")
    parser.add_argument("--epochs", type=positive_int, help=f"at most (default {defaults.epochs})")
    parser.add_argument("--channels", type=positive_int, help=f"default {defaults.channels}")
    parser.add_argument(
        "--layers", type=positive_int, help=f"gated layers (default {defaults.layers})"
    )
    parser.add_argument("--dropout", type=float, help=f"default {defaults.dropout}")
    parser.add_argument("--lr", type=float, help=f"AdamW learning rate (default {defaults.lr})")
    parser.add_argument("--batch-size", type=positive_int, help=f"default {defaults.batch_size}")
    parser.add_argument(
        "--patience", type=positive_int, help=f"early-stopping epochs (default {defaults.patience})"
    )
    parser.add_argument("--seed", type=int, help=f"default {defaults.seed}")
    parser.add_argument(
        "--train-limit", type=positive_int, help="train on the first N training grids only"
    )
    parser.add_argument(
        "--test-limit", type=positive_int, help="measure on the first N test grids only"
    )
    parser.add_argument("--data-dir", help="folder holding the dataset's IDX files (optional)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_flag(parser)


def config_from_args(args: argparse.Namespace) -> PriorConfig:
    values = {name: getattr(args, name) for name in FIELDS if getattr(args, name) is not None}
    return PriorConfig(conditional=args.conditional, **values)


def run(args: argparse.Namespace) -> int:
    result = train_prior(
        args.run_dir,
        config_from_args(args),
        device=args.device,
        data_dir=args.data_dir,
        progress=False if args.quiet else None,
    )
    for record in result.history:
        print(
            f"epoch {record['epoch']:>3}: train {record['train_bits_per_code']:.3f}, "
            f"test {record['test_bits_per_code']:.3f} bits/code "
            f"({record['epoch_seconds']:.1f} s)"
        )
    best = result.best
    print(
        f"best test NLL:   {best['test_bits_per_code']:.3f} bits/code, "
        f"{best['test_bits_per_image']:.1f} bits/image (epoch {best['epoch']})"
    )
    print(f"uniform:         {best['uniform_bits_per_code']:.3f} bits/code (log2 K)")
    print(f"unigram:         {best['unigram_bits_per_code']:.3f} bits/code (code frequencies)")
    print(f"prior saved in:  {result.run_dir}")
    return 0
