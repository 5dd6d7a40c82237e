"""Training the PixelCNN prior on the code grids a trained VQ-VAE gives its dataset.

Stages, each a plain function: :func:`extract_codes` (batched, no grad), :func:`code_grids`
(the same, cached in the run folder), :func:`train_prior` (the loop: per-epoch NLL against the
uniform and unigram baselines, best-test checkpoint, early stopping, resume; the loop itself is
:class:`vqkit.prior_loop.PriorLoop`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqkit import arguments, environment, runfiles, train_state
from vqkit.checkpoint import (
    load_config,
    load_model,
    require_files_where_files_go,
    require_run_model,
    run_folder,
    run_path,
    weights_digest,
)
from vqkit.codes_io import encode_images, npy_bytes
from vqkit.config import EVAL_BATCH_SIZE, TrainConfig, settings_differences
from vqkit.data import OWN_DATASET, Split, dataset_classes, load_split
from vqkit.devices import callers_random_state_kept, evaluation_mode, resolve_device
from vqkit.errors import VqkitError
from vqkit.fileio import read_file_bytes, read_json, write_bytes_atomic, write_json_atomic
from vqkit.model import VQVAE
from vqkit.prior import PixelCNNPrior, PriorConfig, load_prior
from vqkit.prior_loop import PriorLoop, code_nll, damaged_state
from vqkit.prior_replacement import old_prior_set_aside, settle_interrupted_replacement
from vqkit.run_lock import RunLock
from vqkit.training import deterministic_mode
from vqkit.wording import counted, some_of

SPLITS = ("train", "test")
# Settings --resume may change: when the run stops and how it saves, not what it learns so far.
PRIOR_RESUME_FIELDS = ("epochs", "patience", "checkpoint_every", "skip_nonfinite")
CODE_FILES = {"train": runfiles.CODES_TRAIN, "test": runfiles.CODES_TEST}
LABEL_FILES = {"train": runfiles.LABELS_TRAIN, "test": runfiles.LABELS_TEST}


@dataclass
class CodeSet:
    """Code grids (N, H, W) int64 of one split and their class labels (N,) int64."""

    codes: torch.Tensor
    labels: torch.Tensor


@torch.no_grad()
def extract_codes(
    model: VQVAE, images: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE
) -> torch.Tensor:
    """uint8 images (N, H, W) -> code grids (N, h, w) int64 on the CPU, in eval mode."""
    with evaluation_mode(model):
        return encode_images(model, images, batch_size)


def code_dtype(num_codes: int) -> type[np.signedinteger]:
    """The smallest integer type the cached grids of a ``num_codes`` codebook fit: int16 (half
    the space of int32) up to 32,768 codes; larger codebooks (or FSQ grids) would wrap."""
    return np.int16 if num_codes <= np.iinfo(np.int16).max + 1 else np.int32


def _load_cached(
    run_dir: Path, digest: str, own_data_sha256: str | None, model: VQVAE
) -> dict[str, CodeSet] | None:
    """The cached grids when they were made by these exact weights (and, for one's own data,
    from the images and labels of SHA-256 ``own_data_sha256``) and are well formed."""
    try:
        meta = read_json(run_path(run_dir, runfiles.CODES_META), "code grid cache")
        if not isinstance(meta, dict) or meta.get("weights_sha256") != digest:
            return None
        if own_data_sha256 is not None and meta.get("data_sha256") != own_data_sha256:
            return None  # the run's data folder now holds other images or labels
        files = meta.get("files_sha256")
        if not isinstance(files, dict):
            return None  # a cache from before its files were hashed
        result = {}
        for split in SPLITS:
            codes = _cached_array(run_dir, CODE_FILES[split], files)
            labels = _cached_array(run_dir, LABEL_FILES[split], files)
            size = model.config.grid_size
            shape_fits = labels.ndim == 1 and codes.shape == (labels.shape[0], size, size)
            if not shape_fits or codes.min() < 0 or codes.max() >= model.num_codes:
                return None
            result[split] = CodeSet(
                torch.from_numpy(codes.astype(np.int64)), torch.from_numpy(labels.astype(np.int64))
            )
        return result
    except (VqkitError, OSError, ValueError, EOFError):  # np.load of an empty file: EOFError
        return None  # missing or damaged: recomputed


def cached_code_grids(run_dir: str | Path, digest: str, model: VQVAE) -> dict[str, CodeSet] | None:
    """The code grids :func:`code_grids` cached for the weights of SHA-256 ``digest`` of a
    named dataset's run, without encoding anything; None when there are none (or they are
    damaged, or of one's own data)."""
    config = load_config(run_dir).train
    if config.dataset == OWN_DATASET:
        return None
    return _load_cached(Path(run_dir), digest, None, model)


