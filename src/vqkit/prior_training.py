"""Training the PixelCNN prior on the code grids a trained VQ-VAE gives its dataset.

Stages, each a plain function: :func:`extract_codes` (batched, no grad), :func:`code_grids`
(the same, cached in the run folder), :func:`train_prior` (the loop: per-epoch NLL against the
uniform and unigram baselines, best-test checkpoint, early stopping). Like VQ-VAE training, the
loop saves a resumable state (``prior_state.safetensors``, see :mod:`vqkit.train_state`), honours
Ctrl-C after saving and stops on a non-finite loss (:mod:`vqkit.guards`).
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

from vqkit import runfiles, train_state
from vqkit.checkpoint import load_config, load_model, run_path, save_weights
from vqkit.codes_io import encode_images
from vqkit.data import load_split
from vqkit.distributed import Context
from vqkit.errors import VqkitError
from vqkit.fileio import append_jsonl, atomic_open, read_json, write_json_atomic
from vqkit.guards import NonFiniteGuard, StopRequest
from vqkit.model import VQVAE
from vqkit.prior import PixelCNNPrior, PriorConfig, load_prior, save_prior_config
from vqkit.train_state import Position
from vqkit.training import (
    TrainingInterrupted,
    deterministic_mode,
    epoch_batches,
    resolve_device,
    resumed_history,
)

SPLITS = ("train", "test")
# Settings --resume may change: when the run stops and how it saves, not what it learns so far.
RESUME_FIELDS = ("epochs", "patience", "checkpoint_every", "skip_nonfinite")
PRIOR_TERMS = ("prior loss",)  # the one loss term the non-finite guard watches
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


def code_nll(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Logits (B, K, H, W) and codes (B, H, W) int64 -> NLL (B, H, W) in nats of each code.

    log_softmax and gather rather than cross_entropy: CUDA has no deterministic kernel for the
    2-D NLL loss, so cross_entropy would refuse to run under --deterministic.
    """
    return -F.log_softmax(logits, dim=1).gather(1, codes.unsqueeze(1)).squeeze(1)


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
        total += code_nll(logits, codes).double().sum()
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
    resume: bool = False,
    restart: bool = False,
) -> PriorResult:
    """Train a PixelCNN prior on a run's code grids; write its config, weights and metrics.

    ``settings.num_codes`` and ``grid_size`` are taken from the run's model. The weights kept
    are those of the epoch with the lowest test NLL; training stops after ``patience`` epochs
    without improvement. A resumable state (``prior_state.safetensors``) is saved after every
    epoch and every ``checkpoint_every`` steps; ``resume=True`` continues from it, with the saved
    settings (``settings`` None) or ones differing only in :data:`RESUME_FIELDS`. Otherwise a
    new prior replaces any earlier one and ``prior_metrics.jsonl`` starts afresh, except that
    an unfinished prior (stopped by Ctrl-C, a crash or a non-finite loss) is only replaced with
    ``restart=True``. Ctrl-C raises TrainingInterrupted after saving.
    """
    run_dir = Path(run_dir)
    target = resolve_device(device)
    model = load_model(run_dir, device=target)
    saved = _saved_extra(run_dir, resume, restart)
    if settings is None:
        settings = PriorConfig.from_dict(saved["config"]) if saved is not None else PriorConfig()
    # The code grids fix the shape of the prior; validated again with them in place.
    settings = PriorConfig.from_dict(
        {**settings.to_dict(), "num_codes": model.num_codes, "grid_size": model.config.grid_size}
    )
    digest = _weights_digest(run_dir)
    if saved is not None:
        _check_state_fits(run_dir, saved, settings, digest)
    grids = code_grids(run_dir, model, data_dir=data_dir)
    train_set = _first(grids["train"], settings.train_limit)
    test_set = _first(grids["test"], settings.test_limit)
    if settings.conditional and int(train_set.labels.max()) >= settings.num_classes:
        raise VqkitError(
            f"The dataset has labels up to {int(train_set.labels.max())}, more than the "
            f"prior's {settings.num_classes} classes."
        )
    show = sys.stderr.isatty() if progress is None else progress
    with deterministic_mode(settings.deterministic, target):
        run = _PriorRun(run_dir, settings, target, (train_set, test_set), digest, resume, show)
        history = run.train()
    return PriorResult(run_dir, load_prior(run_dir, target), history)


def _saved_extra(run_dir: Path, resume: bool, restart: bool) -> dict[str, Any] | None:
    """The saved prior state's counters when resuming; refuses to replace an unfinished one."""
    files = train_state.PRIOR_FILES
    if resume:
        if restart:
            raise VqkitError("--resume and --restart contradict each other; give one of them.")
        return train_state.peek(run_dir, files)[1]
    if restart or not train_state.exists(run_dir, files):
        return None
    try:
        position, extra = train_state.peek(run_dir, files)
        unfinished = not extra.get("finished", False)
        done = f"{position.epochs_done} epochs saved"
    except VqkitError:
        unfinished, done = True, "its saved state is damaged"
    if unfinished:
        raise VqkitError(
            f"The run '{run_dir}' holds an unfinished prior training ({done}); continue it with "
            f"{files.resume_command(run_dir)}, or add --restart to train a new prior instead."
        )
    return None


