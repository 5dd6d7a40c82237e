"""Where a training step's time goes: torch.profiler per operator and input shape, plus floors.

Each convolution layer has its own input shape, so grouping by shape gives one row per layer
(forward ``aten::convolution`` rows, backward ``aten::convolution_backward`` rows). Prints the
model FLOPs per image, the measured fp32/bf16 matmul peaks and how far each configuration's
measured throughput is from its compute floor.

    python bench/profile_layers.py                     # efficient preset, fp32 and fast levers
    python bench/profile_layers.py --preset default --steps 10
"""

from __future__ import annotations

import argparse
import time

import torch
from flops import measure_peak_gflops, training_flops_per_image
from torch.profiler import ProfilerActivity, profile
from vqkit_runner import NO_NATIVE_BF16, SlicedTrainer, bench_config, native_bf16

from vqkit.config import PRESETS
from vqkit.data import load_split

WARMUP_STEPS = 3


def timed_steps(trainer: SlicedTrainer, steps: int) -> float:
    """Images/s over ``steps`` optimiser steps after a warm-up."""
    batch = trainer.config.train.batch_size
    warm = trainer.images[: WARMUP_STEPS * batch]
    trainer.images, full = warm, trainer.images
    trainer.run()
    trainer.images = full[: steps * batch]
    started = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - started
    trainer.images = full
    return steps * batch / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="efficient")
    parser.add_argument("--steps", type=int, default=20, help="profiled optimiser steps")
    parser.add_argument("--rows", type=int, default=18)
    args = parser.parse_args()
    images = load_split("mnist", "train").images
    peak32 = measure_peak_gflops(torch.float32)
    variants: dict[str, dict] = {"fp32 NCHW": {}}
    if native_bf16():
        peak16 = measure_peak_gflops(torch.bfloat16)
        print(f"measured matmul peak: fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s")
        variants["bf16 channels-last"] = {"precision": "bf16", "channels_last": True}
        variants["bf16 channels-last batch 256"] = {
            "precision": "bf16",
            "channels_last": True,
            "batch_size": 256,
        }
    else:
        print(f"measured matmul peak: fp32 {peak32:.0f} GFLOP/s; {NO_NATIVE_BF16}")
        variants["fp32 channels-last"] = {"channels_last": True}
    flops = training_flops_per_image(bench_config(args.preset))
    print(
        f"{args.preset}: {flops['forward'] / 1e6:.1f} MFLOP/image forward, "
        f"{flops['train'] / 1e6:.1f} MFLOP/image per training step (forward + backward)"
    )
    print("\n| configuration | img/s | GFLOP/s | floor img/s | % of floor |")
    print("|---|---|---|---|---|")
    for name, overrides in variants.items():
        trainer = SlicedTrainer(bench_config(args.preset, epochs=1, **overrides), images)
        rate = timed_steps(trainer, args.steps)
        peak = peak16 if trainer.precision == "bf16" else peak32  # bf16 only where measured
        floor = peak * 1e9 / flops["train"]
        print(
            f"| {name} | {rate:.0f} | {rate * flops['train'] / 1e9:.0f} | {floor:.0f} | "
            f"{100 * rate / floor:.0f}% |"
        )
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            trainer.images = images[: args.steps * trainer.config.train.batch_size]
            trainer.run()
            trainer.images = images
        print(f"\nprofile of {name} ({args.steps} steps), by operator and input shape:")
        table = prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total",
            row_limit=args.rows,
            max_name_column_width=34,
            max_shapes_column_width=60,
        )
        print(table)


if __name__ == "__main__":
    main()
