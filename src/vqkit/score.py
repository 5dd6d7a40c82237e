"""Sample quality in numbers: a classifier-based FID, confidence and Inception Score.

Every sampling strategy of a run draws ``n`` code grids, the VQ-VAE decodes them, and the
evaluation classifier (``vqkit.classifier``) judges the images next to real ones:

* **FID**: the Fréchet distance between Gaussians fitted to the classifier's penultimate
  features of the images and of the real test images (of the requested class, for conditional
  rows). Lower is better; real images score near 0.
* **confidence**: the mean of the classifier's largest softmax probability.
* **Inception Score**: ``exp(E_x KL(p(y|x) || p(y)))``; 10 classes bound it by 10. High when each
  image is recognisable and all classes appear.
* **label accuracy**: for images whose class is known (real, reconstructed or conditionally
  sampled), the fraction the classifier labels as that class.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqkit import arguments, runfiles
from vqkit.checkpoint import (
    load_config,
    load_model,
    prior_digest,
    run_folder,
    run_path,
    state_digest,
)
from vqkit.classifier import Classifier, ClassifierConfig, classify, load_or_train_classifier
from vqkit.codes_io import decode_codes, encode_images
from vqkit.data import INFO, OWN_DATASET, dataset_classes, load_split
from vqkit.devices import resolve_device
from vqkit.errors import InvalidValue, VqkitError
from vqkit.fileio import require_writable_folder, write_json_atomic
from vqkit.generate import DECODE_BATCH_SIZE, SamplingContext, sample_codes, strategies
from vqkit.prior import (
    has_prior,
    incomplete_prior,
    load_prior_config,
    require_prior_fits_the_model,
)
from vqkit.wording import counted

# Strategies scored when available, in table order; the prior adds conditional rows itself.
STRATEGY_ORDER = ("random", "used", "prior")


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, F) features -> mean (F,) and unbiased covariance (F, F), in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.shape[0] < 2:
        raise InvalidValue("The Fréchet distance needs at least 2 images per set.")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(
    mean1: np.ndarray, cov1: np.ndarray, mean2: np.ndarray, cov2: np.ndarray
) -> float:
    """||m1 - m2||² + tr(C1) + tr(C2) - 2 tr((C1 C2)^½) of two Gaussians.

    tr((C1 C2)^½) equals tr((S C2 S)^½) with S = C1^½, and S C2 S is symmetric positive
    semi-definite, so its eigenvalues give the trace without a general matrix square root.
    """
    root = _sqrt_psd(cov1)
    middle = np.linalg.eigvalsh(root @ cov2 @ root)
    cross = float(np.sqrt(np.clip(middle, 0.0, None)).sum())
    diff = np.asarray(mean1) - np.asarray(mean2)
    value = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * cross)
    return max(value, 0.0)  # rounding can take identical sets a hair below zero


def inception_score(probabilities: torch.Tensor | np.ndarray) -> float:
    """exp of the mean KL divergence from each p(y|x) (rows of (N, C)) to their mean p(y)."""
    p = np.asarray(probabilities, dtype=np.float64)
    marginal = p.mean(axis=0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(marginal)), 0.0)
    return float(math.exp(terms.sum(axis=1).mean()))


@dataclass
class Reference:
    """Feature statistics of the real test images, overall and per class."""

    overall: tuple[np.ndarray, np.ndarray]
    per_class: dict[int, tuple[np.ndarray, np.ndarray]]


def score_images(
    name: str,
    features: torch.Tensor,
    probabilities: torch.Tensor,
    reference: tuple[np.ndarray, np.ndarray],
    labels: torch.Tensor | None = None,
) -> dict[str, Any]:
    """One table row from classifier outputs (N, F) and (N, C) of a set of images."""
    label_accuracy = None
    if labels is not None:
        label_accuracy = float((probabilities.argmax(dim=-1) == labels).double().mean())
    return {
        "name": name,
        "images": int(features.shape[0]),
        "fid": frechet_distance(*feature_statistics(features.numpy()), *reference),
        "confidence": float(probabilities.max(dim=-1).values.mean()),
        "inception_score": inception_score(probabilities.numpy()),
        "label_accuracy": label_accuracy,
    }


def score_run(
    run_dir: str | Path,
    n: int = 10000,
    *,
    seed: int = 0,
    device: str = "auto",
    data_dir: str | Path | None = None,
    classifier_config: ClassifierConfig | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Score every available strategy of a run against real test images; write scores.json.

    Returns ``{"n", "seed", "dataset", "classifier_test_accuracy", "classifier_sha256", "rows":
    [...], "weights_sha256", "prior_sha256"}`` (see runfiles).
    Each sampled row also holds ``sample_seconds``: the time to draw its code grids.
    """
    run_dir = run_folder(run_dir)
    require_writable_folder(run_dir)  # scores.json goes there, after minutes of sampling
    n = arguments.whole_number(n, "The number of images scored per row (--n)", 2)
    arguments.callable_or_none(log, "log")
    seed = arguments.seed(seed)
    target = resolve_device(device)
    config = load_config(run_dir)
    if has_prior(run_dir):  # a stale or damaged prior is refused now, not after other rows
        require_prior_fits_the_model(run_dir)
        load_prior_config(run_dir)
    dataset = config.train.dataset
    data_dir = config.train.data_folder(data_dir)
    model = load_model(run_dir, device=target)
    classes = len(dataset_classes(dataset, data_dir))
    train = load_split(dataset, "train", data_dir)
    if train.labels.unique().numel() < 2:  # one's own labels all 7 made classes 0 to 7
        raise VqkitError(
            "Scores need a classifier of the dataset's classes, and this dataset's training "
            "labels hold only one class."
        )
    test = load_split(dataset, "test", data_dir)
    if len(test) < 2:  # a covariance of the real images' features needs two of them
        raise VqkitError(
            f"Scores compare samples with the test images, and this dataset's test split holds "
            f"{counted(len(test), 'image')}; it needs at least 2."
        )
    classifier_config = _checked_classifier_config(classifier_config, dataset, classes)
    classifier, _ = load_or_train_classifier(
        classifier_config, device=target, data_dir=data_dir, log=log
    )
    reference, rows = _real_rows(model, classifier, test, train, n, seed)
    # Measured now on the whole test split (the first row's label accuracy), not read from the
    # cache: the classifier is cached per training split, and an own dataset's test split may
    # have changed since it was trained.
    test_accuracy = rows[0]["label_accuracy"]
    context = SamplingContext(model, run_dir, Path(data_dir) if data_dir is not None else None)
    available = strategies()
    for strategy in STRATEGY_ORDER:
        if strategy not in available or (strategy == "prior" and not has_prior(run_dir)):
            continue
        rows += _strategy_rows(strategy, context, classifier, reference, n, seed, log, dataset)
    scores: dict[str, Any] = {
        "n": n,
        "seed": seed,  # which images and grids were drawn: other seeds give other numbers
        "dataset": dataset,
        "classifier_test_accuracy": test_accuracy,
        # Which classifier judged them: it comes from a cache outside the run folder, and one
        # trained on another machine (or in another precision) moves every FID.
        "classifier_sha256": state_digest(classifier),
        "rows": rows,
        # Which weights the rows describe: a later train --resume or train-prior makes them
        # stale (runinfo compares these with the run's files).
        "weights_sha256": state_digest(model),  # the model scored, whatever the file is now
        # The prior the rows drew with (the file's digest when no row drew from one).
        "prior_sha256": context.prior_sha256 or prior_digest(run_dir),
    }
    return _write_scores(run_dir, scores, reference)