def _cached_array(run_dir: Path, name: str, files: dict[str, Any]) -> np.ndarray:
    """The array in the cache file ``name`` when its bytes are the ones the cache wrote (so
    grids written over it, by ``save_codes`` or by hand, are never trained on); else
    ValueError."""
    data = read_file_bytes(run_path(run_dir, name))
    if files.get(name) != hashlib.sha256(data).hexdigest():
        raise ValueError(f"{name} is not the file the code grid cache wrote")
    return np.load(io.BytesIO(data), allow_pickle=False)


def _write_cached_array(run_dir: Path, name: str, array: np.ndarray) -> str:
    """Write one file of the code grid cache; returns the SHA-256 of its bytes."""
    data = npy_bytes(array)
    write_bytes_atomic(run_path(run_dir, name), data)
    return hashlib.sha256(data).hexdigest()


def code_grids(
    run_dir: str | Path,
    model: VQVAE | None = None,
    *,
    data_dir: str | Path | None = None,
    batch_size: int | None = None,
) -> dict[str, CodeSet]:
    """Code grids of the whole train and test splits, cached in the run folder, encoded in
    batches of ``batch_size`` (default: the run's evaluation batch size).

    The cache (``codes_*.npy``, ``labels_*.npy`` and ``codes.json``) is keyed by the digest of
    the model weights and, for one's own data, of its images and labels, so retraining the
    VQ-VAE, or a data folder rewritten with other images or labels, invalidates it. A
    ``model`` given must be the run's own (its weights name the cache).
    """
    if model is not None:
        require_run_model(model, run_dir)
    run_dir = Path(run_dir)
    config = load_config(run_dir).train
    model = model if model is not None else load_model(run_dir)
    own = OwnData.read(config, data_dir)
    return _code_grids(run_dir, config, weights_digest(run_dir), model, own, data_dir, batch_size)


@dataclass
class OwnData:
    """Both splits of one's own data, read once, and the SHA-256 of their images and labels
    (about 0.3 s for 70,000 images); named datasets are fixed by their published checksums."""

    splits: dict[str, Split]
    sha256: str

    @classmethod
    def read(cls, config: TrainConfig, data_dir: str | Path | None) -> OwnData | None:
        if config.dataset != OWN_DATASET:
            return None
        splits = _read_splits(config, data_dir)
        tensors = (tensor for data in splits.values() for tensor in (data.images, data.labels))
        return cls(splits, environment.images_digest(*tensors))


def _code_grids(
    run_dir: Path,
    config: TrainConfig,
    digest: str,
    model: VQVAE,
    own: OwnData | None,
    data_dir: str | Path | None,
    batch_size: int | None,
) -> dict[str, CodeSet]:
    """:func:`code_grids` of the run's own ``model`` (training settings ``config``, weights of
    SHA-256 ``digest``), with one's own data already read."""
    batch_size = batch_size or config.eval_batch_size
    own_sha256 = None if own is None else own.sha256
    cached = _load_cached(run_dir, digest, own_sha256, model)
    if cached is not None:
        return cached
    splits = own.splits if own is not None else _read_splits(config, data_dir)
    result, files = {}, {}
    for split, data in splits.items():
        result[split] = CodeSet(extract_codes(model, data.images, batch_size), data.labels)
        codes = result[split].codes.numpy().astype(code_dtype(model.num_codes))
        files[CODE_FILES[split]] = _write_cached_array(run_dir, CODE_FILES[split], codes)
        labels = result[split].labels.numpy().astype(np.int16)
        files[LABEL_FILES[split]] = _write_cached_array(run_dir, LABEL_FILES[split], labels)
    meta = {
        "weights_sha256": digest,
        "data_sha256": own_sha256,  # of the very tensors encoded
        "dataset": config.dataset,
        "files_sha256": files,
    }
    meta.update({split: int(result[split].codes.shape[0]) for split in SPLITS})
    write_json_atomic(run_path(run_dir, runfiles.CODES_META), meta)
    return result


def _require_every_class_trained(labels: torch.Tensor, classes: int) -> None:
    """A conditional prior learns one class per label 0 to C - 1 and draws its class-balanced
    mix from all of them: a label with no training grid (one's own labels 10, 50, 90 make 91
    classes) would stay at its random start and fill most of the mix."""
    counts = torch.bincount(labels, minlength=classes)
    missing = torch.nonzero(counts == 0).flatten().tolist()
    if missing:
        raise VqkitError(
            f"A conditional prior learns one class per label from 0 to {classes - 1}, and the "
            f"training split holds no image labelled {some_of(missing)}; number the labels "
            "0 to C - 1 (numpy: np.unique(labels, return_inverse=True)[1]) or train an "
            "unconditional prior (without --conditional)."
        )


