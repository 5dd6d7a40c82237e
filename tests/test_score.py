"""Score math against closed forms and hand-computed values; the evaluation classifier cache."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from vqkit import classifier as classifier_module
from vqkit.classifier import Classifier, ClassifierConfig, classify, load_or_train_classifier
from vqkit.errors import VqkitError
from vqkit.score import feature_statistics, frechet_distance, inception_score, score_images

TINY_CLASSIFIER = ClassifierConfig(
    channels=(4, 8), features=16, epochs=2, batch_size=32, train_limit=2000
)


def gaussian_samples(mean, cov, count, seed):
    rng = np.random.default_rng(seed)
    return rng.multivariate_normal(mean, cov, size=count)


def test_identical_sets_are_at_distance_zero():
    features = gaussian_samples(np.zeros(5), np.eye(5) + 0.5, 400, 0)
    stats = feature_statistics(features)
    assert frechet_distance(*stats, *stats) == pytest.approx(0.0, abs=1e-8)


def test_one_dimension_matches_the_closed_form():
    # N(m1, s1²) against N(m2, s2²): (m1 - m2)² + (s1 - s2)².
    distance = frechet_distance(
        np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])
    )
    assert distance == pytest.approx((1 - 3) ** 2 + (2 - 3) ** 2)


def test_commuting_covariances_match_the_closed_form():
    rotation, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(4, 4)))
    a, b = np.array([1.0, 2.0, 0.5, 3.0]), np.array([4.0, 1.0, 0.5, 0.1])
    cov1, cov2 = rotation @ np.diag(a) @ rotation.T, rotation @ np.diag(b) @ rotation.T
    mean1, mean2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 1.0, 1.0])
    expected = np.sum((mean1 - mean2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mean1, cov1, mean2, cov2) == pytest.approx(expected)


def test_non_commuting_2x2_matches_the_trace_formula():
    # For a 2×2 matrix M with positive eigenvalues, tr √M = sqrt(tr M + 2 sqrt(det M)).
    cov1 = np.array([[2.0, 0.7], [0.7, 1.0]])
    cov2 = np.array([[1.0, -0.4], [-0.4, 3.0]])
    product = cov1 @ cov2
    trace_sqrt = math.sqrt(np.trace(product) + 2 * math.sqrt(np.linalg.det(product)))
    expected = np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt + 0.5**2
    mean2 = np.array([0.5, 0.0])
    assert frechet_distance(np.zeros(2), cov1, mean2, cov2) == pytest.approx(expected)


def test_statistics_of_samples_approach_the_population_distance():
    mean1, cov1 = np.zeros(3), np.diag([1.0, 2.0, 3.0])
    mean2, cov2 = np.ones(3), np.diag([2.0, 2.0, 1.0])
    expected = 3.0 + sum((math.sqrt(x) - math.sqrt(y)) ** 2 for x, y in [(1, 2), (2, 2), (3, 1)])
    a = feature_statistics(gaussian_samples(mean1, cov1, 40000, 2))
    b = feature_statistics(gaussian_samples(mean2, cov2, 40000, 3))
    assert frechet_distance(*a, *b) == pytest.approx(expected, rel=0.03)


def test_feature_statistics_by_hand():
    # Two images: mean (1, 1); unbiased covariance divides by N - 1 = 1, so the variances of
    # (0, 2) and (3, -1) are 2 and 8 and their covariance -4 (a biased one would halve them).
    mean, cov = feature_statistics(np.array([[0.0, 3.0], [2.0, -1.0]]))
    np.testing.assert_allclose(mean, [1.0, 1.0])
    np.testing.assert_allclose(cov, [[2.0, -4.0], [-4.0, 8.0]])


def test_fewer_images_than_features_give_a_finite_distance():
    # 3 images of 6 features: the covariances have rank 2, and rounding leaves eigenvalues a
    # hair below zero, whose square roots would be NaN. The same set shifted by s has the same
    # covariance, so the distance is exactly |s|² (the trace terms cancel).
    features = np.random.default_rng(0).normal(size=(3, 6))
    shift = np.array([1.0, -2.0, 0.0, 0.5, 0.0, 3.0])
    same = feature_statistics(features)
    assert frechet_distance(*same, *same) == pytest.approx(0.0, abs=1e-6)
    shifted = feature_statistics(features + shift)
    assert frechet_distance(*same, *shifted) == pytest.approx(float(shift @ shift), abs=1e-6)


def test_score_images_by_hand():
    # Three images of three classes: predicted 1, 0, 0 against labels 1, 1, 0; largest
    # probabilities 0.6, 0.9, 0.5. The reference is the set's own statistics: FID 0.
    features = torch.tensor([[0.0, 3.0], [2.0, -1.0], [1.0, 1.0]])
    probabilities = torch.tensor([[0.3, 0.6, 0.1], [0.9, 0.06, 0.04], [0.5, 0.1, 0.4]])
    reference = feature_statistics(features.numpy())
    row = score_images("set", features, probabilities, reference, torch.tensor([1, 1, 0]))
    assert row["name"] == "set" and row["images"] == 3
    assert row["label_accuracy"] == pytest.approx(2 / 3)
    assert row["confidence"] == pytest.approx((0.6 + 0.9 + 0.5) / 3)
    assert row["fid"] == pytest.approx(0.0, abs=1e-9)
    assert row["inception_score"] == pytest.approx(inception_score(probabilities.numpy()))
    assert score_images("set", features, probabilities, reference)["label_accuracy"] is None


def test_feature_statistics_needs_two_images():
    with pytest.raises(VqkitError, match="needs at least 2 images per set"):
        feature_statistics(np.zeros((1, 3)))


def test_inception_score_by_hand():
    # Marginal (0.75, 0.25); KL terms 0.5 ln(2/3) + 0.5 ln 2 and ln(4/3).
    probabilities = np.array([[0.5, 0.5], [1.0, 0.0]])
    expected = math.exp((0.5 * math.log(2 / 3) + 0.5 * math.log(2) + math.log(4 / 3)) / 2)
    assert inception_score(probabilities) == pytest.approx(expected)
    assert inception_score(np.full((7, 10), 0.1)) == pytest.approx(1.0)
    assert inception_score(np.eye(10)[np.arange(50) % 10]) == pytest.approx(10.0)
    assert inception_score(np.eye(10)[np.zeros(50, dtype=int)]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("setting", "said"),
    [
        ({"features": 0}, "features must be at least 1, not 0"),
        ({"num_classes": 1}, "num_classes must be at least 2, not 1"),
        ({"epochs": 0}, "epochs must be at least 1, not 0"),
        ({"batch_size": -4}, "batch_size must be at least 1, not -4"),
        ({"dropout": 1.0}, "dropout must be at least 0 and below 1, not 1.0"),
        ({"lr": math.nan}, "learning rate must be a number above 0, not nan"),
        ({"precision": "fp16"}, "precision must be one of fp32, bf16, auto, not 'fp16'"),
    ],
)
def test_bad_classifier_settings_are_named_with_their_value(setting, said):
    with pytest.raises(VqkitError, match=f"^The classifier's {said}\\.$"):
        ClassifierConfig(**setting)


@pytest.fixture
def classifier_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VQKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "classifiers"


def test_a_cache_that_cannot_be_a_folder_is_refused_before_training(tmp_path, monkeypatch):
    # VQKIT_CACHE naming a file was found only when the trained classifier was saved.
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("VQKIT_CACHE", str(tmp_path / "afile"))

    def too_early(*args, **kwargs):
        raise AssertionError("the classifier was trained before its cache was checked")

    monkeypatch.setattr(classifier_module, "train_classifier", too_early)
    with pytest.raises(VqkitError, match="Cannot create the folder .*afile/classifiers"):
        load_or_train_classifier(TINY_CLASSIFIER)


def test_classifier_is_trained_once_then_read_from_the_cache(classifier_cache, monkeypatch):
    lines = []
    first, accuracy = load_or_train_classifier(TINY_CLASSIFIER, log=lines.append)
    assert (classifier_cache / "mnist.safetensors").exists() and len(lines) == 1
    assert accuracy > 0.6  # chance is 0.1; 2000 images and two epochs separate most digits

    def refuse(*args, **kwargs):
        raise AssertionError("the cached classifier should have been used")

    monkeypatch.setattr(classifier_module, "train_classifier", refuse)
    second, cached_accuracy = load_or_train_classifier(TINY_CLASSIFIER)
    assert cached_accuracy == accuracy
    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8)
    f1, p1 = classify(first, images)
    f2, p2 = classify(second, images)
    assert f1.shape == (6, 16) and p1.shape == (6, 10)
    # The same to the last bit (both channels-last): every FID a first score gives, the next
    # gives too.
    assert torch.equal(f1, f2) and torch.equal(p1, p2)
    assert first.body[4].weight.is_contiguous(memory_format=torch.channels_last)
    assert second.body[4].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(p1.sum(dim=1), torch.ones(6, dtype=torch.float64))
    with pytest.raises(AssertionError, match="cached"):  # other settings: not a cache hit
        load_or_train_classifier(ClassifierConfig(channels=(4, 8), features=8, epochs=1))
    with pytest.raises(AssertionError, match="cached"):  # same shapes, other training
        load_or_train_classifier(dataclasses.replace(TINY_CLASSIFIER, seed=1), log=lines.append)
    (classifier_cache / "mnist.json").write_text("{")  # damaged: trained again, saying why
    with pytest.raises(AssertionError, match="cached"):
        load_or_train_classifier(TINY_CLASSIFIER, log=lines.append)
    assert [line.split("(")[1].split(";")[0] for line in lines] == [
        "none is cached yet",
        "the cached one has other settings",
        "the cached one is damaged",
    ]
    # One this user may not read is not damaged: said so, and nothing is trained or replaced.
    real_open = os.open

    def open_file(path, *args, **kwargs):  # where the weights file is opened
        if Path(path).name == "mnist.safetensors":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    save_json = classifier_cache / "mnist.json"
    save_json.write_text(json.dumps({"config": TINY_CLASSIFIER.to_dict(), "test_accuracy": 0.9}))
    monkeypatch.setattr(os, "open", open_file)
    with pytest.raises(VqkitError, match="cannot be read: Permission denied"):
        load_or_train_classifier(TINY_CLASSIFIER, log=lines.append)
    assert len(lines) == 3


def test_classify_judges_images_in_evaluation_mode_whatever_mode_it_is_given():
    # Batch-norm statistics and dropout must not depend on which other images share a batch:
    # a classifier left in training mode still gives its evaluation-mode answers.
    torch.manual_seed(0)
    classifier = Classifier(ClassifierConfig())
    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8)
    classifier.eval()
    with torch.no_grad():
        expected_features = classifier.features(images).double()
        expected_probabilities = classifier(images).softmax(dim=-1).double()
    classifier.train()
    features, probabilities = classify(classifier, images, batch_size=4)
    torch.testing.assert_close(features, expected_features)
    torch.testing.assert_close(probabilities, expected_probabilities)


def test_identical_feature_sets_are_never_at_a_negative_distance():
    # A distance is >= 0; rounding in the matrix square roots takes about half of these
    # identical 100×16 sets a few 1e-14 below zero unless the result is clipped.
    for seed in range(20):
        stats = feature_statistics(np.random.default_rng(seed).normal(size=(100, 16)))
        distance = frechet_distance(*stats, *stats)
        assert 0.0 <= distance < 1e-8, (seed, distance)