def _checked_classifier_config(
    config: ClassifierConfig | None, dataset: str, classes: int
) -> ClassifierConfig:
    """The classifier settings to score with: the dataset's own when none are given, else the
    given ones once they are known to fit the run's dataset and its number of classes."""
    if config is None:
        return ClassifierConfig(dataset=dataset, num_classes=classes)
    arguments.instance(config, ClassifierConfig, "The classifier settings", "ClassifierConfig()")
    if config.dataset != dataset:
        raise VqkitError(f"The classifier is for {config.dataset}, the run is {dataset}.")
    if config.num_classes != classes:
        raise VqkitError(f"The classifier has {config.num_classes} classes, the dataset {classes}.")
    return config


def _write_scores(run_dir: Path, scores: dict[str, Any], reference: Reference) -> dict[str, Any]:
    """Write scores.json: ``scores`` and the notes on what it could not score; returned too."""
    rows = scores["rows"]
    prior_left_out = incomplete_prior(run_dir)
    if prior_left_out:  # said, so a half-trained prior is not mistaken for no prior at all
        scores["prior_left_out"] = prior_left_out
    unscored = _classes_without_row(rows, run_dir, reference)
    if unscored:
        scores["classes_left_out"] = unscored
    write_json_atomic(run_path(run_dir, runfiles.SCORES), scores)
    return scores


