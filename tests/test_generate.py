"""Sampling strategies: the registry, `random`, and `used` against an independent data pass."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import torch

from vqkit import generate, runfiles
from vqkit.config import ModelConfig, QuantizerConfig
from vqkit.data import load_split
from vqkit.errors import VqkitError
from vqkit.fileio import read_json, write_json_atomic
from vqkit.generate import (
    SamplingContext,
    sample_codes,
    sample_images,
    strategies,
    strategy_options,
)
from vqkit.model import VQVAE
from vqkit.usage import _cached_counts, code_usage

TRAIN_IMAGES = 60000  # the whole MNIST training split, not the run's small training subset


@pytest.fixture(scope="module")
def independent_counts(usage_run) -> torch.Tensor:
    """Code counts from a fresh model and a plain loop of model.encode over the full split."""
    run_dir, _ = usage_run
    model = VQVAE.from_run(run_dir)
    images = load_split("mnist", "train").images
    counts = np.zeros(model.num_codes, dtype=np.int64)
    with torch.no_grad():
        for start in range(0, images.shape[0], 2500):
            codes = model.encode(images[start : start + 2500]).numpy().ravel()
            np.add.at(counts, codes, 1)
    return torch.from_numpy(counts)


@pytest.fixture(scope="module")
def context(usage_run) -> SamplingContext:
    run_dir, _ = usage_run
    return SamplingContext(VQVAE.from_run(run_dir), run_dir)


def test_usage_counts_whole_training_set_and_match_an_independent_pass(
    usage_run, independent_counts
):
    run_dir, counts = usage_run
    assert torch.equal(counts, independent_counts)
    cached = read_json(run_dir / runfiles.CODE_USAGE, "usage")
    assert cached["split"] == "train"
    assert cached["images"] == TRAIN_IMAGES
    assert cached["counts"] == independent_counts.tolist()
    assert sum(cached["counts"]) == TRAIN_IMAGES * 49


def test_used_draws_only_used_codes_and_covers_them(context, independent_counts):
    used = set(torch.nonzero(independent_counts).flatten().tolist())
    for weighted in (False, True):
        generator = torch.Generator().manual_seed(1)
        codes = sample_codes("used", 500, context, generator, weighted=weighted)
        assert codes.shape == (500, 7, 7) and codes.dtype == torch.int64
        drawn = set(codes.unique().tolist())
        assert drawn <= used
    unweighted = sample_codes("used", 500, context, torch.Generator().manual_seed(2))
    # 24500 uniform draws over at most 128 codes: missing one has probability < 128·e^-191.
    assert set(unweighted.unique().tolist()) == used


def test_weighted_frequencies_follow_counts(context, independent_counts):
    codes = sample_codes("used", 1000, context, torch.Generator().manual_seed(3), weighted=True)
    draws = codes.numel()
    observed = torch.bincount(codes.flatten(), minlength=context.model.num_codes).double() / draws
    expected = independent_counts.double() / independent_counts.sum()
    # Six standard errors of a binomial proportion, plus slack for tiny probabilities.
    bound = 6 * torch.sqrt(expected * (1 - expected) / draws) + 1e-3
    assert torch.all((observed - expected).abs() <= bound)


def test_unweighted_used_is_uniform_over_used_codes(context, independent_counts):
    codes = sample_codes("used", 1000, context, torch.Generator().manual_seed(4))
    used = torch.nonzero(independent_counts).flatten()
    share = torch.bincount(codes.flatten(), minlength=context.model.num_codes)[used].double()
    share /= codes.numel()
    p = 1.0 / used.numel()
    assert torch.all((share - p).abs() <= 6 * (p * (1 - p) / codes.numel()) ** 0.5)


def test_random_is_uniform_over_the_whole_codebook(context):
    codes = sample_codes("random", 300, context, torch.Generator().manual_seed(0))
    assert codes.shape == (300, 7, 7)
    assert int(codes.min()) == 0 and int(codes.max()) == context.model.num_codes - 1
    # Every code's share within six binomial standard deviations of 1/K.
    share = torch.bincount(codes.flatten(), minlength=context.model.num_codes).double()
    share /= codes.numel()
    p = 1.0 / context.model.num_codes
    assert torch.all((share - p).abs() <= 6 * (p * (1 - p) / codes.numel()) ** 0.5)


@pytest.mark.parametrize("weighted", [False, True])
def test_same_seed_same_codes(context, weighted):
    # Every draw comes from the generator given, none from torch's global one.
    first = sample_codes("used", 4, context, torch.Generator().manual_seed(9), weighted=weighted)
    torch.manual_seed(1)  # the global generator moved between the two draws
    again = sample_codes("used", 4, context, torch.Generator().manual_seed(9), weighted=weighted)
    assert torch.equal(first, again)


def test_sample_images_draws_its_codes_with_a_generator_seeded_by_its_seed():
    model = VQVAE(
        ModelConfig(hidden_dim=8, quantizer=QuantizerConfig(num_embeddings=16, embedding_dim=4))
    ).eval()
    context = SamplingContext(model)
    for seed in (0, 5):
        codes, images = sample_images(context, "random", 3, seed=seed)
        expected = sample_codes("random", 3, context, torch.Generator().manual_seed(seed))
        assert torch.equal(codes, expected)
        with torch.no_grad():
            torch.testing.assert_close(images, model.decode(expected))


def test_registry_options_and_errors(context):
    assert {"random", "used"} <= set(strategies())
    assert strategy_options("random") == set()
    assert strategy_options("used") == {"weighted"}
    with pytest.raises(VqkitError, match="takes no option 'weighted'"):
        sample_codes("random", 2, context, weighted=True)
    with pytest.raises(VqkitError, match="Unknown sampling strategy 'nope'"):
        sample_codes("nope", 2, context)
    with pytest.raises(VqkitError, match="at least 1"):
        sample_codes("random", 0, context)


def test_used_needs_a_run_folder(context):
    with pytest.raises(VqkitError, match="run folder"):
        sample_codes("used", 1, SamplingContext(context.model, None))


def test_cache_is_read_back_and_validated(usage_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(usage_run[0], run_dir)
    model = VQVAE.from_run(run_dir)
    path, weights = run_dir / runfiles.CODE_USAGE, run_dir / runfiles.WEIGHTS
    fake = [0] * model.num_codes
    fake[5] = 49
    write_json_atomic(path, {"split": "train", "images": 1, "counts": fake})
    assert code_usage(run_dir, model).tolist() == fake  # served from the cache, no pass
    broken = [
        {"split": "test", "images": 1, "counts": fake},
        {"split": "train", "images": 2, "counts": fake},  # counts do not sum to 49·images
        {"split": "train", "images": 1, "counts": fake[:-1]},  # wrong codebook size
        {"split": "train", "images": 1, "counts": [-1] + fake[1:]},
        ["not", "an", "object"],
    ]
    for record in broken:
        write_json_atomic(path, record)
        assert _cached_counts(run_dir, model) is None
    path.write_text("{damaged")
    assert _cached_counts(run_dir, model) is None
    write_json_atomic(path, {"split": "train", "images": 1, "counts": fake})
    stat = weights.stat()
    os.utime(path, (stat.st_atime, stat.st_mtime - 10))  # older than the weights: retrained
    assert _cached_counts(run_dir, model) is None
    # A record naming the weights it counted is judged by that digest, not by file times.
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    for named, served in ((digest, True), ("0" * 64, False)):
        record = {"split": "train", "images": 1, "counts": fake, "weights_sha256": named}
        write_json_atomic(path, record)
        os.utime(path, (stat.st_atime, stat.st_mtime - 10))
        assert (_cached_counts(run_dir, model) is not None) == served
    # refresh=True counts again even over a valid, newer cache, and rewrites it.
    write_json_atomic(path, {"split": "train", "images": 1, "counts": fake})
    model.train()  # counting switches to eval mode and must switch back afterwards
    counts = code_usage(run_dir, model, refresh=True)
    assert model.training
    assert torch.equal(counts, usage_run[1])
    assert json.loads(path.read_text())["counts"] == usage_run[1].tolist()


def test_a_new_strategy_slots_in_with_its_own_options(context):
    seen = {}

    @generate.register_strategy("test-constant")
    def constant(ctx, n, generator, digit=None, temperature=1.0, top_k=None):
        seen.update(digit=digit, temperature=temperature, top_k=top_k)
        return torch.full((n, ctx.grid_size, ctx.grid_size), digit or 0, dtype=torch.long)

    try:
        assert "test-constant" in strategies()
        assert strategy_options("test-constant") == {"digit", "temperature", "top_k"}
        codes = sample_codes("test-constant", 3, context, digit=4, top_k=2)
        assert torch.equal(codes, torch.full((3, 7, 7), 4))
        assert seen == {"digit": 4, "temperature": 1.0, "top_k": 2}
    finally:
        del generate._STRATEGIES["test-constant"]


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (None, "What the 'test-bad' strategy returned must be a torch tensor of integers, not a"),
        (np.zeros((3, 7, 7), np.int64), "must be a torch tensor of integers, not a ndarray"),
        (torch.zeros(3, 7, 7), "must hold integers, not torch.float32"),
        (torch.zeros(2, 7, 7, dtype=torch.long), "of shape (2, 7, 7); asked for 3, it must"),
    ],
)
def test_what_a_strategy_of_ones_own_returns_is_checked(context, returned, message):
    # None or an array ended in an AttributeError traceback; 2 grids for 3 wrote 2 images.
    generate.register_strategy("test-bad")(lambda ctx, n, generator: returned)
    try:
        with pytest.raises(VqkitError) as refused:
            sample_codes("test-bad", 3, context)
        assert message in str(refused.value)
    finally:
        del generate._STRATEGIES["test-bad"]


def test_a_smaller_n_of_random_codes_is_the_first_of_a_larger_one(context):
    # What docs/generation.md says of --n (the prior's grids, drawn together, are not).
    big = sample_codes("random", 32, context, torch.Generator().manual_seed(3))
    small = sample_codes("random", 16, context, torch.Generator().manual_seed(3))
    assert torch.equal(big[:16], small)
