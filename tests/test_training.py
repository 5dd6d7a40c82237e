"""A short real training run on a slice of MNIST learns, and writes a complete run folder."""

from __future__ import annotations

import json

from PIL import Image

from vqkit.data import load_split
from vqkit.metrics import evaluate_reconstruction
from vqkit.model import VQVAE


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
