"""Eager training against training with a GraphedTrainStep: the shared half of the CPU and GPU
tests of --cuda-graph."""

from __future__ import annotations

import torch

from vqkit.acceleration import make_optimizer, make_scheduler
from vqkit.config import ModelConfig, TrainConfig
from vqkit.cuda_graph import GraphedTrainStep
from vqkit.model import VQVAE
from vqkit.training import run_epoch


def train_eager_and_graphed(
    model_config: ModelConfig, settings: TrainConfig, images: torch.Tensor, epochs: int
) -> dict[bool, tuple[list[float], dict[str, torch.Tensor], GraphedTrainStep | None]]:
    """The same seeded run twice, eagerly (False) and through a GraphedTrainStep (True):
    for each, (mean loss per epoch, final weights, the step object)."""
    steps_per_epoch = -(-images.shape[0] // settings.batch_size)
    runs = {}
    for graphed in (False, True):
        torch.manual_seed(0)
        model = VQVAE(model_config).to(images.device)
        optimizer = make_optimizer(model, settings)
        scheduler = make_scheduler(optimizer, settings, total_steps=epochs * steps_per_epoch)
        step = (
            GraphedTrainStep(model, optimizer, settings.batch_size, scheduler=scheduler)
            if graphed
            else None
        )
        order = torch.Generator().manual_seed(0)
        losses = [
            run_epoch(
                model,
                optimizer,
                images,
                settings.batch_size,
                order,
                scheduler=scheduler,
                graphed=step,
            )  # fmt: skip
            for _ in range(epochs)
        ]
        if scheduler is not None:
            assert scheduler.last_epoch == epochs * steps_per_epoch
        runs[graphed] = (losses, model.state_dict(), step)
    return runs
