"""Where a CPU training step's time goes, per operator, without the profiler; and whether its
convolutions are bound by arithmetic or by memory traffic.

``torch.profiler`` changes what it measures on a small CPU step: on the development machine it
reported the ReLU backward at ten times its plain time. This times every operator a step
dispatches with a plain clock around the call (a ``TorchDispatchMode``), then re-runs each
convolution call of one step on its own, twice: on warm caches (the same call repeated) and
after a write over a buffer larger than the last-level cache. It prints, per call, the time in
the step, warm and cold, the FLOPs and the rate of each, so the three can be compared in one run.

    python bench/step_operators.py                       # efficient model, bf16 channels-last
    python bench/step_operators.py --precision fp32 --no-channels-last --batch-size 256
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from functools import partial

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode
from vqkit_runner import SlicedTrainer, add_training_overrides, config_from_args

from vqkit.config import PRESETS
from vqkit.data import load_split

CONVOLUTIONS = ("aten.convolution.default", "aten.convolution_backward.default")


class OperatorClock(TorchDispatchMode):
    """Seconds and calls per operator; keeps the arguments of convolution calls when asked."""

    def __init__(self, keep_convolutions: bool = False) -> None:
        super().__init__()
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.keep_convolutions = keep_convolutions
        self.convolution_seconds: list[float] = []  # every convolution call, in order
        self.convolutions: list[tuple[object, tuple]] = []  # (op, args) when kept

    def add(self, other: OperatorClock) -> None:
        for name, seconds in other.seconds.items():
            self.seconds[name] += seconds
            self.calls[name] += other.calls[name]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        started = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        seconds = time.perf_counter() - started
        name = str(func)
        self.seconds[name] += seconds
        self.calls[name] += 1
        if name not in CONVOLUTIONS:
            return out
        self.convolution_seconds.append(seconds)
        if self.keep_convolutions:  # copies after the clock stopped, but they stir the caches
            kept = tuple(
                a.detach().clone(memory_format=torch.preserve_format)
                if isinstance(a, torch.Tensor)
                else a
                for a in args
            )
            self.convolutions.append((func, kept))
        return out


def median_seconds(call, repeats: int, flush: torch.Tensor | None) -> float:
    """Median time of ``call()``; with ``flush``, a write over it first evicts the caches."""
    times = []
    for _ in range(repeats + 3):
        if flush is not None:
            flush.add_(1)
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times[3:])


def count_flops(call) -> int:
    with FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops()


def describe(func, args) -> str:
    """'forward' or the backward's outputs, transposed or not, with the input and weight shapes."""
    tensors = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
    if str(func) == CONVOLUTIONS[0]:
        kind = "transposed " if args[6] else ""
        return f"{kind}forward {tensors[0]} * {tensors[1]}"
    kind = "transposed " if args[7] else ""
    wanted = "+".join(n for n, on in zip(("data", "weight", "bias"), args[-1], strict=True) if on)
    return f"{kind}backward ({wanted}) {tensors[1]} * {tensors[2]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="efficient")
    parser.add_argument("--steps", type=int, default=20, help="steps per round and kind")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=30, help="timings of each lone call")
    parser.add_argument("--flush-mib", type=int, default=128, help="buffer written to evict")
    parser.add_argument("--top", type=int, default=12, help="operators listed")
    add_training_overrides(parser)
    parser.set_defaults(precision="auto", channels_last=True)
    args = parser.parse_args()
    args.epochs = 1
    config = config_from_args(args)
    config.train.lr_schedule = "constant"  # steps are timed in pieces
    batch = config.train.batch_size
    images = load_split("mnist", "train").images
    trainer = SlicedTrainer(config, images[: args.warmup_steps * batch])
    trainer.run()

    def train_steps(steps: int, offset: int) -> float:
        trainer.images = images[offset * batch : (offset + steps) * batch]
        started = time.perf_counter()
        trainer.run()
        return time.perf_counter() - started

    one_step = OperatorClock(keep_convolutions=True)
    with one_step:
        train_steps(1, 0)
    calls = [partial(func, *call_args) for func, call_args in one_step.convolutions]
    flops = [count_flops(call) for call in calls]
    flush = torch.empty(args.flush_mib << 20, dtype=torch.uint8)

    # Rounds alternate plain steps, clocked steps and the lone calls, so that a slow minute of
    # a shared machine falls on every column alike; each figure is a median over the rounds.
    plain, clocked, in_step, warm, cold = [], [], [], [], []
    clock = OperatorClock()
    for round_index in range(args.rounds):
        offset = (1 + 2 * round_index * args.steps) % (len(images) // batch - 2 * args.steps)
        plain.append(train_steps(args.steps, offset) / args.steps)
        round_clock = OperatorClock()
        with round_clock:
            clocked.append(train_steps(args.steps, offset + args.steps) / args.steps)
        clock.add(round_clock)
        in_step.append(
            [
                statistics.median(round_clock.convolution_seconds[i :: len(calls)])
                for i in range(len(calls))
            ]
        )
        warm.append([median_seconds(call, args.repeats, None) for call in calls])
        cold.append([median_seconds(call, args.repeats, flush) for call in calls])
    steps = args.rounds * args.steps

    print(
        f"{args.preset}, batch {batch}, {trainer.precision}, channels-last "
        f"{config.train.channels_last}, {torch.get_num_threads()} threads, {args.rounds} rounds: "
        f"{statistics.median(plain) * 1e3:.2f} ms per step plain, "
        f"{statistics.median(clocked) * 1e3:.2f} ms with the operator clock, of which "
        f"{sum(clock.seconds.values()) / steps * 1e3:.2f} ms inside operators\n"
    )
    print("| operator | ms per step | calls per step |")
    print("|---|---|---|")
    heaviest = sorted(clock.seconds.items(), key=lambda item: item[1], reverse=True)
    for name, seconds in heaviest[: args.top]:
        print(f"| {name} | {seconds / steps * 1e3:.3f} | {clock.calls[name] / steps:g} |")

    print(
        f"\n| convolution call | in the step ms | alone, warm ms | alone, after a {args.flush_mib}"
        " MiB write ms | MFLOP | GFLOP/s in step / warm / cold |"
    )
    print("|---|---|---|---|---|---|")
    columns = [
        [statistics.median(r[i] for r in rounds) for i in range(len(calls))]
        for rounds in (in_step, warm, cold)
    ]
    for i, (func, call_args) in enumerate(one_step.convolutions):
        seconds = [column[i] for column in columns]
        rates = " / ".join(f"{flops[i] / s / 1e9:.0f}" for s in seconds)
        print(
            f"| {describe(func, call_args)} | "
            + " | ".join(f"{s * 1e3:.3f}" for s in seconds)
            + f" | {flops[i] / 1e6:.0f} | {rates} |"
        )
    step_ms, warm_ms, cold_ms = (sum(column) * 1e3 for column in columns)
    print(
        f"\nall convolutions: {step_ms:.2f} ms in the step, {warm_ms:.2f} alone on warm caches, "
        f"{cold_ms:.2f} after evicting them ({sum(flops) / 1e9:.2f} GFLOP): the step's "
        f"convolutions take {step_ms / warm_ms:.2f}x their warm-cache time"
    )


if __name__ == "__main__":
    main()