def _check_state_fits(
    run_dir: Path, saved: dict[str, Any], settings: PriorConfig, digest: str
) -> None:
    """Refuse to resume a prior state made from other code grids or with other settings."""
    command = train_state.PRIOR_FILES.command
    if saved.get("weights_sha256") != digest:
        raise VqkitError(
            f"The VQ-VAE weights in '{run_dir}' changed after its prior state was saved, so the "
            f"state does not fit the new code grids; train a new prior with vqkit {command} "
            f"{run_dir} --restart."
        )
    stored = saved.get("config") if isinstance(saved.get("config"), dict) else {}
    current = settings.to_dict()
    changed = [k for k in current if k not in RESUME_FIELDS and stored.get(k) != current[k]]
    if changed:
        name = changed[0]
        raise VqkitError(
            f"The saved prior state in '{run_dir}' does not fit the prior settings ({name} is "
            f"{stored.get(name)!r} there, {current[name]!r} here); resume with the settings it "
            f"was trained with, or train a new prior with vqkit {command} {run_dir} --restart."
        )


def prior_loss(
    prior: PixelCNNPrior, codes: torch.Tensor, labels: torch.Tensor | None
) -> torch.Tensor:
    """() mean negative log-likelihood in nats of code grids (B, H, W) int64 under the prior."""
    return code_nll(prior(codes, labels), codes).mean()


