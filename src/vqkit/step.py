"""One VQ-VAE training step, the part every training loop shares (eager or replayed)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vqkit.acceleration import autocast
from vqkit.model import images_to_input


def compute_losses(
    model: nn.Module | Any, batch: torch.Tensor, precision: str = "fp32"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward one uint8 batch (B, H, W): (reconstruction MSE, quantizer loss), both ().

    ``precision`` 'bf16' autocasts the convolutions; the loss itself is taken in fp32.
    """
    with autocast(batch.device, precision):
        out = model(batch)
        reconstruction = F.mse_loss(out.reconstruction.float(), images_to_input(batch))
    return reconstruction, out.vq_loss


def apply_step(
    optimizer: torch.optim.Optimizer,
    reconstruction: torch.Tensor,
    quantizer: torch.Tensor,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> torch.Tensor:
    """Backpropagate the total loss and take one optimizer (and schedule) step."""
    loss = reconstruction + quantizer
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return loss.detach()