def _read_splits(config: TrainConfig, data_dir: str | Path | None) -> dict[str, Split]:
    folder = config.data_folder(data_dir)
    return {split: load_split(config.dataset, split, folder) for split in SPLITS}


def unigram_bits(codes: torch.Tensor, num_codes: int) -> float:
    """Entropy in bits of the empirical code frequencies of ``codes`` (any shape)."""
    counts = torch.bincount(codes.flatten(), minlength=num_codes).double()
    p = counts[counts > 0] / counts.sum()
    # max: a single used code gives -0.0, which would print as "-0.000 bits".
    return max(0.0, float(-(p * p.log2()).sum()))


@torch.no_grad()
def evaluate_nll(prior: PixelCNNPrior, data: CodeSet, batch_size: int) -> float:
    """Mean negative log-likelihood of ``data`` under ``prior`` in bits per code."""
    device = prior.embedding.weight.device
    total = torch.zeros((), dtype=torch.float64, device=device)
    with evaluation_mode(prior):
        for start in range(0, data.codes.shape[0], batch_size):
            codes = data.codes[start : start + batch_size].to(device)
            labels = data.labels[start : start + batch_size].to(device)
            logits = prior(codes, labels if prior.config.conditional else None)
            total += code_nll(logits, codes).double().sum()
    return float(total) / data.codes.numel() / math.log(2)


@dataclass
class PriorResult:
    run_dir: Path
    prior: PixelCNNPrior  # the best-test-NLL weights, eval mode
    history: list[dict[str, Any]] = field(default_factory=list)
    epochs_trained: int = 0  # by this call: 0 for a resume of a prior that had finished

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
    settings (``settings`` None) or ones differing only in :data:`PRIOR_RESUME_FIELDS`. Otherwise a
    new prior replaces any earlier one and ``prior_metrics.jsonl`` starts afresh, except that
    an unfinished prior (stopped by Ctrl-C, a crash or a non-finite loss) is only replaced with
    ``restart=True``. Ctrl-C or SIGTERM raises TrainingInterrupted after saving.
    """
    run_dir = run_folder(run_dir)
    if settings is not None:
        arguments.instance(settings, PriorConfig, "The prior settings", "PriorConfig(epochs=4)")
    progress = arguments.switch(progress, "progress", allow_none=True)
    resume = arguments.switch(resume, "resume")
    restart = arguments.switch(restart, "restart")
    target = resolve_device(device)
    # One writer: a second train-prior or train here is refused. (Loading the model, too,
    # draws from the global generator: its layers are built before the weights are read.)
    with RunLock() as lock, callers_random_state_kept(target):
        lock.acquire(run_dir, "train-prior")
        require_files_where_files_go(run_dir)
        settle_interrupted_replacement(run_dir)  # before anything reads the prior's files
        # Again: the files it put back in place (a received folder's, say) may be links.
        require_files_where_files_go(run_dir)
        return _train_holding_the_lock(
            run_dir, settings, target, data_dir, progress, resume=resume, restart=restart
        )


def settle_interrupted_prior(run_dir: str | Path) -> None:
    """Put right what a train-prior killed outright while replacing a prior left behind, under
    the run's lock (for callers that read the prior's files before train_prior takes it)."""
    with RunLock() as lock:
        lock.acquire(run_folder(run_dir), "train-prior")
        settle_interrupted_replacement(run_dir)


def _train_holding_the_lock(
    run_dir: Path,
    settings: PriorConfig | None,
    target: torch.device,
    data_dir: str | Path | None,
    progress: bool | None,
    *,
    resume: bool,
    restart: bool,
) -> PriorResult:
    model = load_model(run_dir, device=target)
    saved = _saved_extra(run_dir, resume, restart)
    if settings is None:
        settings = PriorConfig.from_dict(saved["config"]) if saved is not None else PriorConfig()
    # The code grids and the dataset's classes fix the shape of the prior; validated again
    # with them in place.
    train_config = load_config(run_dir).train
    classes = dataset_classes(train_config.dataset, train_config.data_folder(data_dir))
    settings = PriorConfig.from_dict(
        {
            **settings.to_dict(),
            "num_codes": model.num_codes,
            "grid_size": model.config.grid_size,
            "num_classes": len(classes),
        }
    )
    if saved is None:  # a new prior (one saved before the bounds existed still resumes)
        settings.require_new_prior_bounds()
    digest, own = weights_digest(run_dir), OwnData.read(train_config, data_dir)
    data = None if own is None else own.sha256
    if saved is not None:
        _check_state_fits(run_dir, saved, settings, digest, data)
    grids = _code_grids(run_dir, train_config, digest, model, own, data_dir, None)
    if settings.conditional:
        _require_every_class_trained(grids["train"].labels, len(classes))
    train_set = _first(grids["train"], settings.train_limit)
    test_set = _first(grids["test"], settings.test_limit)
    constants = {  # repeated in every metrics record
        "uniform_bits_per_code": math.log2(settings.num_codes),
        "unigram_bits_per_code": unigram_bits(train_set.codes, settings.num_codes),
        "train_grids": int(train_set.codes.shape[0]),
        "test_grids": int(test_set.codes.shape[0]),
        "test_split_grids": int(grids["test"].codes.shape[0]),  # says whether a limit cut it
    }
    replacing = contextlib.nullcontext() if resume else old_prior_set_aside(run_dir)
    with replacing, deterministic_mode(settings.deterministic, target):
        loop = PriorLoop(
            run_dir,
            settings,
            target,
            codes=train_set.codes,
            labels=train_set.labels,
            evaluate=lambda prior: evaluate_nll(prior, test_set, settings.eval_batch_size),
            constants=constants,
            digest=digest,
            data_digest=data,
            resume=resume,
            show=sys.stderr.isatty() if progress is None else progress,
        )
        epochs_before = loop.position.epochs_done
        if loop.epochs_left:  # a finished prior resumed is no new session
            session = environment.describe("train-prior", target, precision=loop.precision)
            environment.record(run_dir, {**session, "resumed": resume})
        history = loop.train()
    trained = loop.position.epochs_done - epochs_before
    return PriorResult(run_dir, load_prior(run_dir, target), history, epochs_trained=trained)


def _saved_extra(run_dir: Path, resume: bool, restart: bool) -> dict[str, Any] | None:
    """The saved prior state's counters when resuming; refuses to replace an unfinished one."""
    files = train_state.PRIOR_FILES
    if resume:
        if restart:
            raise VqkitError("--resume and --restart contradict each other; give one of them.")
        require_prior_state(run_dir)
        extra = train_state.peek(run_dir, files)[1]
        if not isinstance(extra.get("config"), dict):
            raise damaged_state(run_dir)
        return extra
    if restart or not train_state.exists(run_dir, files):
        return None
    try:
        position, extra = train_state.peek(run_dir, files)
        unfinished = not extra.get("finished", False)
        done = f"{counted(position.epochs_done, 'epoch')} saved"
    except VqkitError:
        unfinished, done = True, "its saved state is damaged"
    if unfinished:
        raise VqkitError(
            f"The run '{run_dir}' holds an unfinished prior training ({done}); continue it with "
            f"{files.resume_command(run_dir)}, or add --restart to train a new prior instead."
        )
    return None


