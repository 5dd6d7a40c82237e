"""A short real training run on a slice of MNIST learns, and writes a complete run folder."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from vqkit.config import preset_config
from vqkit.data import load_split
from vqkit.errors import VqkitError
from vqkit.metrics import evaluate_reconstruction
from vqkit.model import VQVAE
from vqkit.training import train


def test_training_lowers_test_mse_well_below_an_untrained_model(small_run):
    config = small_run.model.config
    test = load_split("mnist", "test").images[:500]
    untrained = evaluate_reconstruction(VQVAE(config).eval(), test)
    trained = small_run.final
    assert trained["test_mse"] < 0.3 * untrained["test_mse"]
    # The saved weights reproduce the logged figure (the metric itself: tests/test_metrics.py).
    again = evaluate_reconstruction(VQVAE.from_run(small_run.run_dir), test)
    assert again["test_mse"] == trained["test_mse"]


def test_run_folder_holds_config_weights_metrics_and_figure(small_run):
    run = small_run.run_dir
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["quantizer"]["num_embeddings"] == 128
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    for key in (
        "train_loss",
        "test_mse",
        "test_psnr",
        "perplexity",
        "codes_used",
        "epoch_seconds",
        "images_per_second",
    ):
        assert key in record
    assert 1 <= record["codes_used"] <= 128
    assert 1.0 <= record["perplexity"] <= record["codes_used"]
    # 8 originals above 8 reconstructions: 2 rows of 28 px + 3 gaps of 2 px, doubled in size.
    with Image.open(run / "reconstructions.png") as figure:
        assert figure.size == (2 * (8 * 30 + 2), 2 * (2 * 30 + 2))
        assert figure.mode == "L"


def test_a_config_edited_in_place_is_checked_before_training(tmp_path):
    # Dataclass fields set from Python skip the constructors' checks: such a run used to train
    # and then fail to load ("The commitment weight beta must be ...").
    config = preset_config("efficient")
    config.model.quantizer.beta = -1.0
    with pytest.raises(VqkitError, match=r"beta must be a finite number >= 0 \(--beta\)"):
        train(config, tmp_path / "run", device="cpu", progress=False)
    config = preset_config("best")
    config.model.quantizer.quantizer = "fsq"  # with EMA, k-means and restarts: refused by the CLI
    with pytest.raises(VqkitError, match="do not apply to --quantizer fsq"):
        train(config, tmp_path / "run", device="cpu", progress=False)
    with pytest.raises(VqkitError, match="train\\(\\) takes a RunConfig .* not a dict"):
        train(preset_config("efficient").to_dict(), tmp_path / "run", device="cpu")
    assert not (tmp_path / "run").exists()
