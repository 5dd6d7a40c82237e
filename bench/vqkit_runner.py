"""vqkit training driven in slices, so benchmarks can stop the clock to evaluate mid-epoch.

It builds exactly what ``vqkit.training.train`` builds (model, Adam, speed settings, schedule)
and runs ``vqkit.training.run_epoch`` over consecutive slices of one shuffled epoch: every image
is still seen once per epoch, and the scheduler steps across slices as in a plain run.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vqkit.acceleration import (
    bf16_is_fast,
    make_optimizer,
    make_scheduler,
    prepare_model,
    resolve_precision,
)
from vqkit.config import COMPILE_MODES, LR_SCHEDULES, PRECISIONS, RunConfig, preset_config
from vqkit.cuda_graph import graphed_step_or_none, require_cuda_graph_support
from vqkit.distributed import Context
from vqkit.metrics import evaluate_reconstruction
from vqkit.model import VQVAE
from vqkit.training import run_epoch

# Test MSE each preset must reach: the tutorial's own results on the same data (the efficient
# model's 3-epoch figure for the presets built on it).
TARGET_MSE = {"efficient": 0.0057, "fast": 0.0057, "best": 0.0057, "default": 0.0046}


# Printed where bf16 rows are left out: where oneDNN has no bf16 kernels (AVX2 and older CPUs),
# bf16 runs tens of times slower than fp32 (a 512² product: 60×), so the rows would time that.
NO_NATIVE_BF16 = "oneDNN has no bf16 kernels for this CPU (AVX2 or older): bf16 rows left out"


def native_bf16() -> bool:
    """Whether oneDNN runs bf16 on this machine's CPU (what --precision auto asks)."""
    return bf16_is_fast(torch.device("cpu"))


@dataclass
class SlicedTrainer:
    config: RunConfig
    images: torch.Tensor  # (N, 28, 28) uint8 on the training device

    def __post_init__(self) -> None:
        settings = self.config.train
        device = self.images.device
        require_cuda_graph_support(settings, device, Context())
        torch.manual_seed(settings.seed)
        self.model = VQVAE(self.config.model).to(device)
        self.optimizer = make_optimizer(self.model, settings)
        self.step_model = prepare_model(self.model, settings)
        self.precision = resolve_precision(settings.precision, device)
        steps_per_epoch = -(-self.images.shape[0] // settings.batch_size)
        self.scheduler = make_scheduler(self.optimizer, settings, settings.epochs * steps_per_epoch)
        self.graphed = graphed_step_or_none(
            settings, self.step_model, self.optimizer, self.scheduler, self.precision
        )
        self.order = torch.Generator().manual_seed(settings.seed)

    def run(
        self, slice_images: int | None = None, on_slice: Callable[[int, float], bool] | None = None
    ) -> tuple[float, int]:
        """Train all epochs; returns (training seconds, images seen).

        After each slice of ``slice_images`` images the clock stops and ``on_slice(seen,
        seconds)`` runs; training ends early when it returns True.
        """
        settings = self.config.train
        count = self.images.shape[0]
        width = count if slice_images is None else slice_images
        # Whole batches per slice so slicing does not change the number of optimiser steps.
        width = max(settings.batch_size, width - width % settings.batch_size)
        seconds, seen = 0.0, 0
        for _ in range(settings.epochs):
            order = torch.randperm(count, generator=self.order).to(self.images.device)
            for part in order.split(width):
                started = time.perf_counter()
                run_epoch(
                    self.step_model,
                    self.optimizer,
                    self.images[part],
                    settings.batch_size,
                    self.order,
                    scheduler=self.scheduler,
                    precision=self.precision,
                    graphed=self.graphed,
                )
                if self.images.device.type == "cuda":
                    torch.cuda.synchronize()
                seconds += time.perf_counter() - started
                seen += part.shape[0]
                if on_slice is not None and on_slice(seen, seconds):
                    return seconds, seen
        return seconds, seen

    def test_mse(self, test_images: torch.Tensor) -> float:
        return evaluate_reconstruction(self.model, test_images, self.config.train.eval_batch_size)[
            "test_mse"
        ]


def bench_config(
    preset: str, quantizer_options: list[str] | None = None, **train_overrides: object
) -> RunConfig:
    """A preset's config with some training fields replaced (None values are ignored).

    ``quantizer_options`` are ``NAME=VALUE`` strings for QuantizerConfig fields, VALUE parsed
    as JSON when it can be (``dead_code_restart=50``), else kept as text (``codebook_init=kmeans``).
    """
    data = preset_config(preset).to_dict()
    for name, value in train_overrides.items():
        if value is not None:
            data["train"][name] = value
    for option in quantizer_options or []:
        name, _, text = option.partition("=")
        try:
            data["model"]["quantizer"][name] = json.loads(text)
        except json.JSONDecodeError:
            data["model"]["quantizer"][name] = text
    return RunConfig.from_dict(data)  # re-validates the overrides


# Training flags the benchmarks share with `vqkit train` (argparse dest names).
TRAIN_FLAGS = (
    "epochs",
    "batch_size",
    "lr",
    "lr_schedule",
    "warmup_fraction",
    "precision",
    "channels_last",
    "compile",
    "compile_mode",
    "cuda_graph",
)


def add_training_overrides(parser) -> None:
    """The TRAIN_FLAGS (plus --quantizer-option) as flags of a bench script's parser or group;
    each left out keeps the preset's value."""
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES)
    parser.add_argument("--warmup-fraction", type=float)
    parser.add_argument("--precision", choices=PRECISIONS)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--compile-mode", choices=COMPILE_MODES, help="implies --compile")
    parser.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument(
        "--quantizer-option", action="append", help="NAME=VALUE of the quantizer config"
    )


def config_from_args(args) -> RunConfig:
    """``bench_config`` of ``args.preset`` with whichever TRAIN_FLAGS the script's parser has."""
    overrides = {name: getattr(args, name, None) for name in TRAIN_FLAGS}
    if overrides["compile_mode"] is not None:
        overrides["compile"] = True
    return bench_config(args.preset, args.quantizer_option, **overrides)


def clock_reader(log: list[tuple[int, float, float]]):
    """An ``on_slice`` callback that records (images, training seconds) and never stops."""

    def record(seen: int, seconds: float) -> bool:
        log.append((seen, seconds, 0.0))
        return False

    return record


def median_seconds_per_image(log: list[tuple[int, float, float]]) -> float:
    """Median over evaluation intervals of training seconds per image (robust to bursts of
    load from other processes, which inflate a few intervals)."""
    rates, previous = [], (0, 0.0)
    for seen, seconds, _mse in log:
        rates.append((seconds - previous[1]) / (seen - previous[0]))
        previous = (seen, seconds)
    rates.sort()
    return rates[len(rates) // 2]
