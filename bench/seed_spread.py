"""How much a preset's test MSE moves with the seed: train it once per seed, print the spread.

A single run's test MSE next to the tutorial's figure says little when seeds move it by as
much as the gap; this prints each seed's result, their mean, standard deviation and range, and
how many seeds reach the preset's target.

    python bench/seed_spread.py --preset efficient --seeds 0 1 2 3 4
    python bench/seed_spread.py --preset default --seeds 0 1 2 --precision bf16 --channels-last
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
from vqkit_runner import TARGET_MSE, SlicedTrainer, add_training_overrides, config_from_args

from vqkit.config import PRESETS
from vqkit.data import load_split


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="efficient")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--train-limit", type=int, help="train on the first N images only")
    parser.add_argument("--test-limit", type=int, help="test on the first N images only")
    add_training_overrides(parser)
    args = parser.parse_args()
    config = config_from_args(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train_images = load_split("mnist", "train").images[: args.train_limit].to(device)
    test_images = load_split("mnist", "test").images[: args.test_limit].to(device)
    target = TARGET_MSE[args.preset]
    settings = config.train
    print(
        f"{args.preset}: {settings.epochs} epochs, batch {settings.batch_size}, lr {settings.lr:g} "
        f"{settings.lr_schedule}, {settings.precision}, channels-last {settings.channels_last}, "
        f"{device.type}; target test MSE <= {target}\n"
    )
    print("| seed | test MSE | training s |")
    print("|---|---|---|")
    results = []
    for seed in args.seeds:
        settings.seed = seed
        trainer = SlicedTrainer(config, train_images)
        seconds, _ = trainer.run()
        results.append(trainer.test_mse(test_images))
        print(f"| {seed} | {results[-1]:.5f} | {seconds:.1f} |", flush=True)
    spread = statistics.stdev(results) if len(results) > 1 else 0.0
    reached = sum(mse <= target for mse in results)
    print(
        f"\nmean {statistics.mean(results):.5f}, sd {spread:.5f}, range "
        f"{min(results):.5f}–{max(results):.5f}; {reached} of {len(results)} seeds <= {target}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
