"""Training throughput of vqkit against the tutorial's pipeline, taken in alternating rounds.

On a shared or throttled machine the speed of the same code drifts by ±15% over a minute, so
two configurations timed one after the other can differ by more than the effect measured.
Here both train one epoch on the same images in turns: a round of vqkit steps (its clock
running), then a round of reference steps (its clock running), and so on, so both see the same
machine conditions. Printed: each side's overall images/s and their ratio, and the median and
range of the per-round ratios (each vqkit round against the reference round right after it).

    python bench/throughput_interleaved.py        # efficient, channels-last, bf16 where native
    python bench/throughput_interleaved.py --precision fp32 --no-channels-last
    python bench/throughput_interleaved.py --preset fast --images 20000
    python bench/throughput_interleaved.py --preset default --reference default
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from tutorial_reference import (
    REFERENCE_BATCH,
    REFERENCE_PRESETS,
    make_reference,
    reference_batches,
    reference_step,
    reference_test_mse,
)
from vqkit_runner import SlicedTrainer, add_training_overrides, config_from_args

from vqkit.acceleration import resolve_precision
from vqkit.config import PRESETS
from vqkit.data import load_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="efficient")
    parser.add_argument(
        "--reference",
        choices=sorted(REFERENCE_PRESETS),
        default="efficient",
        help="the tutorial model to compare with (default for --preset default)",
    )
    parser.add_argument("--images", type=int, help="train on the first N images (default all)")
    parser.add_argument(
        "--test-images", type=int, help="test MSE of the first N test images (default all)"
    )
    parser.add_argument(
        "--round-batches", type=int, default=30, help="batches of 128 per side per round"
    )
    add_training_overrides(parser)
    parser.set_defaults(epochs=1, precision="auto", channels_last=True)
    args = parser.parse_args()
    train_images = load_split("mnist", "train").images[: args.images]
    test_images = load_split("mnist", "test").images[: args.test_images]
    config = config_from_args(args)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{train_images.shape[0]} images x {config.train.epochs} epoch(s), test MSE of "
        f"{test_images.shape[0]} test images, rounds of "
        f"{args.round_batches} batches; vqkit --preset {args.preset} "
        f"--precision {resolve_precision(config.train.precision, train_images.device)} "
        f"--{'' if config.train.channels_last else 'no-'}channels-last "
        f"--batch-size {config.train.batch_size}"
    )

    trainer = SlicedTrainer(config, train_images)
    reference, optimizer = make_reference(args.reference)
    batches = reference_batches(train_images, config.train.epochs)
    rounds: list[tuple[int, float, int, float]] = []  # vqkit images, s; reference images, s
    vq_clock = {"seen": 0, "seconds": 0.0}

    def reference_round(seen: int, seconds: float) -> bool:
        """Runs with vqkit's clock stopped: time the reference's next round of steps."""
        ref_images, started = 0, time.perf_counter()
        for _, x in zip(range(args.round_batches), batches, strict=False):
            reference_step(reference, optimizer, x)
            ref_images += x.shape[0]
        ref_seconds = time.perf_counter() - started
        rounds.append(
            (seen - vq_clock["seen"], seconds - vq_clock["seconds"], ref_images, ref_seconds)
        )
        vq_clock.update(seen=seen, seconds=seconds)
        return False

    trainer.run(args.round_batches * REFERENCE_BATCH, reference_round)
    for x in batches:  # the reference's last partial round, if its epoch is longer
        started = time.perf_counter()
        reference_step(reference, optimizer, x)
        rounds.append((0, 0.0, x.shape[0], time.perf_counter() - started))

    vq_images, vq_seconds = sum(r[0] for r in rounds), sum(r[1] for r in rounds)
    ref_images, ref_seconds = sum(r[2] for r in rounds), sum(r[3] for r in rounds)
    per_round = [
        (vq / vq_s) / (ref / ref_s) for vq, vq_s, ref, ref_s in rounds if vq and ref and ref_s
    ]
    vq_rate, ref_rate = vq_images / vq_seconds, ref_images / ref_seconds
    print("\n| side | images | training s | img/s | test MSE |")
    print("|---|---|---|---|---|")
    print(
        f"| vqkit | {vq_images} | {vq_seconds:.1f} | {vq_rate:.0f} | "
        f"{trainer.test_mse(test_images):.5f} |"
    )
    print(
        f"| tutorial reference ({args.reference}) | {ref_images} | {ref_seconds:.1f} | "
        f"{ref_rate:.0f} | {reference_test_mse(reference, test_images):.5f} |"
    )
    print(
        f"\nratio of overall rates: {vq_rate / ref_rate:.2f}x; per-round ratios over "
        f"{len(per_round)} rounds: median {statistics.median(per_round):.2f}x, "
        f"range {min(per_round):.2f}x to {max(per_round):.2f}x"
    )


if __name__ == "__main__":
    main()
