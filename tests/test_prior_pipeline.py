"""End to end on the small run: code extraction and its cache, train-prior, the 'prior'
sampling strategy, and score, through the Python API and the CLI."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqkit import prior as prior_module
from vqkit import prior_training, runfiles, score
from vqkit.checkpoint import load_model
from vqkit.classifier import ClassifierConfig
from vqkit.cli import main
from vqkit.codes_io import save_codes
from vqkit.data import load_split
from vqkit.errors import VqkitError
from vqkit.generate import SamplingContext, sample_codes
from vqkit.prior import load_prior
from vqkit.provenance import MADE_WITH_KEY, PRIOR_KEY, WEIGHTS_KEY, read_stamp
from vqkit.report import render_report
from vqkit.runinfo import load_run_info

TINY_PRIOR_FLAGS = ["--epochs", "2", "--channels", "8", "--layers", "3", "--patience", "1"]
LIMITS = ["--train-limit", "4000", "--test-limit", "1000"]
TINY_CLASSIFIER = ClassifierConfig(
    channels=(4, 8), features=16, epochs=2, batch_size=32, train_limit=2000
)


@pytest.fixture(scope="module")
def prior_run(small_run, tmp_path_factory):
    """A copy of the small run with a tiny conditional prior trained by the CLI."""
    run_dir = tmp_path_factory.mktemp("prior") / "run"
    shutil.copytree(small_run.run_dir, run_dir)
    argv = ["train-prior", str(run_dir), "--conditional", "--quiet", "--device", "cpu"]
    assert main(argv + TINY_PRIOR_FLAGS + LIMITS) == 0
    return run_dir


def test_cached_codes_are_the_model_codes(prior_run):
    model = load_model(prior_run)
    test = load_split("mnist", "test")
    codes = np.load(prior_run / runfiles.CODES_TEST, allow_pickle=False)
    labels = np.load(prior_run / runfiles.LABELS_TEST, allow_pickle=False)
    assert codes.shape == (len(test), 7, 7)
    np.testing.assert_array_equal(labels, test.labels.numpy())
    with torch.no_grad():
        expected = model.encode(test.images[:50])
    np.testing.assert_array_equal(codes[:50], expected.numpy())


def test_code_cache_is_reused_and_invalidated_by_new_weights(prior_run, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the cached codes should have been used")

    monkeypatch.setattr(prior_training, "extract_codes", refuse)
    grids = prior_training.code_grids(prior_run)
    assert grids["train"].codes.shape == (60000, 7, 7)
    weights = prior_run / runfiles.WEIGHTS
    original = weights.read_bytes()
    model = load_model(prior_run)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    from vqkit.checkpoint import save_weights

    try:
        save_weights(weights, model)
        with pytest.raises(AssertionError, match="cached"):
            prior_training.code_grids(prior_run)
    finally:
        weights.write_bytes(original)


def test_code_grids_refuse_a_model_other_than_the_runs_own(prior_run, monkeypatch):
    # The cache is named by the run's weights: another model's codes cached under that name
    # would be the grids every later prior learns from.
    model = load_model(prior_run)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    cache = (prior_run / runfiles.CODES_TRAIN).read_bytes()
    with pytest.raises(VqkitError, match="not the one trained in"):
        prior_training.code_grids(prior_run, model)
    assert (prior_run / runfiles.CODES_TRAIN).read_bytes() == cache
    monkeypatch.setattr(prior_training, "extract_codes", None)  # the run's own: a cache hit
    assert prior_training.code_grids(prior_run, load_model(prior_run))["test"].codes.shape[0]


def test_code_usage_counts_the_cached_training_grids_without_encoding_again(
    prior_run, tmp_path, monkeypatch
):
    # `vqkit codebook` or `sample --strategy used` after train-prior encoded all 60,000
    # training images again (10 s and more on 2 cores) for counts its cache already holds.
    from vqkit import usage

    run_dir = tmp_path / "run"
    shutil.copytree(prior_run, run_dir)
    (run_dir / runfiles.CODE_USAGE).unlink(missing_ok=True)
    model = load_model(run_dir)
    expected = usage.count_codes(model, load_split("mnist", "train").images, 1000)

    def refuse(*args, **kwargs):
        raise AssertionError("the cached code grids should have been counted")

    monkeypatch.setattr(usage, "count_codes", refuse)
    counts = usage.code_usage(run_dir, model)
    assert torch.equal(counts, expected)
    record = json.loads((run_dir / runfiles.CODE_USAGE).read_text())
    assert record["images"] == 60000 and record["counts"] == expected.tolist()
    # Grids of other weights are not counted; refresh encodes again.
    (run_dir / runfiles.CODE_USAGE).unlink()
    with pytest.raises(AssertionError, match="cached code grids"):
        usage.code_usage(run_dir, model, refresh=True)
    meta = json.loads((run_dir / runfiles.CODES_META).read_text())
    (run_dir / runfiles.CODES_META).write_text(json.dumps(meta | {"weights_sha256": "0" * 64}))
    with pytest.raises(AssertionError, match="cached code grids"):
        usage.code_usage(run_dir, model)


@pytest.mark.parametrize("num_codes", [2, 32768, 32769, 65536, 1_000_000])
def test_cached_code_types_hold_the_largest_code(num_codes):
    # int16 wraps past 32767: a codebook of 40,000 codes (or FSQ levels 8^6) came back negative.
    largest = np.array([num_codes - 1], dtype=np.int64)
    assert largest.astype(prior_training.code_dtype(num_codes))[0] == num_codes - 1


@pytest.mark.parametrize(
    "bad_code",
    [-7, 128, None, "scalar-labels", "save-codes", "unhashed"],
    ids=["negative", "past-the-codebook", "empty-file", "scalar-labels", "zeros", "old-cache"],
)
def test_a_code_cache_other_than_as_written_is_recomputed(
    bad_code, prior_run, tmp_path, monkeypatch
):
    # -7: what a wrapped int16 code looks like; 128: one past the model's 128 codes; None: a
    # file emptied by a full disk (NumPy raises EOFError reading it); a labels file holding
    # one number (it has no length: IndexError).
    run = Path(shutil.copytree(prior_run, tmp_path / "run"))
    path = run / runfiles.CODES_TRAIN
    codes = np.load(path).astype(np.int64)
    if bad_code is None:
        path.write_bytes(b"")
    elif bad_code == "scalar-labels":
        np.save(run / runfiles.LABELS_TRAIN, np.array(5, dtype=np.int16))
    elif bad_code == "save-codes":  # well-formed grids written over the cache from Python:
        save_codes(np.zeros_like(codes), path)  # a prior trained on them without a word
    elif bad_code == "unhashed":  # a cache written before its files' digests were recorded
        meta = json.loads((run / runfiles.CODES_META).read_text())
        del meta["files_sha256"]
        (run / runfiles.CODES_META).write_text(json.dumps(meta))
    else:
        codes[0, 0, 0] = bad_code
        np.save(path, codes)

    def recompute(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(prior_training, "extract_codes", recompute)
    with pytest.raises(AssertionError, match="recomputed"):
        prior_training.code_grids(run)


def test_metrics_hold_the_nll_and_both_baselines(prior_run):
    records = [
        json.loads(line) for line in (prior_run / runfiles.PRIOR_METRICS).read_text().splitlines()
    ]
    assert [r["epoch"] for r in records] == list(range(1, len(records) + 1))
    codes = np.load(prior_run / runfiles.CODES_TRAIN, allow_pickle=False)[:4000]  # --train-limit
    frequencies = np.bincount(codes.ravel(), minlength=128) / codes.size
    used = frequencies[frequencies > 0]
    entropy = float(-(used * np.log2(used)).sum())
    for record in records:
        assert record["uniform_bits_per_code"] == pytest.approx(math.log2(128))
        assert record["unigram_bits_per_code"] == pytest.approx(entropy)
        assert (record["train_grids"], record["test_grids"]) == (4000, 1000)  # the limits
        assert record["test_split_grids"] == 10_000  # the whole split, for `vqkit runs`
        assert record["test_bits_per_image"] == pytest.approx(49 * record["test_bits_per_code"])
        assert record["train_bits_per_image"] == pytest.approx(49 * record["train_bits_per_code"])
    # Even a tiny prior trained briefly beats the uniform code.
    assert min(r["test_bits_per_code"] for r in records) < math.log2(128)


def test_saved_prior_reproduces_the_best_test_nll(prior_run):
    prior = load_prior(prior_run)
    assert prior.config.conditional and prior.config.num_codes == 128 and prior.config.channels == 8
    grids = prior_training.code_grids(prior_run)
    test = prior_training.CodeSet(grids["test"].codes[:1000], grids["test"].labels[:1000])
    nll = prior_training.evaluate_nll(prior, test, 1000)
    records = [
        json.loads(line) for line in (prior_run / runfiles.PRIOR_METRICS).read_text().splitlines()
    ]
    assert nll == pytest.approx(min(r["test_bits_per_code"] for r in records), rel=1e-5)


def test_prior_strategy_samples_through_the_registry(prior_run):
    context = SamplingContext(load_model(prior_run), prior_run)
    a = sample_codes("prior", 6, context, torch.Generator().manual_seed(1), digit=3, top_k=5)
    b = sample_codes("prior", 6, context, torch.Generator().manual_seed(1), digit=3, top_k=5)
    assert a.shape == (6, 7, 7) and torch.equal(a, b)
    with pytest.raises(VqkitError, match="--digit"):
        sample_codes("prior", 2, context, digit=10)


def test_a_conditional_prior_without_a_digit_draws_class_i_mod_10(prior_run):
    # Greedy decoding (top-k 1) is a function of the class alone, so sample i of the mix must
    # be the greedy grid of class i mod 10.
    context = SamplingContext(load_model(prior_run), prior_run)
    mixed = sample_codes("prior", 12, context, torch.Generator().manual_seed(0), top_k=1)
    for i in range(12):
        alone = sample_codes("prior", 1, context, torch.Generator(), digit=i % 10, top_k=1)
        assert torch.equal(mixed[i], alone[0]), i


def test_prior_strategy_errors(prior_run, small_run, tmp_path):
    no_prior = SamplingContext(small_run.model, small_run.run_dir)
    with pytest.raises(VqkitError, match="train-prior"):
        sample_codes("prior", 2, no_prior)
    unconditional = tmp_path / "run"
    shutil.copytree(prior_run, unconditional)
    config = json.loads((unconditional / runfiles.PRIOR_CONFIG).read_text())
    assert (
        main(
            [
                "train-prior",
                str(unconditional),
                "--quiet",
                "--device",
                "cpu",
                *TINY_PRIOR_FLAGS[:2],
                *LIMITS,
                "--channels",
                "4",
                "--layers",
                "2",
            ]
        )
        == 0
    )
    assert config["conditional"] and not load_prior(unconditional).config.conditional
    context = SamplingContext(load_model(unconditional), unconditional)
    with pytest.raises(VqkitError, match="unconditional"):
        sample_codes("prior", 2, context, digit=1)
    assert sample_codes("prior", 3, context).shape == (3, 7, 7)


def test_score_end_to_end(prior_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VQKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(score, "ClassifierConfig", lambda dataset, num_classes: TINY_CLASSIFIER)
    cached = score.load_or_train_classifier
    # The cache's accuracy belongs to the test split the classifier met when it was trained;
    # an own dataset's test split can change since, so score measures it again.
    stale = lambda *args, **kwargs: (cached(*args, **kwargs)[0], 0.5)  # noqa: E731
    monkeypatch.setattr(score, "load_or_train_classifier", stale)
    assert main(["score", str(prior_run), "--n", "30", "--json", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    stored = json.loads((prior_run / runfiles.SCORES).read_text())
    assert printed == stored and stored["n"] == 30
    rows = {row["name"]: row for row in stored["rows"]}
    expected = {
        "real test images",
        "real training images",
        "reconstructions",
        "random",
        "used",
        "used (weighted)",
        "prior",
    }
    assert expected | {f"prior (digit {d})" for d in range(10)} <= set(rows)
    real = rows["real test images"]
    assert real["fid"] == pytest.approx(0.0, abs=1e-6)
    assert real["label_accuracy"] == stored["classifier_test_accuracy"] != 0.5
    for row in stored["rows"]:
        assert 1.0 <= row["inception_score"] <= 10.0 + 1e-9
        assert 0.1 <= row["confidence"] <= 1.0 and row["fid"] >= 0
    assert rows["random"]["label_accuracy"] is None
    assert 0.0 <= rows["prior (digit 4)"]["label_accuracy"] <= 1.0
    # Every row but the reference itself scores n images, reconstructions included (an FID of
    # 10,000 reconstructions beside 30 samples would flatter the reconstructions); per-digit
    # rows n / 10.
    counts = {name: row["images"] for name, row in rows.items()}
    assert counts.pop("real test images") == len(load_split("mnist", "test").images)
    assert {counts.pop(f"prior (digit {d})") for d in range(10)} == {3}
    assert set(counts.values()) == {30}
    # The digests of what was scored, for the report's staleness check.
    digest = {name: hashlib.sha256((prior_run / name).read_bytes()).hexdigest() for name in
              (runfiles.WEIGHTS, runfiles.PRIOR_WEIGHTS)}  # fmt: skip
    assert stored["weights_sha256"] == digest[runfiles.WEIGHTS]
    assert stored["prior_sha256"] == digest[runfiles.PRIOR_WEIGHTS]
    # And what else decides the numbers: the seed of the draws, and the cached classifier
    # (its file in the cache holds the same safetensors bytes).
    assert stored["seed"] == 0
    cache = tmp_path / "cache" / "classifiers" / "mnist.safetensors"
    assert stored["classifier_sha256"] == hashlib.sha256(cache.read_bytes()).hexdigest()
    # The table names every row.
    assert main(["score", str(prior_run), "--n", "30", "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in rows)


def test_prior_row_labels_follow_the_prior_even_when_the_test_set_lacks_a_class(
    prior_run, monkeypatch
):
    # Sample i of a conditional prior has class i mod the prior's class count; the label
    # accuracy must compare with those, not with the classes found in the test set (one's own
    # dataset may have no test image of some class).
    scored: dict[str, torch.Tensor] = {}

    def record(name, features, probabilities, stats, labels=None):
        scored[name] = labels
        return {"name": name}

    monkeypatch.setattr(score, "score_images", record)
    monkeypatch.setattr(score, "classify", lambda classifier, images: (None, None))
    stats = (np.zeros(2), np.eye(2))
    without_class_2 = score.Reference(stats, {c: stats for c in range(10) if c != 2})
    context = SamplingContext(load_model(prior_run), prior_run)
    rows = score._strategy_rows("prior", context, None, without_class_2, 20, 0, None, "mnist")
    assert load_prior(prior_run).config.num_classes == 10
    assert torch.equal(scored["prior"], torch.arange(20) % 10)
    assert [row["name"] for row in rows][1:] == [f"prior (digit {d})" for d in range(10) if d != 2]
    # The missing row is said, not silently left out.
    said = score._classes_without_row(rows, prior_run, without_class_2)
    assert said == (
        "No per-class prior row for class 2: the test set holds fewer than 2 images of it."
    )
    assert score._classes_without_row(rows[:0], prior_run, without_class_2) == ""  # no prior rows
    assert "class 2: the test set" in score.format_scores(
        {"rows": [], "classifier_test_accuracy": 0.9, "classes_left_out": said}
    )


def test_a_conditional_prior_is_scored_when_no_class_has_two_test_images(prior_run, monkeypatch):
    # One's own dataset with two test images of different classes: no class gets its own
    # covariance, so only the class-balanced "prior" row is made (its count divided by zero).
    monkeypatch.setattr(score, "score_images", lambda name, *args, **kwargs: {"name": name})
    monkeypatch.setattr(score, "classify", lambda classifier, images: (None, None))
    no_class = score.Reference((np.zeros(2), np.eye(2)), {})
    context = SamplingContext(load_model(prior_run), prior_run)
    rows = score._strategy_rows("prior", context, None, no_class, 20, 0, None, "mnist")
    assert [row["name"] for row in rows] == ["prior"]
    said = score._classes_without_row(rows, prior_run, no_class)
    assert said.startswith("No per-class prior row for class 0, 1, 2, 3, 4, 5, 6, 7, 8, 9:")


@pytest.mark.parametrize(
    ("flags", "columns", "said"),
    [
        ([], 10, "a mix of the prior's 10 classes: column c holds class c"),
        (["--digit", "3"], 8, None),
        (["--columns", "4"], 4, "a mix of the prior's 10 classes: sample i (row by row) has"),
    ],
)
def test_a_conditional_priors_class_mix_gets_one_column_per_class(
    prior_run, tmp_path, flags, columns, said, capsys
):
    # Sample i has class i mod 10: 8 columns cut across the classes, 10 put one in each. The
    # PNG has no labels, so the command says where each class is.
    out = tmp_path / "s.png"
    argv = ["sample", str(prior_run), "--strategy", "prior", "--n", "20", "--out", str(out)]
    assert main(argv + flags + ["--device", "cpu"]) == 0
    with Image.open(out) as png:  # 28-pixel images 2 pixels apart, at scale 2
        assert png.size == ((columns * 30 + 2) * 2, (-(-20 // columns) * 30 + 2) * 2)
    printed = capsys.readouterr().out
    assert (said in printed) if said else "a mix of" not in printed, printed


def test_sample_command_with_the_prior(prior_run, tmp_path):
    codes_path = tmp_path / "codes.npy"
    argv = ["sample", str(prior_run), "--strategy", "prior", "--n", "5", "--seed", "3"]
    argv += ["--digit", "7", "--top-k", "1", "--out", str(tmp_path / "s.png")]
    assert main(argv + ["--codes-out", str(codes_path), "--device", "cpu"]) == 0
    codes = torch.from_numpy(np.load(codes_path, allow_pickle=False)).long()
    prior = load_prior(prior_run)
    labels = torch.full((5,), 7)
    with torch.no_grad():  # top-k 1: every code is the argmax given the codes before it
        assert torch.equal(prior(codes, labels).argmax(dim=1), codes)
    # The PNG names the weights and the prior it came from (the report's staleness check).
    assert read_stamp(tmp_path / "s.png") == {
        WEIGHTS_KEY: hashlib.sha256((prior_run / runfiles.WEIGHTS).read_bytes()).hexdigest(),
        PRIOR_KEY: hashlib.sha256((prior_run / runfiles.PRIOR_WEIGHTS).read_bytes()).hexdigest(),
    }
    # And the settings that, with those digests, decide its pixels (the seed above all).
    with Image.open(tmp_path / "s.png") as png:
        made_with = json.loads(png.text[MADE_WITH_KEY])
    assert made_with == {
        "command": "sample", "strategy": "prior", "n": 5, "seed": 3, "digit": 7, "top_k": 1
    }  # fmt: skip
    # An out-of-range digit is one sentence and exit status 2, not a traceback.
    assert main(argv[:-4] + ["--digit", "12", "--out", str(tmp_path / "t.png")]) == 2


def test_unigram_entropy_of_one_code_is_a_positive_zero():
    # -(1 * log2 1) is -0.0 in floating point, which printed as "-0.000 bits/code".
    bits = prior_training.unigram_bits(torch.zeros(5, 7, 7, dtype=torch.long), 4)
    assert bits == 0.0 and math.copysign(1.0, bits) == 1.0
    assert prior_training.unigram_bits(torch.tensor([0, 1, 2, 3]), 4) == pytest.approx(2.0)


def test_the_reports_prior_section_says_which_grids_it_measured(prior_run, capsys):
    html = render_report(load_run_info(prior_run))
    # A conditional prior's bits are given the class: not comparable with an unconditional one's.
    # The unigram baseline, what a prior must beat, first: the entropy of the training grids.
    codes = np.load(prior_run / runfiles.CODES_TRAIN, allow_pickle=False)[:4000]  # --train-limit
    shares = np.bincount(codes.ravel()) / codes.size
    entropy = float(-(shares[shares > 0] * np.log2(shares[shares > 0])).sum())
    said = f"given each image&#x27;s class; unigram: {entropy:.3g}, uniform: 7; lower is better<"
    assert said in html
    assert main(["runs", str(prior_run)]) == 0
    # Measured on the first 1,000 test grids (train-prior --test-limit): said too.
    assert re.search(r"\d\.\d{3} \(conditional\) \(1,000 grids\)", capsys.readouterr().out)
    assert "the 1,000 test code grids under the prior (trained on 4,000 training grids)" in html
    assert "knows neither a code&#x27;s position nor its neighbours" in html


def test_a_prior_saved_while_it_is_read_is_refused_not_misnamed(prior_run, tmp_path, monkeypatch):
    # Samples name the prior they drew with by its file's digest: a train-prior saving between
    # the digest and the load would lend them the newer prior's name.
    run = Path(shutil.copytree(prior_run, tmp_path / "run"))
    weights = run / runfiles.PRIOR_WEIGHTS
    loaded = load_prior(run)
    assert loaded.weights_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    real = prior_module.load_tensors_into

    def load_while_a_training_saves(module, tensors, path, what):
        real(module, tensors, path, what)
        weights.write_bytes(weights.read_bytes() + b" ")  # another file by the time it ends

    monkeypatch.setattr(prior_module, "load_tensors_into", load_while_a_training_saves)
    with pytest.raises(VqkitError, match="changed while it was read"):
        load_prior(run)