def _real_rows(model, classifier, test, train, n: int, seed: int):
    """The reference statistics and the rows of real and reconstructed images.

    "real test images" scores the reference against itself (FID 0 by definition); "real
    training images" (n of them, drawn with the seed) shows the FID of real images the
    statistics never saw: the floor a perfect generator would reach at this sample size.
    "reconstructions" decodes the codes of n test images (drawn with the seed): the best any
    sampler of code grids could do, at the same sample size as the sampled rows, since the FID
    of n images grows as n shrinks.
    """
    features, probabilities = classify(classifier, test.images)
    # A class needs 2 test images for a covariance; one with fewer (possible in a dataset of
    # one's own) gets no per-class row.
    per_class = {
        int(label): feature_statistics(features[test.labels == label].numpy())
        for label in test.labels.unique()
        if int((test.labels == label).sum()) >= 2
    }
    reference = Reference(feature_statistics(features.numpy()), per_class)
    pick_train = _pick(len(train), n, seed)
    train_features, train_probabilities = classify(classifier, train.images[pick_train])
    pick_test = _pick(len(test), n, seed)
    reconstructions = decode_codes(
        model, encode_images(model, test.images[pick_test], DECODE_BATCH_SIZE), DECODE_BATCH_SIZE
    )
    rec_features, rec_probabilities = classify(classifier, reconstructions)
    rows = [
        score_images("real test images", features, probabilities, reference.overall, test.labels),
        score_images(
            "real training images",
            train_features,
            train_probabilities,
            reference.overall,
            train.labels[pick_train],
        ),
        score_images(
            "reconstructions",
            rec_features,
            rec_probabilities,
            reference.overall,
            test.labels[pick_test],
        ),
    ]
    return reference, rows


def _pick(available: int, n: int, seed: int) -> torch.Tensor:
    """Indices of n of ``available`` images (all of them when n is not smaller), seeded."""
    return torch.randperm(available, generator=torch.Generator().manual_seed(seed))[:n]


