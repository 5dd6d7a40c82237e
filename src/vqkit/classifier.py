"""A small convolutional classifier of 28×28 images, used only to judge generated samples.

It is trained on demand, once per dataset, and cached under ``$VQKIT_CACHE/classifiers`` (or
``~/.cache/vqkit/classifiers``) as ``<dataset>.safetensors`` plus ``<dataset>.json`` holding its
settings and measured test accuracy (an own ``idx`` dataset adds a digest of its training split
to the name); where the default cache cannot be written (a read-only home) it is trained for the
process only. Its penultimate-layer features feed the classifier-based Fréchet distance and
its softmax the confidence and Inception Score (see ``vqkit.score``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vqkit.acceleration import autocast, resolve_precision
from vqkit.checkpoint import load_weights_into, save_weights
from vqkit.config import EVAL_BATCH_SIZE
from vqkit.config import ClassifierConfig as ClassifierConfig  # re-exported: it lives there
from vqkit.data import OWN_DATASET, Split, load_split
from vqkit.devices import built_for_saved_weights, callers_random_state_kept
from vqkit.environment import images_digest
from vqkit.errors import VqkitError
from vqkit.fileio import ensure_dir, read_json, require_writable_folder, write_json_atomic
from vqkit.model import input_for
from vqkit.user_cache import NoHomeFolder, cache_folder


class Classifier(nn.Module):
    """images (B, [1,] 28, 28) -> logits (B, classes); ``features`` gives the penultimate layer."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        a, b = config.channels
        self.body = nn.Sequential(
            nn.Conv2d(1, a, 3, padding=1),
            nn.BatchNorm2d(a),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 14×14
            nn.Conv2d(a, b, 3, padding=1),
            nn.BatchNorm2d(b),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 7×7
            nn.Flatten(),
            nn.Dropout(config.dropout),
            nn.Linear(b * 7 * 7, config.features),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(config.features, config.num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, [1,] 28, 28) uint8 or float in [0, 1] -> (B, features)."""
        return self.body(input_for(self.body, images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(self.features(images)))


@torch.no_grad()
def classify(
    classifier: Classifier, images: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, [1,] 28, 28) images -> (features (N, F) float64, probabilities (N, classes) float64)."""
    classifier.eval()
    device = next(classifier.parameters()).device
    features, probabilities = [], []
    for start in range(0, images.shape[0], batch_size):
        f = classifier.features(images[start : start + batch_size].to(device))
        features.append(f.double().cpu())
        probabilities.append(classifier.out(f).softmax(dim=-1).double().cpu())
    return torch.cat(features), torch.cat(probabilities)


def accuracy(classifier: Classifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    _, probabilities = classify(classifier, images)
    return float((probabilities.argmax(dim=-1) == labels).double().mean())


def train_classifier(
    config: ClassifierConfig,
    device: str | torch.device = "cpu",
    data_dir: str | Path | None = None,
) -> tuple[Classifier, float]:
    """Train on the dataset's training split; returns the model (eval mode) and test accuracy."""
    train = load_split(config.dataset, "train", data_dir)
    test = load_split(config.dataset, "test", data_dir)
    images, labels = train.images, train.labels
    if config.train_limit is not None:
        images, labels = images[: config.train_limit], labels[: config.train_limit]
    with callers_random_state_kept(torch.device(device)):
        return _train_classifier(config, images, labels, test, device)


def _train_classifier(
    config: ClassifierConfig,
    images: torch.Tensor,
    labels: torch.Tensor,
    test: Split,
    device: str | torch.device,
) -> tuple[Classifier, float]:
    torch.manual_seed(config.seed)
    classifier = Classifier(config).to(device, memory_format=torch.channels_last)
    precision = resolve_precision(config.precision, torch.device(device))
    optimizer = torch.optim.Adam(classifier.parameters(), lr=config.lr)
    steps = config.epochs * math.ceil(images.shape[0] / config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=steps)
    order_generator = torch.Generator().manual_seed(config.seed)
    images, labels = images.to(device), labels.to(device)
    for _ in range(config.epochs):
        classifier.train()
        order = torch.randperm(images.shape[0], generator=order_generator).to(device)
        for index in order.split(config.batch_size):
            with autocast(images.device, precision):
                logits = classifier(images[index])
            loss = F.cross_entropy(logits.float(), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    # It stays channels-last, the layout the cached copy is read into too: both then compute
    # exactly the same (layouts pick different convolution kernels), and oneDNN classifies
    # ~1.5x faster in it than in the default layout (10,000 images: 1.1 s, not 1.6 s).
    classifier.eval()
    return classifier, accuracy(classifier, test.images, test.labels)


def cache_root() -> Path:
    """``$VQKIT_CACHE/classifiers`` or ``~/.cache/vqkit/classifiers``."""
    return cache_folder("VQKIT_CACHE", "~/.cache/vqkit") / "classifiers"


def cache_name(config: ClassifierConfig, data_dir: str | Path | None = None) -> str:
    """File name stem of a cached classifier: the dataset's name, and for an own dataset a
    digest of its training split too (two own datasets must not share one classifier)."""
    if config.dataset != OWN_DATASET:
        return config.dataset
    train = load_split(config.dataset, "train", data_dir)
    return f"{config.dataset}-{images_digest(train.images, train.labels)[:16]}"


def load_or_train_classifier(
    config: ClassifierConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    data_dir: str | Path | None = None,
    log=None,
) -> tuple[Classifier, float]:
    """The cached classifier of ``config.dataset`` (retrained when its settings differ).

    Returns the classifier (eval mode) and its test accuracy. ``log`` gets one line when a
    classifier has to be trained.
    """
    config = config if config is not None else ClassifierConfig()
    try:
        folder: Path | None = cache_root()
    except NoHomeFolder:
        if os.environ.get("VQKIT_CACHE"):
            raise
        folder = None  # no home to look in: trained for this process, as below
    name = cache_name(config, data_dir)
    classifier = built_for_saved_weights(lambda: Classifier(config))
    why = "none is cached yet"
    weights, meta_path = (
        (folder / f"{name}.safetensors", folder / f"{name}.json") if folder else (None, None)
    )
    if weights is not None and weights.exists() and meta_path.exists():
        try:
            meta = read_json(meta_path, "classifier description")
            if meta.get("config") == config.to_dict():
                load_weights_into(classifier, weights, "classifier weights file")
                # Channels-last, as a classifier trained just now stays (see train_classifier).
                classifier = classifier.to(device, memory_format=torch.channels_last)
                return classifier.eval(), float(meta["test_accuracy"])
            why = "the cached one has other settings"
        except (VqkitError, AttributeError, KeyError, TypeError, ValueError) as exc:
            if isinstance(exc.__cause__, PermissionError):  # not damage: say so, replace nothing
                raise
            why = "the cached one is damaged"  # replaced below
    kept = _folder_to_keep_it(folder)
    if log is not None:
        if kept is not None:
            where = f"it is cached in {kept} for next time"
        else:
            cannot = "no home folder is known" if folder is None else f"{folder} cannot be written"
            where = f"it is not kept, as {cannot}: set VQKIT_CACHE to a writable folder to keep it"
        log(f"training the {config.dataset} evaluation classifier ({why}; {where})")
    classifier, test_accuracy = train_classifier(config, device, data_dir)
    if weights is not None and meta_path is not None and kept is not None:
        save_weights(weights, classifier)
        write_json_atomic(meta_path, {"config": config.to_dict(), "test_accuracy": test_accuracy})
    return classifier, test_accuracy


def require_usable_cache(config: ClassifierConfig) -> None:
    """Refuse now what :func:`load_or_train_classifier` refuses only after the work before it
    (the demo's minutes of training): VQKIT_CACHE naming a folder that holds no classifier of
    these settings and cannot take one. The default cache is never refused (see below)."""
    if not os.environ.get("VQKIT_CACHE"):
        return
    folder = cache_root()
    name = cache_name(config)
    try:
        meta = read_json(folder / f"{name}.json", "classifier description")
        if meta.get("config") == config.to_dict() and (folder / f"{name}.safetensors").exists():
            return
    except (VqkitError, AttributeError):  # none, or damaged: one is trained and cached then
        pass
    _folder_to_keep_it(folder)


def _folder_to_keep_it(folder: Path | None) -> Path | None:
    """Where a classifier trained now is cached, or None where the default cannot be written.

    A cache that cannot be written is said now, not after the minutes of training: refused when
    VQKIT_CACHE names it (the user chose it), trained for this process only when it is the
    default (a container's or a compute node's read-only home: scoring still works there).
    """
    if folder is None:
        return None
    try:
        require_writable_folder(ensure_dir(folder))
    except VqkitError:
        if os.environ.get("VQKIT_CACHE"):
            raise
        return None
    return folder
