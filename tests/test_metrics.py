"""Reconstruction metrics against their definitions, computed image by image."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vqkit.cli.common import print_json
from vqkit.config import ModelConfig, QuantizerConfig, preset_config
from vqkit.errors import VqkitError
from vqkit.metrics import code_grid_bits, evaluate_reconstruction, psnr
from vqkit.model import VQVAE
from vqkit.wording import on_test_images


def test_psnr_against_hand_values():
    assert psnr(0.01) == pytest.approx(20.0)
    assert psnr(1e-4) == pytest.approx(40.0)
    assert psnr(0.01, peak=255.0) == pytest.approx(20.0 + 20.0 * math.log10(255.0))
    assert psnr(0.0) == math.inf


def test_code_grid_bits_against_hand_values():
    assert code_grid_bits(128) == pytest.approx(49 * 7)
    assert code_grid_bits(1000) == pytest.approx(49 * math.log(1000, 2))
    assert code_grid_bits(512, grid_size=4) == pytest.approx(16 * 9)


def test_evaluate_reconstruction_matches_a_per_image_recomputation():
    # 10 images in batches of 3: the last batch is short, so a metric that averaged per batch
    # (or dropped the last one) would differ from the per-pixel definition computed here.
    torch.manual_seed(0)
    model = VQVAE(
        ModelConfig(hidden_dim=8, quantizer=QuantizerConfig(num_embeddings=6, embedding_dim=4))
    )
    images = torch.randint(0, 256, (10, 28, 28), dtype=torch.uint8)
    model.train()  # evaluation switches to eval mode and must switch back afterwards
    metrics = evaluate_reconstruction(model, images, batch_size=3)
    assert model.training

    squared_error, codes = 0.0, []
    model.eval()
    with torch.no_grad():
        for image in images:
            out = model(image.unsqueeze(0))
            target = image.double() / 255.0
            squared_error += float((out.reconstruction[0, 0].double() - target).pow(2).sum())
            codes.append(out.codes.flatten())
    expected_mse = squared_error / (10 * 28 * 28)
    counts = torch.bincount(torch.cat(codes), minlength=6).double()
    share = counts[counts > 0] / counts.sum()
    assert metrics["test_mse"] == pytest.approx(expected_mse, rel=1e-5)
    assert metrics["test_psnr"] == pytest.approx(10 * math.log10(1 / expected_mse), rel=1e-5)
    assert metrics["codes_used"] == int((counts > 0).sum())
    assert metrics["dead_codes"] == 6 - metrics["codes_used"]
    assert metrics["perplexity"] == pytest.approx(float(torch.exp(-(share * share.log()).sum())))
    # 6 codes on a 7×7 grid: 49 · log2(6) bits per image.
    assert metrics["bits_per_image"] == pytest.approx(49 * math.log(6, 2))
    assert metrics["num_codes"] == 6
    assert metrics["test_images"] == 10  # what the words "on the N test images" count


def test_a_code_chosen_once_counts_as_used():
    # One image and a codebook made of its own 49 encoder outputs: each position picks the
    # code that is its own vector, so every code is chosen exactly once and all 49 are used,
    # with the perplexity of a uniform use of 49 codes.
    torch.manual_seed(0)
    model = VQVAE(
        ModelConfig(hidden_dim=8, quantizer=QuantizerConfig(num_embeddings=49, embedding_dim=4))
    ).eval()
    image = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        latents = model.encoder(model.model_input(image))  # (1, 4, 7, 7)
        model.quantizer.codebook.copy_(latents.permute(0, 2, 3, 1).reshape(49, 4))
    assert torch.equal(model.encode(image).flatten(), torch.arange(49))
    metrics = evaluate_reconstruction(model, image)
    assert (metrics["codes_used"], metrics["dead_codes"]) == (49, 0)
    assert metrics["perplexity"] == pytest.approx(49.0)


def test_the_words_for_a_count_of_test_images():
    assert on_test_images({"test_images": 1}) == "on the 1 test image"
    assert on_test_images({"test_images": 10_000}) == "on the 10,000 test images"
    assert on_test_images({}) == "on the test set"  # a record from before records counted


def test_an_interrupted_evaluation_leaves_the_model_training(monkeypatch):
    model = VQVAE(preset_config("efficient").model).train()

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(model, "forward", stop)
    with pytest.raises(KeyboardInterrupt):
        evaluate_reconstruction(model, torch.zeros(3, 28, 28, dtype=torch.uint8))
    assert all(module.training for module in model.modules())


def test_a_perfect_reconstruction_prints_as_standard_json(capsys):
    # Black images and a decoder whose last bias saturates its sigmoid at exactly 0: MSE 0,
    # PSNR infinite, which `evaluate --json` printed as the non-JSON token Infinity.
    model = VQVAE(preset_config("efficient").model)
    with torch.no_grad():
        model.decoder.net[-2].bias.fill_(-1000.0)
    metrics = evaluate_reconstruction(model, torch.zeros(3, 28, 28, dtype=torch.uint8), 2)
    assert metrics["test_mse"] == 0.0 and metrics["test_psnr"] == math.inf
    print_json(metrics)
    printed = json.loads(capsys.readouterr().out, parse_constant=pytest.fail)
    assert printed["test_psnr"] is None and printed["test_mse"] == 0.0


def test_no_images_are_refused_in_a_sentence():
    model = VQVAE(preset_config("efficient").model)
    with pytest.raises(VqkitError, match="There are no images to evaluate"):
        evaluate_reconstruction(model, torch.zeros(0, 28, 28, dtype=torch.uint8))
