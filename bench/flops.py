"""Compute floors: measured matrix-product peak of this machine and model FLOPs per image.

The peak is the best of a few timed large square matrix products (the most efficient kernel a
CPU or GPU runs); the floor of a training configuration is its FLOPs per image divided by that
peak, i.e. the images/s it could reach if every FLOP ran at matmul speed.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from vqkit.config import RunConfig
from vqkit.model import VQVAE, images_to_input

PEAK_SIZE = 2048  # square matmul side: large enough to hit peak, small enough to time quickly
PEAK_REPEATS = 5


def measure_peak_gflops(dtype: torch.dtype, device: str = "cpu") -> float:
    """Best GFLOP/s of PEAK_SIZE² matrix products in ``dtype`` (2·n³ FLOP each)."""
    a = torch.randn(PEAK_SIZE, PEAK_SIZE, device=device).to(dtype)
    b = torch.randn(PEAK_SIZE, PEAK_SIZE, device=device).to(dtype)
    torch.mm(a, b)  # warm-up: kernel selection, page faults
    best = float("inf")
    for _ in range(PEAK_REPEATS):
        if device != "cpu":
            torch.cuda.synchronize()
        started = time.perf_counter()
        torch.mm(a, b)
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * PEAK_SIZE**3 / best / 1e9


def training_flops_per_image(config: RunConfig, batch: int = 64) -> dict[str, float]:
    """FLOPs of one training step per image, counted by torch's counter: ``forward``, ``train``
    (forward + backward) and ``convolutions`` (the part of ``train`` in convolutions).

    Counts matrix products and convolutions (what the counter models); elementwise work is
    memory-bound and not included, so the floor is optimistic.
    """
    model = VQVAE(config.model)
    images = torch.randint(0, 256, (batch, 28, 28), dtype=torch.uint8)
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(images)
        loss = F.mse_loss(out.reconstruction, images_to_input(images)) + out.vq_loss
        forward = counter.get_total_flops()
        loss.backward()
    total = counter.get_total_flops()
    by_operator = counter.get_flop_counts()["Global"]
    convolutions = sum(n for op, n in by_operator.items() if "convolution" in str(op))
    return {
        "forward": forward / batch,
        "train": total / batch,
        "convolutions": convolutions / batch,
    }
