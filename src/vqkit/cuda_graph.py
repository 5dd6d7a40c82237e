"""Whole training steps replayed as one CUDA graph (``--cuda-graph``).

On a GPU the small VQ-VAE is bound by the host, not the GPU: an eager step launches about a
hundred kernels, and an H100 sits idle for two thirds of it waiting for them (bench/step_host.py,
BENCHMARKS.md). Captured once, a step -- forward, losses, backward and the Adam update -- becomes
one launch. torch.compile's ``reduce-overhead`` mode also replays graphs, but its generated
kernels cost the GPU more per step than cuDNN's eager ones here, and it compiles for ~16 s first.

The graph records memory addresses, so the step's batch is copied into one static buffer, the
learning rate is read from a device tensor that the schedule's value is copied into (a schedule
that also moves Adam's beta1 keeps the update out of the graph, see ``optimizer_in_graph``), and
only batches of the captured size replay (an epoch's shorter last batch trains eagerly).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vqkit import distributed
from vqkit.config import TrainConfig
from vqkit.errors import VqkitError
from vqkit.step import apply_step, compute_losses

# Eager steps before the capture, on a side stream as CUDA graphs need: they create the Adam
# moments and the lazily built cuDNN/cuBLAS state, and run the k-means init (data-dependent,
# so never captured). They are real training steps, not discarded ones.
WARMUP_STEPS = 3

StepLosses = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def require_cuda_graph_support(
    settings: TrainConfig, device: torch.device, context: distributed.Context
) -> None:
    """Refuse, in one sentence, the runs a captured step cannot train."""
    if not settings.cuda_graph:
        return
    if device.type != "cuda":
        raise VqkitError(
            f"--cuda-graph replays the training step on a CUDA GPU, and this run trains on "
            f"'{device}'; train on a GPU or leave out --cuda-graph."
        )
    if context.enabled:
        raise VqkitError(
            "--cuda-graph trains with one process; run it without torchrun, or leave it out."
        )
    if settings.skip_nonfinite:
        raise VqkitError(
            "--cuda-graph applies each step inside the graph, so it cannot skip bad steps; "
            "leave out --skip-nonfinite or --cuda-graph."
        )


def graphed_step_or_none(
    settings: TrainConfig,
    model: nn.Module | Any,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    precision: str,
) -> GraphedTrainStep | None:
    """The replayed step ``settings.cuda_graph`` asks for, or None (steps run eagerly)."""
    if not settings.cuda_graph:
        return None
    return GraphedTrainStep(
        model, optimizer, settings.batch_size, scheduler=scheduler, precision=precision
    )


class GraphedTrainStep:
    """``compute_losses`` + ``apply_step`` for one batch, replayed from a CUDA graph.

    The first ``WARMUP_STEPS`` full batches train eagerly, the next one is captured, and every
    later batch of ``batch_size`` images replays the graph: the same kernels in the same order
    as an eager step, without the host launching them one by one. Other batch sizes train
    eagerly. Calls return (reconstruction loss, quantizer loss, total loss), detached; after a
    replay they are the graph's own outputs, overwritten by the next replay.
    """

    def __init__(
        self,
        model: nn.Module | Any,
        optimizer: torch.optim.Optimizer,
        batch_size: int,
        *,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        precision: str = "fp32",
    ) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.batch_size, self.precision = batch_size, precision
        self.warm_steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_batch: torch.Tensor | None = None
        self.outputs: StepLosses | None = None
        self.params: list[torch.Tensor] = []  # in the optimizer's order, as graph_grads
        self.graph_grads: list[torch.Tensor | None] = []
        self.adam_in_graph = True
        # Per parameter group: the rate the recorded update reads, and its host value last
        # copied there.
        self.device_rates: list[torch.Tensor] = []
        self.host_rates: list[float] = []

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, batch: torch.Tensor) -> StepLosses:
        if batch.shape[0] != self.batch_size:
            return self._eager(batch)
        if self.graph is not None:
            return self._replay(batch)
        if self.warm_steps < WARMUP_STEPS:
            self.warm_steps += 1
            return self._on_side_stream(batch)
        return self._capture(batch)

    def _eager(self, batch: torch.Tensor) -> StepLosses:
        reconstruction, quantizer = compute_losses(self.model, batch, self.precision)
        loss = apply_step(self.optimizer, reconstruction, quantizer, self.scheduler)
        return reconstruction.detach(), quantizer.detach(), loss

    def _on_side_stream(self, batch: torch.Tensor) -> StepLosses:
        side = torch.cuda.Stream(batch.device)
        side.wait_stream(torch.cuda.current_stream(batch.device))
        with torch.cuda.stream(side):
            losses = self._eager(batch)
        torch.cuda.current_stream(batch.device).wait_stream(side)
        return losses

    def _capture(self, batch: torch.Tensor) -> StepLosses:
        """Record one step on ``batch``'s shape (recording runs nothing), then replay it."""
        self.static_batch = batch.clone()
        groups = self.optimizer.param_groups
        self.adam_in_graph = optimizer_in_graph(self.scheduler)
        plain = [(group["lr"], group["capturable"]) for group in groups]
        if self.adam_in_graph:
            self.host_rates = [float(group["lr"]) for group in groups]
            self.device_rates = [
                torch.tensor(rate, dtype=torch.float32, device=batch.device)
                for rate in self.host_rates
            ]
            # Only while recording: the fused kernel then reads the rate from the device.
            for group, rate in zip(groups, self.device_rates, strict=True):
                group["lr"], group["capturable"] = rate, True
        # Gradients set to None: the recorded backward writes them afresh at each replay.
        self.optimizer.zero_grad(set_to_none=True)
        try:
            self.graph, self.outputs = self._record()
        except RuntimeError as error:
            raise VqkitError(
                "This training step cannot be captured as a CUDA graph "
                f"({str(error).splitlines()[0]}); train without --cuda-graph."
            ) from error
        finally:
            for group, (rate, capturable) in zip(groups, plain, strict=True):
                group["lr"], group["capturable"] = rate, capturable
        # The graph writes these gradients at every replay. An eager step (a short batch) sets
        # .grad to None; this list keeps their memory for the graph and hands them back.
        self.params = [p for group in groups for p in group["params"]]
        self.graph_grads = [p.grad for p in self.params]
        return self._replay(batch)

    def _record(self) -> tuple[torch.cuda.CUDAGraph, StepLosses]:
        """The recording itself: the step on ``static_batch``, Adam too if ``adam_in_graph``."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            reconstruction, quantizer = compute_losses(
                self.model, self.static_batch, self.precision
            )
            loss = reconstruction + quantizer
            loss.backward()
            if self.adam_in_graph:
                self.optimizer.step()
        return graph, (reconstruction.detach(), quantizer.detach(), loss.detach())

    def _replay(self, batch: torch.Tensor) -> StepLosses:
        assert self.graph is not None and self.static_batch is not None
        assert self.outputs is not None
        self.static_batch.copy_(batch)
        groups = self.optimizer.param_groups
        if self.adam_in_graph:
            for index, group in enumerate(groups):
                if group["lr"] != self.host_rates[index]:  # the schedule moved it (host floats)
                    self.device_rates[index].fill_(group["lr"])
                    self.host_rates[index] = group["lr"]
        self.graph.replay()
        if not self.adam_in_graph:  # the graph wrote the gradients; Adam runs eagerly on them
            for param, grad in zip(self.params, self.graph_grads, strict=True):
                param.grad = grad
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return self.outputs


def optimizer_in_graph(scheduler: Any) -> bool:
    """Whether Adam's update is recorded with the step. It reads the rate from a device tensor
    the schedule's value is copied into; but its fused kernel takes beta1 as a host number,
    fixed in a recording, so under a one-cycle schedule that cycles the momentum (its default)
    the graph stops after the backward pass and the update runs eagerly."""
    return not getattr(scheduler, "cycle_momentum", False)
