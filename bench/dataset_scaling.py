"""Epoch time against training-set size: it should grow linearly (constant seconds per 1k images).

One epoch of the chosen preset on the first 1k, 10k and 60k MNIST images, after a short
warm-up so one-time costs (kernel selection, allocator growth) are not billed to the smallest
set. Printed per size: seconds, seconds per 1,000 images, and that figure relative to the
largest set's (1.00 = perfectly linear).

    python bench/dataset_scaling.py
    python bench/dataset_scaling.py --preset fast --sizes 1000 10000 60000
"""

from __future__ import annotations

import argparse

import torch
from vqkit_runner import SlicedTrainer, bench_config

from vqkit.config import PRESETS
from vqkit.data import load_split

WARMUP_IMAGES = 2048


def epoch_seconds(preset: str, images: torch.Tensor) -> float:
    trainer = SlicedTrainer(bench_config(preset, epochs=1), images)
    seconds, _seen = trainer.run()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="efficient")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 60000])
    args = parser.parse_args()
    train_images = load_split("mnist", "train").images
    epoch_seconds(args.preset, train_images[:WARMUP_IMAGES])
    rows = [(n, epoch_seconds(args.preset, train_images[:n])) for n in args.sizes]
    largest = rows[-1][1] / rows[-1][0] * 1000
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, preset {args.preset}")
    print("\n| training images | epoch s | s per 1k images | relative to largest |")
    print("|---|---|---|---|")
    for n, seconds in rows:
        per_k = seconds / n * 1000
        print(f"| {n} | {seconds:.2f} | {per_k:.3f} | {per_k / largest:.2f} |")


if __name__ == "__main__":
    main()
