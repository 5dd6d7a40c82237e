"""Reconstruction quality and codebook health of a trained model over a whole dataset split."""

from __future__ import annotations

import math

import torch

from vqkit.config import EVAL_BATCH_SIZE, IMAGE_SIZE
from vqkit.devices import evaluation_mode
from vqkit.errors import VqkitError
from vqkit.model import VQVAE, images_to_input
from vqkit.quantize import perplexity

# Sizes of the raw image a 7×7 code grid replaces, for the compression figures.
BINARIZED_IMAGE_BITS = IMAGE_SIZE * IMAGE_SIZE
EIGHT_BIT_IMAGE_BITS = IMAGE_SIZE * IMAGE_SIZE * 8


def psnr(mse: float, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of a mean squared error on [0, peak] images."""
    return float("inf") if mse <= 0 else 10.0 * math.log10(peak * peak / mse)


def code_grid_bits(num_codes: int, grid_size: int = 7) -> float:
    """Bits needed to store one image's code grid with a uniform code: H·W·log2 K."""
    return grid_size * grid_size * math.log2(num_codes)


@torch.no_grad()
def evaluate_reconstruction(
    model: VQVAE, images: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE
) -> dict[str, float | int]:
    """Test metrics of ``model`` on uint8 images (N, H, W), over the whole set at once.

    Perplexity and codes used count every code chosen over all N images (not per batch, which
    would depend on the batch size). Sums stay on the device: one host sync at the end.
    """
    if images.shape[0] == 0:  # a mean over no pixels
        raise VqkitError("There are no images to evaluate; give at least one.")
    device = next(model.parameters()).device
    squared_error = torch.zeros((), dtype=torch.float64, device=device)
    counts = torch.zeros(model.num_codes, dtype=torch.long, device=device)
    with evaluation_mode(model):
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size].to(device, non_blocking=True)
            out = model(batch)
            target = images_to_input(batch)
            error = (out.reconstruction.float() - target).pow(2).sum(dtype=torch.float64)
            squared_error += error
            counts += out.code_counts
    pixels = images.numel()
    mse = float(squared_error) / pixels
    used = int((counts > 0).sum())
    return {
        "test_images": int(images.shape[0]),
        "test_mse": mse,
        "test_psnr": psnr(mse),
        "perplexity": perplexity(counts.cpu()),
        "codes_used": used,
        "dead_codes": model.num_codes - used,
        "num_codes": model.num_codes,
        "bits_per_image": code_grid_bits(model.num_codes, model.config.grid_size),
        "binarized_image_bits": BINARIZED_IMAGE_BITS,
        "eight_bit_image_bits": EIGHT_BIT_IMAGE_BITS,
    }