def require_prior_state(run_dir: str | Path) -> None:
    """A clear error unless the run holds a prior state to resume: one sentence for a run
    that never had a prior, another for a prior whose state is missing."""
    files = train_state.PRIOR_FILES
    names = (runfiles.PRIOR_CONFIG, runfiles.PRIOR_WEIGHTS, runfiles.PRIOR_METRICS)
    if not train_state.exists(run_dir, files) and not any(
        run_path(run_dir, name).exists() for name in names
    ):
        raise VqkitError(
            f"The run '{run_dir}' has no prior training to resume; start one with "
            f"vqkit train-prior {run_dir} (without --resume)."
        )
    train_state.require(run_dir, files)


def _check_state_fits(
    run_dir: Path, saved: dict[str, Any], settings: PriorConfig, digest: str, data: str | None
) -> None:
    """Refuse to resume a prior state made from other code grids (other VQ-VAE weights, or
    one's own data rewritten since) or with other settings."""
    command = train_state.PRIOR_FILES.command
    if saved.get("data_sha256", data) != data:  # states saved before it was recorded: not known
        raise VqkitError(
            f"The images or labels in the data folder of '{run_dir}' changed after its prior "
            f"state was saved, so the state does not fit the new code grids; train a new prior "
            f"with vqkit {command} {run_dir} --restart."
        )
    if saved.get("weights_sha256") != digest:
        raise VqkitError(
            f"The VQ-VAE weights in '{run_dir}' changed after its prior state was saved, so the "
            f"state does not fit the new code grids; train a new prior with vqkit {command} "
            f"{run_dir} --restart."
        )
    changed = settings_differences(saved["config"], settings.to_dict(), PRIOR_RESUME_FIELDS)
    if changed:
        raise VqkitError(
            f"The saved prior state in '{run_dir}' does not fit the prior settings "
            f"({'; '.join(changed[:3])}); resume with the settings it was trained with, or "
            f"train a new prior with vqkit {command} {run_dir} --restart."
        )
