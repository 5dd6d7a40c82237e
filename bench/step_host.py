"""Is a training step bound by the host or by the device? Wall time against kernel time.

On a GPU a small model can leave the device idle while Python, the dispatcher and the kernel
launches of one step run on the host. This trains a few steps (after a warm-up that holds any
compilation), then prints the wall-clock time per step, the device's kernel time per step
(torch.profiler, CUDA only) and their ratio, and the operators that cost the host the most.

    python bench/step_host.py --preset efficient                       # CUDA when present
    python bench/step_host.py --preset efficient --compile-mode reduce-overhead --batch-size 256
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile
from vqkit_runner import SlicedTrainer, add_training_overrides, config_from_args

from vqkit.config import PRESETS
from vqkit.data import load_split


def train_steps(trainer: SlicedTrainer, images: torch.Tensor, steps: int) -> float:
    """Seconds for ``steps`` optimiser steps over ``images``, the device drained at both ends."""
    batch = trainer.config.train.batch_size
    trainer.images = images[: steps * batch]
    synchronize(images.device)
    started = time.perf_counter()
    trainer.run()
    synchronize(images.device)
    return time.perf_counter() - started


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def print_heaviest(events, what: str, where: str, steps: int, top: int) -> None:
    """The ``top`` events by their own time on the host (``where`` 'host') or the device."""
    field = "self_cpu_time_total" if where == "host" else "self_device_time_total"
    print(f"\n| {what} | {where} ms per step (self) | calls per step |")
    print("|---|---|---|")
    for e in sorted(events, key=lambda e: getattr(e, field), reverse=True)[:top]:
        print(f"| {e.key[:60]} | {getattr(e, field) / steps / 1e3:.3f} | {e.count / steps:g} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="efficient")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--steps", type=int, default=100, help="steps timed and profiled")
    parser.add_argument("--warmup-steps", type=int, default=30, help="steps before timing")
    parser.add_argument("--top", type=int, default=12, help="operators listed")
    add_training_overrides(parser)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("step_host.py: no CUDA GPU is visible to torch; nothing measured.", file=sys.stderr)
        return 2
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    args.epochs = 1
    config = config_from_args(args)
    settings = config.train
    settings.lr_schedule = "constant"  # steps are timed in pieces; a schedule's rate is no cost
    images = load_split("mnist", "train").images.to(device)
    trainer = SlicedTrainer(config, images[: args.warmup_steps * settings.batch_size])
    trainer.run()  # warm-up: compilation, CUDA-graph recording, allocator growth
    seconds = train_steps(trainer, images, args.steps)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        train_steps(trainer, images, args.steps)
    events = prof.key_averages()
    wall_ms = seconds / args.steps * 1e3
    compiled = settings.compile_mode if settings.compile else "no"
    graph = ", whole-step CUDA graph" if settings.cuda_graph else ""
    print(
        f"{args.preset}, batch {settings.batch_size}, {trainer.precision}, compile {compiled}"
        f"{graph}, "
        f"{device.type}: {wall_ms:.3f} ms per step (wall, unprofiled)"
    )
    if cuda:
        kernel_ms = sum(e.self_device_time_total for e in events) / args.steps / 1e3
        print(
            f"device kernels {kernel_ms:.3f} ms per step: the GPU is busy "
            f"{kernel_ms / wall_ms:.0%} of the step; the rest is host work it waits for"
        )
        print_heaviest(events, "kernel", "device", args.steps, args.top)
    print_heaviest(events, "operator", "host", args.steps, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
