"""How much of a CPU training step runs inside oneDNN's kernels, and what that bounds.

Rounds of plain steps alternate with rounds under oneDNN's verbose mode, whose per-primitive
execution times are read back from the process's standard output. The share of the step spent
in those kernels bounds any speed-up that only makes them faster: if every oneDNN primitive ran
at the measured matrix-product peak (model FLOPs ÷ peak), the rest of the step — elementwise
work, the quantizer, the optimiser, the framework — would still take what it takes now.

    python bench/onednn_share.py            # efficient preset, channels-last, bf16 where native
    python bench/onednn_share.py --precision fp32 --no-channels-last
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import tempfile
import time
from collections import defaultdict

import torch
from flops import measure_peak_gflops, training_flops_per_image
from vqkit_runner import SlicedTrainer, add_training_overrides, config_from_args

from vqkit.config import PRESETS
from vqkit.data import load_split

LIBC = ctypes.CDLL(None)


def train_steps(trainer: SlicedTrainer, images: torch.Tensor) -> float:
    """Seconds to train once over ``images`` (whole batches)."""
    trainer.images = images
    started = time.perf_counter()
    trainer.run()
    return time.perf_counter() - started


def verbose_kernel_times(trainer: SlicedTrainer, images: torch.Tensor) -> dict[str, float]:
    """Milliseconds per oneDNN primitive kind over one pass, from its verbose lines.

    oneDNN prints with C stdio, so file descriptor 1 is pointed at a temporary file for the
    pass and C's buffers are flushed before it is restored.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+") as capture:
        os.dup2(capture.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                train_steps(trainer, images)
        finally:
            LIBC.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
        capture.seek(0)
        lines = capture.read().splitlines()
    kernels: dict[str, float] = defaultdict(float)
    for line in lines:
        fields = line.split(",")
        # onednn_verbose,[timestamp,]primitive,exec,cpu,KIND,IMPL,PROP,...,SHAPES,MS
        if "exec" in fields and "cpu" in fields:
            at = fields.index("exec")
            kind, prop, shapes = fields[at + 2], fields[at + 4], fields[-2]
            kernels[f"{kind} {prop} {shapes}"] += float(fields[-1])
    return kernels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="efficient")
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--train-limit", type=int, help="images to draw batches from")
    add_training_overrides(parser)
    parser.set_defaults(precision="auto", channels_last=True, epochs=1)
    args = parser.parse_args()
    config = config_from_args(args)
    if not torch.backends.mkldnn.is_available():
        print("onednn_share.py: this torch build has no oneDNN; nothing measured.", file=sys.stderr)
        return 2
    batch = config.train.batch_size
    images = load_split("mnist", "train").images[: args.train_limit]
    round_images = images[: args.steps * batch]
    trainer = SlicedTrainer(config, images)
    train_steps(trainer, images[: 3 * batch])  # warm-up: kernel creation, allocator
    plain, verbose, kernels = 0.0, 0.0, defaultdict(float)
    for _ in range(args.rounds):
        plain += train_steps(trainer, round_images)
        started = time.perf_counter()
        for name, ms in verbose_kernel_times(trainer, round_images).items():
            kernels[name] += ms
        verbose += time.perf_counter() - started
    steps = args.rounds * args.steps
    step_ms, verbose_ms = 1e3 * plain / steps, 1e3 * verbose / steps
    onednn_ms = sum(kernels.values()) / steps

    peak = measure_peak_gflops(torch.bfloat16 if trainer.precision == "bf16" else torch.float32)
    # Only the convolutions run in oneDNN; the quantizer's products are part of the rest.
    floor_ms = 1e3 * training_flops_per_image(config)["convolutions"] * batch / (peak * 1e9)
    rest_ms = verbose_ms - onednn_ms
    print(
        f"{args.preset}, {trainer.precision}, batch {batch}, "
        f"{'channels-last' if config.train.channels_last else 'NCHW'}: {steps} steps per side"
    )
    print("\n| oneDNN primitive (kind, propagation, shapes) | ms per step |")
    print("|---|---|")
    for name, ms in sorted(kernels.items(), key=lambda item: -item[1])[:12]:
        print(f"| {name} | {ms / steps:.2f} |")
    print(
        f"\nstep {step_ms:.2f} ms plain, {verbose_ms:.2f} ms with verbose lines; "
        f"inside oneDNN {onednn_ms:.2f} ms ({100 * onednn_ms / verbose_ms:.0f}% of the step), "
        f"outside {rest_ms:.2f} ms"
    )
    print(
        f"convolution FLOPs at the measured peak ({peak:.0f} GFLOP/s): {floor_ms:.2f} ms per step; "
        f"with every oneDNN kernel at that peak the step would take at least "
        f"{rest_ms + floor_ms:.2f} ms: at most {verbose_ms / (rest_ms + floor_ms):.2f}x faster"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