@dataclass
class _Counters:
    """The prior's own counters, saved with the resumable state so a resumed run decides alike."""

    best: float = math.inf  # lowest test NLL so far, bits per code
    stale: int = 0  # epochs since the test NLL last improved (early stopping)
    images: int = 0  # grids of the epoch in progress whose loss was applied
    finished: bool = False  # the run ended normally (all epochs, or stopped early)

    def to_extra(self, settings: PriorConfig, digest: str) -> dict[str, Any]:
        # JSON has no infinity: no best yet is null. Floats round-trip exactly through JSON.
        best = self.best if math.isfinite(self.best) else None
        return {
            "best_test_bits_per_code": best,
            "epochs_without_improvement": self.stale,
            "epoch_grids": self.images,
            "finished": self.finished,
            "weights_sha256": digest,
            "config": settings.to_dict(),
        }

    @classmethod
    def from_extra(cls, extra: dict[str, Any], run_dir: Path) -> _Counters:
        try:
            best = extra["best_test_bits_per_code"]
            return cls(
                best=math.inf if best is None else float(best),
                stale=int(extra["epochs_without_improvement"]),
                images=int(extra["epoch_grids"]),
                finished=bool(extra["finished"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise VqkitError(
                f"The prior state in '{run_dir}' is damaged or incomplete; train a new prior "
                "with --restart."
            ) from exc


class _PriorRun:
    """The live objects of one prior training run and the small steps that move it forward."""

    def __init__(
        self,
        run_dir: Path,
        settings: PriorConfig,
        device: torch.device,
        data: tuple[CodeSet, CodeSet],
        digest: str,
        resume: bool,
        show: bool,
    ) -> None:
        self.run_dir, self.settings, self.device = run_dir, settings, device
        self.digest, self.show = digest, show
        train_set, self.test_set = data
        self.codes, self.labels = train_set.codes.to(device), train_set.labels.to(device)
        self.baselines = {
            "uniform_bits_per_code": math.log2(settings.num_codes),
            "unigram_bits_per_code": unigram_bits(train_set.codes, settings.num_codes),
        }
        self.metrics_path = run_path(run_dir, runfiles.PRIOR_METRICS)
        files = self.files = train_state.PRIOR_FILES
        torch.manual_seed(settings.seed)
        self.prior = PixelCNNPrior(settings).to(device)
        self.optimizer = torch.optim.AdamW(
            self.prior.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
        )
        self.order_generator = torch.Generator().manual_seed(settings.seed)
        self.position = Position()
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.counters = _Counters()
        self.history: list[dict[str, Any]] = []
        context = Context()
        if resume:
            restored = train_state.restore(
                run_dir, self.prior, self.optimizer, self.order_generator, files=files
            )
            self.position, self.loss_sum = restored.position, restored.loss_sum.to(device)
            self.counters = _Counters.from_extra(restored.extra, run_dir)
            if settings.epochs < self.position.epochs_done:
                raise VqkitError(
                    f"The prior in '{run_dir}' has already trained {self.position.epochs_done} "
                    f"epochs, more than --epochs {settings.epochs}."
                )
            done = self.position.epochs_done
            self.history = resumed_history(run_dir, done, context, runfiles.PRIOR_METRICS)
        else:
            for name in (files.tensors, files.counters, runfiles.PRIOR_WEIGHTS):
                run_path(run_dir, name).unlink(missing_ok=True)
            self.metrics_path.unlink(missing_ok=True)
        save_prior_config(run_dir, settings)
        self.guard = NonFiniteGuard(
            settings.skip_nonfinite, device, context, run_dir, terms=PRIOR_TERMS, files=files
        )
        self.guard.skipped = self.position.skipped_nonfinite
        self.stop = StopRequest()

    def train(self) -> list[dict[str, Any]]:
        """Train the remaining epochs; the per-epoch records of the whole run."""
        with self.stop.installed():
            for epoch in range(self.position.epochs_done + 1, self.settings.epochs + 1):
                if self.counters.stale >= self.settings.patience:
                    break
                self.run_epoch(epoch)
                if self.stop.requested:
                    raise TrainingInterrupted(self.run_dir, self.files)
        return self.history

    def run_epoch(self, epoch: int) -> None:
        """One pass (or its rest, after a resume) in a seeded random order, then evaluate and
        save it."""
        started = time.perf_counter()
        epoch_start_order = self.order_generator.get_state()  # a mid-epoch save replays from it
        count, every = self.codes.shape[0], self.settings.checkpoint_every
        batches = epoch_batches(
            count, self.settings.batch_size, self.order_generator, Context(), self.device
        )
        self.prior.train()
        position = self.position
        done = sum(int(index.numel()) for index in batches[: position.step])
        bar = tqdm(
            total=count,
            initial=done,
            desc=f"prior epoch {epoch}",
            unit="grid",
            disable=not self.show,
            leave=False,
        )
        for number in range(position.step, len(batches)):
            self.step(batches[number])
            position.step = number + 1
            bar.update(batches[number].numel())
            last = position.step == len(batches)  # the end-of-epoch save covers the last step
            periodic = every is not None and position.global_step % every == 0
            if not last and (periodic or self.stop.requested):
                self.checkpoint(epoch_start_order)
                if self.stop.requested:
                    raise TrainingInterrupted(self.run_dir, self.files)
        bar.close()
        self.finish_epoch(epoch, time.perf_counter() - started)

    def step(self, index: torch.Tensor) -> None:
        """One batch of grids (indices into the training set); no update when its loss is not
        finite and the guard allows skipping it."""
        self.position.global_step += 1
        batch = self.codes[index]
        labels = self.labels[index] if self.settings.conditional else None
        loss = prior_loss(self.prior, batch, labels)
        if self.guard.step_is_bad(self.position.global_step, loss):
            return
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.loss_sum += loss.detach().double() * index.numel()
        self.counters.images += index.numel()
        self.position.stepped += 1

    def finish_epoch(self, epoch: int, seconds: float) -> None:
        """Evaluate, then write the metrics line, the best weights and the epoch-boundary state.

        The training figure is the mean NLL over the epoch's applied batches, with dropout
        active, so it can sit above the test NLL early on.
        """
        self.guard.check()
        counters, cells = self.counters, self.settings.grid_size**2
        train_bits = float(self.loss_sum) / max(counters.images, 1) / math.log(2)
        test_bits = evaluate_nll(self.prior, self.test_set, self.settings.eval_batch_size)
        record: dict[str, Any] = {
            "epoch": epoch,
            "train_bits_per_code": train_bits,
            "test_bits_per_code": test_bits,
            "train_bits_per_image": train_bits * cells,
            "test_bits_per_image": test_bits * cells,
            **self.baselines,
            "epoch_seconds": seconds,
        }
        if self.guard.skipped:
            record["skipped_nonfinite_steps"] = self.guard.skipped
        self.history.append(record)
        append_jsonl(self.metrics_path, record)
        if test_bits < counters.best:
            counters.best, counters.stale = test_bits, 0
            save_weights(run_path(self.run_dir, runfiles.PRIOR_WEIGHTS), self.prior)
        else:
            counters.stale += 1
        counters.images = 0
        counters.finished = (
            counters.stale >= self.settings.patience or epoch >= self.settings.epochs
        )
        self.position = Position(epochs_done=epoch, global_step=self.position.global_step)
        self.loss_sum.zero_()
        self.checkpoint(self.order_generator.get_state())

    def checkpoint(self, order_state: torch.Tensor) -> None:
        """Save the resumable state, once the guard has vouched for it."""
        self.guard.check()
        self.position.skipped_nonfinite = self.guard.skipped
        train_state.save(
            self.run_dir,
            self.position,
            self.prior,
            self.optimizer,
            order_state,
            self.loss_sum,
            files=self.files,
            extra=self.counters.to_extra(self.settings, self.digest),
        )
