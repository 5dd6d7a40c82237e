"""Train presets on a CUDA GPU with the data resident on the device; time them, check test MSE.

The training loop is vqkit's own (``run_epoch``): batches are gathered by index from the uint8
dataset on the GPU, the loss is summed on the device (no host read per step), and the clock
stops only after ``torch.cuda.synchronize()`` at the end of each epoch. Evaluation is outside
the clock. With ``--compile`` the first run includes compilation; ``--repeat 2`` trains again
from scratch in the same process so the second time shows the steady cost.

    python bench/gpu_train.py --preset efficient
    python bench/gpu_train.py --preset efficient --batch-size 1024 --lr 6e-3 \\
        --lr-schedule onecycle --precision bf16 --compile --repeat 2
"""

from __future__ import annotations

import argparse
import sys

import torch
from vqkit_runner import (
    TARGET_MSE,
    SlicedTrainer,
    add_training_overrides,
    clock_reader,
    config_from_args,
)

from vqkit.config import PRESETS
from vqkit.data import load_split
from vqkit.errors import VqkitError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="efficient")
    parser.add_argument("--label", help="name of this row in the table")
    parser.add_argument("--repeat", type=int, default=1, help="train this many times (timing)")
    # CPU and the limits exist so the tests can check this script without a GPU; the GPU
    # session is too short to find a broken script there.
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--train-limit", type=int, help="train on the first N images only")
    parser.add_argument("--test-limit", type=int, help="test on the first N images only")
    parser.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="let cuDNN time its algorithms for each convolution shape (torch.backends)",
    )
    add_training_overrides(parser)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_train.py: no CUDA GPU is visible to torch; nothing measured.", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    config = config_from_args(args)
    train_images = load_split("mnist", "train").images[: args.train_limit].to(device)
    test_images = load_split("mnist", "test").images[: args.test_limit].to(device)
    target = TARGET_MSE[args.preset]
    settings = config.train
    label = args.label or args.preset
    for attempt in range(1, args.repeat + 1):
        trainer = SlicedTrainer(config, train_images)
        log: list[tuple[int, float, float]] = []  # (images, training seconds) after each slice
        seconds, seen = trainer.run(on_slice=clock_reader(log))
        # Training seconds at each epoch's end (an epoch can end in a short last slice).
        per_epoch = train_images.shape[0]
        clock = [0.0] + [spent for images, spent, _ in log if images % per_epoch == 0]
        epoch_seconds = [b - a for a, b in zip(clock, clock[1:], strict=False)]
        later = epoch_seconds[1:] or epoch_seconds
        mse = trainer.test_mse(test_images)
        verdict = "ok" if mse <= target else "ABOVE TARGET"
        compiled = settings.compile_mode if settings.compile else "no"
        if settings.cuda_graph:
            compiled = "no, whole-step graph"
        if args.cudnn_benchmark:
            compiled += ", cuDNN benchmark"
        print(
            f"| {label} (run {attempt}) | {settings.epochs} | {settings.batch_size} | "
            f"{settings.lr:g} {settings.lr_schedule} | {trainer.precision} | "
            f"{compiled} | {seconds:.2f} | {epoch_seconds[0]:.2f} | "
            f"{sorted(later)[len(later) // 2]:.2f} | {seen / seconds:.0f} | "
            f"{mse:.5f} (<= {target}: {verdict}) |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except VqkitError as exc:  # settings vqkit refuses (--cuda-graph on the CPU): one sentence
        print(f"gpu_train.py: {exc}", file=sys.stderr)
        sys.exit(2)
