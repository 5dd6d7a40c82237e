"""Wall-clock seconds of training until the test MSE first reaches a target, vqkit vs the tutorial.

Both sides are measured the same way in the same run: the whole 10,000-image test set is
evaluated every ``--eval-every`` training images; the clock stops during evaluation (the time
reported is training time only; evaluation time is printed separately). "steady s" is the images
needed times the median seconds per image over the intervals: on a shared machine it discounts
bursts of outside load that stretch a few intervals. The first evaluation
at or below ``--target`` ends a run.

    python bench/time_to_quality.py                       # vqkit 'fast' vs tutorial efficient
    python bench/time_to_quality.py --preset default --reference default --target 0.0046 \\
        --reference-epochs 6                                 # long: the reference needs 5.6
    python bench/time_to_quality.py --skip-reference --batch-size 512 --lr 4e-3   # tuning
"""

from __future__ import annotations

import argparse
import time

import torch
from tutorial_reference import (
    REFERENCE_PRESETS,
    make_reference,
    reference_batches,
    reference_step,
    reference_test_mse,
)
from vqkit_runner import (
    SlicedTrainer,
    add_training_overrides,
    config_from_args,
    median_seconds_per_image,
)

from vqkit.config import PRESETS
from vqkit.data import load_split


def vqkit_time_to_target(args, train_images, test_images) -> dict:
    config = config_from_args(args)
    trainer = SlicedTrainer(config, train_images)
    log: list[tuple[int, float, float]] = []
    eval_seconds = [0.0]

    def check(seen: int, seconds: float) -> bool:
        started = time.perf_counter()
        mse = trainer.test_mse(test_images)
        eval_seconds[0] += time.perf_counter() - started
        log.append((seen, seconds, mse))
        print(f"  vqkit {seen:7d} img  {seconds:6.1f} s  test MSE {mse:.5f}", flush=True)
        return mse <= args.target

    trainer.run(args.eval_every, check)
    return summarize("vqkit " + args.preset, config.train, log, eval_seconds[0], args.target)


def reference_time_to_target(args, train_images, test_images) -> dict:
    model, optimizer = make_reference(args.reference)
    log: list[tuple[int, float, float]] = []
    eval_seconds, seconds, seen, next_eval = 0.0, 0.0, 0, args.eval_every
    started = time.perf_counter()
    for x in reference_batches(train_images, args.reference_epochs):
        reference_step(model, optimizer, x)
        seen += x.shape[0]
        if seen >= next_eval:
            seconds += time.perf_counter() - started
            paused = time.perf_counter()
            mse = reference_test_mse(model, test_images)
            eval_seconds += time.perf_counter() - paused
            log.append((seen, seconds, mse))
            print(f"  reference {seen:7d} img  {seconds:6.1f} s  test MSE {mse:.5f}", flush=True)
            if mse <= args.target:
                break
            next_eval += args.eval_every
            started = time.perf_counter()
    return summarize("tutorial " + args.reference, None, log, eval_seconds, args.target)


def summarize(name: str, settings, log, eval_seconds: float, target: float) -> dict:
    hit = next((entry for entry in log if entry[2] <= target), None)
    seen, seconds, mse = hit if hit is not None else log[-1]
    return {
        "steady_seconds": seen * median_seconds_per_image(log),
        "name": name,
        "reached": hit is not None,
        "seconds": seconds,
        "images": seen,
        "mse": mse,
        "eval_seconds": eval_seconds,
        "settings": settings,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="fast")
    parser.add_argument("--reference", choices=sorted(REFERENCE_PRESETS), default="efficient")
    parser.add_argument("--target", type=float, default=0.0057, help="test MSE to reach")
    parser.add_argument(
        "--eval-every", type=int, default=7680, help="training images between evals"
    )
    parser.add_argument("--reference-epochs", type=int, default=4, help="give up after this many")
    parser.add_argument("--skip-reference", action="store_true")
    group = parser.add_argument_group("vqkit overrides of the preset")
    add_training_overrides(group)
    args = parser.parse_args()

    train_images = load_split("mnist", "train").images
    test_images = load_split("mnist", "test").images
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, target {args.target}")
    results = [vqkit_time_to_target(args, train_images, test_images)]
    if not args.skip_reference:
        results.append(reference_time_to_target(args, train_images, test_images))
    print(
        "\n| run | reached | training s | steady s (images x median s/image) | images | "
        "test MSE | eval s (excluded) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['name']} | {'yes' if r['reached'] else 'NO'} | {r['seconds']:.1f} | "
            f"{r['steady_seconds']:.1f} | {r['images']} | {r['mse']:.5f} | "
            f"{r['eval_seconds']:.1f} |"
        )
    if results[0]["settings"] is not None:
        s = results[0]["settings"]
        print(
            f"vqkit settings: batch {s.batch_size}, lr {s.lr}, {s.lr_schedule}, "
            f"{s.precision}, channels_last={s.channels_last}, epochs {s.epochs}, "
            f"quantizer {args.quantizer_option or 'as preset'}"
        )
    if len(results) == 2:
        ours, ref = results
        if not ours["reached"]:
            print("vqkit did not reach the target: no time-to-quality ratio.")
        else:
            bound = "" if ref["reached"] else " (reference never reached the target: lower bound)"
            ratio = ref["seconds"] / ours["seconds"]
            steady = ref["steady_seconds"] / ours["steady_seconds"]
            print(
                f"time-to-quality ratio reference / vqkit: {ratio:.2f}x measured, "
                f"{steady:.2f}x at steady (median) speeds{bound}"
            )


if __name__ == "__main__":
    main()
