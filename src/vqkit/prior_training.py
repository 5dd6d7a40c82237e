"""Training the PixelCNN prior on the code grids a trained VQ-VAE gives its dataset.

Stages, each a plain function: :func:`extract_codes` (batched, no grad), :func:`code_grids`
(the same, cached in the run folder), :func:`train_prior` (the loop: per-epoch NLL against the
uniform and unigram baselines, best-test checkpoint, early stopping).
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vqkit import runfiles
from vqkit.checkpoint import load_config, load_model, run_path, save_weights
from vqkit.codes_io import encode_images
from vqkit.data import load_split
from vqkit.errors import VqkitError
from vqkit.fileio import append_jsonl, atomic_open, read_json, write_json_atomic
from vqkit.model import VQVAE
from vqkit.prior import PixelCNNPrior, PriorConfig, load_prior, save_prior_config
from vqkit.training import resolve_device

SPLITS = ("train", "test")
CODE_FILES = {"train": runfiles.CODES_TRAIN, "test": runfiles.CODES_TEST}
LABEL_FILES = {"train": runfiles.LABELS_TRAIN, "test": runfiles.LABELS_TEST}


@dataclass
class CodeSet:
    """Code grids (N, H, W) int64 of one split and their class labels (N,) int64."""

    codes: torch.Tensor
    labels: torch.Tensor


@torch.no_grad()
def extract_codes(model: VQVAE, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """uint8 images (N, H, W) -> code grids (N, h, w) int64 on the CPU, in eval mode."""
    was_training = model.training
    model.eval()
    codes = encode_images(model, images, batch_size)
    model.train(was_training)
    return codes


def _weights_digest(run_dir: Path) -> str:
    return hashlib.sha256(run_path(run_dir, runfiles.WEIGHTS).read_bytes()).hexdigest()


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def _load_cached(run_dir: Path, digest: str, model: VQVAE) -> dict[str, CodeSet] | None:
    """The cached grids when they were made by these exact weights and are well formed."""
    try:
        meta = read_json(run_path(run_dir, runfiles.CODES_META), "code grid cache")
        if not isinstance(meta, dict) or meta.get("weights_sha256") != digest:
            return None
        result = {}
        for split in SPLITS:
            codes = np.load(run_path(run_dir, CODE_FILES[split]), allow_pickle=False)
            labels = np.load(run_path(run_dir, LABEL_FILES[split]), allow_pickle=False)
            size = model.config.grid_size
            if codes.shape != (labels.shape[0], size, size) or codes.max() >= model.num_codes:
                return None
            result[split] = CodeSet(
                torch.from_numpy(codes.astype(np.int64)), torch.from_numpy(labels.astype(np.int64))
            )
        return result
    except (VqkitError, OSError, ValueError):
        return None  # missing or damaged: recomputed


def code_grids(
    run_dir: str | Path,
    model: VQVAE | None = None,
    *,
    data_dir: str | Path | None = None,
    batch_size: int = 1000,
) -> dict[str, CodeSet]:
    """Code grids of the whole train and test splits, cached in the run folder.

    The cache (``codes_*.npy``, ``labels_*.npy`` and ``codes.json``) is keyed by a digest of
    the model weights, so retraining the VQ-VAE invalidates it.
    """
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    model = model if model is not None else load_model(run_dir)
    digest = _weights_digest(run_dir)
    cached = _load_cached(run_dir, digest, model)
    if cached is not None:
        return cached
    result = {}
    for split in SPLITS:
        data = load_split(config.train.dataset, split, data_dir)
        result[split] = CodeSet(extract_codes(model, data.images, batch_size), data.labels)
        # int16 holds any codebook up to 32768 codes in half the space of int32.
        _save_npy(
            run_path(run_dir, CODE_FILES[split]), result[split].codes.numpy().astype(np.int16)
        )
        _save_npy(
            run_path(run_dir, LABEL_FILES[split]), result[split].labels.numpy().astype(np.int16)
        )
    meta = {"weights_sha256": digest, "dataset": config.train.dataset}
    meta.update({split: int(result[split].codes.shape[0]) for split in SPLITS})
    write_json_atomic(run_path(run_dir, runfiles.CODES_META), meta)
    return result


def unigram_bits(codes: torch.Tensor, num_codes: int) -> float:
    """Entropy in bits of the empirical code frequencies of ``codes`` (any shape)."""
    counts = torch.bincount(codes.flatten(), minlength=num_codes).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log2()).sum())


@torch.no_grad()
def evaluate_nll(prior: PixelCNNPrior, data: CodeSet, batch_size: int) -> float:
    """Mean negative log-likelihood of ``data`` under ``prior`` in bits per code."""
    was_training = prior.training
    prior.eval()
    device = prior.embedding.weight.device
    total = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, data.codes.shape[0], batch_size):
        codes = data.codes[start : start + batch_size].to(device)
        labels = data.labels[start : start + batch_size].to(device)
        logits = prior(codes, labels if prior.config.conditional else None)
        total += F.cross_entropy(logits, codes, reduction="sum").double()
    prior.train(was_training)
    return float(total) / data.codes.numel() / math.log(2)


@dataclass
class PriorResult:
    run_dir: Path
    prior: PixelCNNPrior  # the best-test-NLL weights, eval mode
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best(self) -> dict[str, Any]:
        return min(self.history, key=lambda record: record["test_bits_per_code"])


def _first(data: CodeSet, count: int | None) -> CodeSet:
    return data if count is None else CodeSet(data.codes[:count], data.labels[:count])


def train_prior(
    run_dir: str | Path,
    settings: PriorConfig | None = None,
    *,
    device: str = "auto",
    data_dir: str | Path | None = None,
    progress: bool | None = None,
) -> PriorResult:
    """Train a PixelCNN prior on a run's code grids; write its config, weights and metrics.

    ``settings.num_codes`` and ``grid_size`` are taken from the run's model. The weights kept
    are those of the epoch with the lowest test NLL; training stops after ``patience`` epochs
    without improvement. ``prior_metrics.jsonl`` is rewritten from scratch.
    """
    run_dir = Path(run_dir)
    target = resolve_device(device)
    model = load_model(run_dir, device=target)
    settings = settings if settings is not None else PriorConfig()
    settings.num_codes = model.num_codes
    settings.grid_size = model.config.grid_size
    settings = PriorConfig.from_dict(settings.to_dict())  # re-validate after the changes
    grids = code_grids(run_dir, model, data_dir=data_dir)
    train_set = _first(grids["train"], settings.train_limit)
    test_set = _first(grids["test"], settings.test_limit)
    if settings.conditional and int(train_set.labels.max()) >= settings.num_classes:
        raise VqkitError(
            f"The dataset has labels up to {int(train_set.labels.max())}, more than the "
            f"prior's {settings.num_classes} classes."
        )

    uniform = math.log2(settings.num_codes)
    unigram = unigram_bits(train_set.codes, settings.num_codes)
    cells = settings.grid_size**2

    torch.manual_seed(settings.seed)
    prior = PixelCNNPrior(settings).to(target)
    optimizer = torch.optim.AdamW(
        prior.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    save_prior_config(run_dir, settings)
    metrics_path = run_path(run_dir, runfiles.PRIOR_METRICS)
    metrics_path.unlink(missing_ok=True)
    order_generator = torch.Generator().manual_seed(settings.seed)
    show = sys.stderr.isatty() if progress is None else progress
    codes, labels = train_set.codes.to(target), train_set.labels.to(target)

    history: list[dict[str, Any]] = []
    best, stale = math.inf, 0
    for epoch in range(1, settings.epochs + 1):
        started = time.perf_counter()
        train_bits = _train_epoch(
            prior, optimizer, codes, labels, settings, order_generator, epoch, show
        )
        test_bits = evaluate_nll(prior, test_set, settings.eval_batch_size)
        record = {
            "epoch": epoch,
            "train_bits_per_code": train_bits,
            "test_bits_per_code": test_bits,
            "train_bits_per_image": train_bits * cells,
            "test_bits_per_image": test_bits * cells,
            "uniform_bits_per_code": uniform,
            "unigram_bits_per_code": unigram,
            "epoch_seconds": time.perf_counter() - started,
        }
        history.append(record)
        append_jsonl(metrics_path, record)
        if test_bits < best:
            best, stale = test_bits, 0
            save_weights(run_path(run_dir, runfiles.PRIOR_WEIGHTS), prior)
        else:
            stale += 1
            if stale >= settings.patience:
                break

    return PriorResult(run_dir, load_prior(run_dir, target), history)


def _train_epoch(
    prior: PixelCNNPrior,
    optimizer: torch.optim.Optimizer,
    codes: torch.Tensor,
    labels: torch.Tensor,
    settings: PriorConfig,
    order_generator: torch.Generator,
    epoch: int,
    show: bool,
) -> float:
    """One pass in a seeded random order; the mean training NLL in bits per code.

    The figure is the running mean over the epoch's batches, with dropout active, so it can sit
    above the test NLL early on.
    """
    prior.train()
    count = codes.shape[0]
    order = torch.randperm(count, generator=order_generator).to(codes.device)
    total = torch.zeros((), dtype=torch.float64, device=codes.device)
    bar = tqdm(total=count, desc=f"prior epoch {epoch}", unit="grid", disable=not show, leave=False)
    for index in order.split(settings.batch_size):
        batch = codes[index]
        logits = prior(batch, labels[index] if settings.conditional else None)
        loss = F.cross_entropy(logits, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach().double() * index.numel()
        bar.update(index.numel())
    bar.close()
    return float(total) / count / math.log(2)
