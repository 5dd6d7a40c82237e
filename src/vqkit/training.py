"""Training a VQ-VAE: a plain function taking explicit settings, writing one run folder."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from vqkit import runfiles
from vqkit.acceleration import autocast, make_scheduler, prepare_model, resolve_precision
from vqkit.checkpoint import run_path, save_config, save_weights
from vqkit.config import RunConfig
from vqkit.data import Split, load_split
from vqkit.errors import VqkitError
from vqkit.fileio import append_jsonl, ensure_dir
from vqkit.images import save_comparison
from vqkit.metrics import evaluate_reconstruction
from vqkit.model import VQVAE, images_to_input

# How many steps between progress-bar refreshes: each refresh reads the loss off the device.
PROGRESS_REFRESH_STEPS = 25


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else the CPU; asking for missing CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise VqkitError("CUDA was requested (--device cuda) but no CUDA GPU is available.")
    if name != "cpu" and not name.startswith("cuda"):
        raise VqkitError(f"Unknown device '{name}'; use auto, cpu or cuda.")
    return torch.device(name)


def default_run_dir(config: RunConfig, root: str | Path = "runs") -> Path:
    """A new folder name under ``root`` that says when and what was trained."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{stamp}-{config.train.dataset}-{config.preset}"
    candidate, suffix = base, 1
    while candidate.exists():
        suffix += 1
        candidate = base.with_name(f"{base.name}-{suffix}")
    return candidate


def limit(split: Split, count: int | None) -> torch.Tensor:
    """The first ``count`` images of a split (all of them when count is None)."""
    return split.images if count is None else split.images[:count]


@dataclass
class TrainResult:
    run_dir: Path
    model: VQVAE
    history: list[dict[str, Any]] = field(default_factory=list)  # one metrics record per epoch

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1]


def train(
    config: RunConfig,
    run_dir: str | Path | None = None,
    *,
    device: str = "auto",
    data_dir: str | Path | None = None,
    progress: bool | None = None,
) -> TrainResult:
    """Train the model ``config`` describes and write its run folder.

    Returns the trained model (eval mode) and the per-epoch metrics also written to
    ``metrics.jsonl``. ``progress=None`` shows a bar only when stderr is a terminal.
    """
    settings = config.train
    target = resolve_device(device)
    train_images = limit(load_split(settings.dataset, "train", data_dir), settings.train_limit)
    test_split = load_split(settings.dataset, "test", data_dir)
    test_images = limit(test_split, settings.test_limit)
    run_dir = ensure_dir(run_dir if run_dir is not None else default_run_dir(config))
    save_config(run_dir, config)

    torch.manual_seed(settings.seed)
    model = VQVAE(config.model).to(target)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    step_model = prepare_model(model, settings)  # channels-last / compiled view of ``model``
    precision = resolve_precision(settings.precision, target)
    steps_per_epoch = -(-train_images.shape[0] // settings.batch_size)
    scheduler = make_scheduler(optimizer, settings, settings.epochs * steps_per_epoch)
    # Whole dataset resident on the device as uint8; batches are gathered by index.
    train_images = train_images.to(target)
    order_generator = torch.Generator().manual_seed(settings.seed)
    show = sys.stderr.isatty() if progress is None else progress

    history: list[dict[str, Any]] = []
    for epoch in range(1, settings.epochs + 1):
        started = time.perf_counter()
        train_loss = run_epoch(
            step_model,
            optimizer,
            train_images,
            settings.batch_size,
            order_generator,
            description=f"epoch {epoch}/{settings.epochs}",
            show=show,
            scheduler=scheduler,
            precision=precision,
        )
        seconds = time.perf_counter() - started
        record: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": train_loss,
            **evaluate_reconstruction(model, test_images, settings.eval_batch_size),
            **model.quantizer.training_stats(),
            "epoch_seconds": seconds,
            "images_per_second": train_images.shape[0] / seconds,
        }
        history.append(record)
        save_weights(run_path(run_dir, runfiles.WEIGHTS), model)
        append_jsonl(run_path(run_dir, runfiles.METRICS), record)

    model.eval()
    write_reconstructions(model, test_images[:8], run_path(run_dir, runfiles.RECONSTRUCTIONS))
    return TrainResult(Path(run_dir), model, history)


def run_epoch(
    model: VQVAE | Any,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    batch_size: int,
    order_generator: torch.Generator,
    *,
    description: str = "",
    show: bool = False,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    precision: str = "fp32",
) -> float:
    """One pass over ``images`` (N, H, W) uint8 in a seeded random order; mean training loss.

    ``model`` may be a compiled view of a VQVAE; ``precision`` 'bf16' autocasts the forward.
    """
    model.train()
    count = images.shape[0]
    order = torch.randperm(count, generator=order_generator).to(images.device)
    loss_sum = torch.zeros((), device=images.device)
    steps = 0
    bar = tqdm(total=count, desc=description, unit="img", disable=not show, leave=False)
    started = time.perf_counter()
    for batch_index in order.split(batch_size):
        batch = images[batch_index]
        with autocast(images.device, precision):
            out = model(batch)
            reconstruction_loss = F.mse_loss(out.reconstruction.float(), images_to_input(batch))
            loss = reconstruction_loss + out.vq_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach()
        steps += 1
        bar.update(batch.shape[0])
        if show and steps % PROGRESS_REFRESH_STEPS == 0:
            rate = bar.n / (time.perf_counter() - started)
            bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{rate:.0f}")
    bar.close()
    return float(loss_sum) / max(steps, 1)


@torch.no_grad()
def write_reconstructions(model: VQVAE, images: torch.Tensor, path: Path) -> Path:
    """Save originals (top row) above the model's reconstructions (bottom row)."""
    device = next(model.parameters()).device
    reconstructions = model(images.to(device)).reconstruction
    return save_comparison(images, reconstructions, path)
