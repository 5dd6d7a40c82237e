"""Training throughput (images/s) of vqkit against the tutorial's pipeline, in the same run.

Every configuration trains on the same images for the same number of epochs; the time is the
training loop only (data loading from disk and evaluation are outside the clock, the
reference's per-sample conversion is inside, as in the tutorial). Test MSE is printed for each
at that equal number of epochs; ``--full`` trains the presets' full 3 epochs.

    python bench/train_throughput.py                 # 1 epoch each (~2 minutes on 2 cores)
    python bench/train_throughput.py --full          # 3 epochs each, test MSE of the presets
    python bench/train_throughput.py --images 10000  # quick look
"""

from __future__ import annotations

import argparse
import time

import torch
from tutorial_reference import (
    REFERENCE_BATCH,
    REFERENCE_PRESETS,
    reference_test_mse,
    train_reference,
)
from vqkit_runner import (
    NO_NATIVE_BF16,
    SlicedTrainer,
    bench_config,
    clock_reader,
    median_seconds_per_image,
    native_bf16,
)

from vqkit.data import load_split

# The vqkit configurations compared: name -> (preset, training overrides). The first two learn
# exactly as the tutorial does (same batch, rate, schedule); 'fast' is the tuned preset.
# Images between clock readings for the steady (median-interval) speed.
INTERVAL_IMAGES = 7680

CONFIGURATIONS = {
    "vqkit efficient (fp32)": ("efficient", {}),
    "vqkit efficient --precision bf16 --channels-last": (
        "efficient",
        {"precision": "bf16", "channels_last": True},
    ),
    "vqkit --preset fast": ("fast", {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, help="train on the first N images (default all)")
    parser.add_argument("--full", action="store_true", help="3 epochs (the presets' length)")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument(
        "--compile", action="store_true", help="add a torch.compile row (compile time included)"
    )
    args = parser.parse_args()
    configurations = dict(CONFIGURATIONS)
    if not native_bf16():
        print(NO_NATIVE_BF16)
        configurations = {
            name: (preset, overrides)
            for name, (preset, overrides) in configurations.items()
            if overrides.get("precision") != "bf16"
        }
    if args.compile and native_bf16():
        configurations["vqkit efficient bf16 channels-last compiled"] = (
            "efficient",
            {"precision": "bf16", "channels_last": True, "compile": True},
        )
    epochs = REFERENCE_PRESETS["efficient"][3] if args.full else 1
    train_images = load_split("mnist", "train").images[: args.images]
    test_images = load_split("mnist", "test").images
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{train_images.shape[0]} images x {epochs} epochs per configuration"
    )

    rows = []
    for name, (preset, overrides) in configurations.items():
        trainer = SlicedTrainer(bench_config(preset, epochs=epochs, **overrides), train_images)
        log: list[tuple[int, float, float]] = []
        seconds, seen = trainer.run(INTERVAL_IMAGES, clock_reader(log))
        steady = 1.0 / median_seconds_per_image(log)
        rows.append((name, seen / seconds, steady, seconds, trainer.test_mse(test_images)))
        print(f"  {name}: {seen / seconds:.0f} img/s, steady {steady:.0f}", flush=True)
    if not args.skip_reference:
        log, started = [], time.perf_counter()
        model, seconds, seen = train_reference(
            "efficient",
            train_images,
            epochs,
            on_batch=lambda n: (
                n % INTERVAL_IMAGES < REFERENCE_BATCH
                and log.append((n, time.perf_counter() - started, 0.0))
            ),
        )
        steady = 1.0 / median_seconds_per_image(log) if log else seen / seconds
        mse = reference_test_mse(model, test_images)
        rows.append(("tutorial reference (efficient)", seen / seconds, steady, seconds, mse))

    reference = rows[-1] if not args.skip_reference else None
    print(
        f"\n| configuration | img/s | steady img/s (median over {INTERVAL_IMAGES}-image "
        f"intervals) | training s | test MSE after {epochs} epoch(s) | ratio | steady ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, rate, steady, seconds, mse in rows:
        ratio = f"{rate / reference[1]:.2f}x" if reference else "-"
        steady_ratio = f"{steady / reference[2]:.2f}x" if reference else "-"
        print(
            f"| {name} | {rate:.0f} | {steady:.0f} | {seconds:.1f} | {mse:.5f} | {ratio} | "
            f"{steady_ratio} |"
        )


if __name__ == "__main__":
    main()