def _strategy_rows(
    strategy: str,
    context: SamplingContext,
    classifier: Classifier,
    reference: Reference,
    n: int,
    seed: int,
    log,
    dataset: str,
) -> list[dict[str, Any]]:
    """The row of one strategy; a conditional prior adds one row per class.

    A conditional prior's "prior" row is a class-balanced mix (sample i has class i mod C).
    """
    prior_classes = _prior_classes(context.run_dir) if strategy == "prior" else None
    rows = []
    runs: list[tuple[str, dict[str, Any], int, tuple, torch.Tensor | None]]
    if prior_classes is not None:
        classes = sorted(reference.per_class)
        per_class = max(2, n // max(1, len(classes)))  # no class may have 2 test images
        labels = torch.arange(n) % prior_classes  # the classes the prior draws, in its order
        runs = [("prior", {}, n, reference.overall, labels)]
        runs += [
            (f"prior (digit {d})", {"digit": d}, per_class, reference.per_class[d], None)
            for d in classes
        ]
    else:
        runs = [(strategy, {}, n, reference.overall, None)]
    if strategy == "used":
        # Uniform over the used codes equals 'random' once every code is in use; drawing codes
        # by their training frequency is the stronger independent-codes baseline.
        runs.append(("used (weighted)", {"weighted": True}, n, reference.overall, None))
    for name, options, count, stats, labels in runs:
        started = time.perf_counter()
        codes = sample_codes(
            strategy, count, context, torch.Generator().manual_seed(seed), **options
        )
        seconds = time.perf_counter() - started
        if log is not None:
            log(f"sampled {count} grids with {row_label(name, dataset)} in {seconds:.1f} s")
        features, probabilities = classify(
            classifier, decode_codes(context.model, codes, DECODE_BATCH_SIZE)
        )
        if "digit" in options:
            labels = torch.full((count,), options["digit"], dtype=torch.long)
        row = score_images(name, features, probabilities, stats, labels)
        row["sample_seconds"] = seconds
        rows.append(row)
    return rows


def _classes_without_row(rows: list[dict[str, Any]], run_dir: Path, reference: Reference) -> str:
    """A sentence naming the classes of a conditional prior that got no per-class row (a class
    needs 2 test images for a covariance; one's own dataset may have fewer), or ''."""
    classes = _prior_classes(run_dir) if any(row["name"] == "prior" for row in rows) else None
    missing = [str(c) for c in range(classes or 0) if c not in reference.per_class]
    if not missing:
        return ""
    return (
        f"No per-class prior row for class {', '.join(missing)}: the test set holds fewer than "
        "2 images of it."
    )


def _prior_classes(run_dir: Path | None) -> int | None:
    """The number of classes a conditional prior draws (sample i gets class i mod it), or None
    for an unconditional prior."""
    if run_dir is None:
        return None
    config = load_prior_config(run_dir)
    return config.num_classes if config.conditional else None


def row_label(name: str, dataset: str | None) -> str:
    """A score row's name for people: a per-class row of a dataset with named classes says
    which, one of one's own data says 'class N' (scores.json names such rows 'digit N', as the
    --digit flag does)."""
    match = re.fullmatch(r"(.*)\(digit (\d+)\)", name)
    if match is not None and dataset == OWN_DATASET:
        return f"{match[1]}(class {match[2]})"
    info = INFO.get(dataset) if isinstance(dataset, str) else None
    if match is None or info is None or int(match[2]) >= len(info.classes):
        return name
    label = info.classes[int(match[2])]
    return name if label == match[2] else f"{match[1]}(class {match[2]}: {label})"


def format_scores(scores: dict[str, Any]) -> str:
    """The scores as a fixed-width table (one row per image set)."""
    header = f"{'images':<28} {'n':>6} {'FID':>9} {'confidence':>10} {'IS':>6} {'label acc':>9}"
    lines = [header, "-" * len(header)]
    for row in scores["rows"]:
        accuracy = "" if row["label_accuracy"] is None else f"{row['label_accuracy']:.1%}"
        count = row.get("images", "")
        name = row_label(row["name"], scores.get("dataset"))
        lines.append(
            f"{name:<28} {count:>6} {row['fid']:>9.2f} {row['confidence']:>10.3f} "
            f"{row['inception_score']:>6.2f} {accuracy:>9}"
        )
    lines.append(
        f"n: images scored per row; classifier test accuracy "
        f"{scores['classifier_test_accuracy']:.2%}; FID against the real test images "
        "(of the requested class for per-class rows). FID grows as n shrinks: compare rows "
        "and runs at equal n."
    )
    if scores.get("prior_left_out"):
        lines.append(f"No prior rows: {scores['prior_left_out']}")
    if scores.get("classes_left_out"):
        lines.append(scores["classes_left_out"])
    return "\n".join(lines)
