"""The VQ-VAE quantizer (van den Oord et al. 2017): a learned codebook of K vectors of size D.

The codebook learns in one of two ways (``QuantizerConfig.codebook_update``):

- ``loss``: the paper's codebook loss ||sg[z] - e||² pulls each chosen code toward its encoder
  outputs through the optimizer (the tutorial's model).
- ``ema``: the paper's appendix. Each code is the running mean of the encoder outputs assigned to
  it, kept as exponential moving averages of the cluster sizes N and vector sums m:
  N ← γN + (1-γ)n, m ← γm + (1-γ)Σz, e = m / Ñ with Laplace-smoothed sizes
  Ñ = (N + ε) / (ΣN + Kε) · ΣN. The codebook is then a buffer the optimizer never sees, and the
  loss is the commitment term only.

Health measures (see :mod:`vqkit.codebook_health`): optional k-means initialisation on the first
training batch and restarts of dead codes. All state lives in registered buffers, so it is saved
in ``model.safetensors`` and restored exactly; statistics change only in training mode.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vqkit import codebook_health as health
from vqkit.config import QuantizerConfig
from vqkit.errors import InvalidValue
from vqkit.quantize import (
    QuantizerOutput,
    as_latents,
    as_rows,
    count_batch_codes,
    latent_shape,
    nearest_codes,
    positions_per_item,
    require_code_tensor,
    require_codes_in_range,
)
from vqkit.rotation import ESTIMATOR_FUNCTIONS

# Cluster size given to a freshly initialised or restarted code: it stands for the one vector it
# was set to, so the EMA neither drags it to the origin nor blows it up before it is chosen.
FRESH_CLUSTER_SIZE = 1.0
# The EMA's running statistics (buffers), kept in at least fp32 whatever dtype the module is
# cast to: in bf16 each step's share (1 − γ = 0.01) is mostly rounded away, and a code settled
# 17–27% off the mean of the vectors it stood for.
EMA_STATISTICS = ("ema_cluster_size", "ema_embed_sum")


class VectorQuantizer(nn.Module):
    """Nearest-code quantizer with a loss- or EMA-updated codebook (K, D)."""

    # The codebook (a Parameter, or a buffer with EMA updates) and the buffers registered in
    # __init__ where the config uses them, as static tools should read them (nn.Module's own
    # __getattr__ says Tensor | Module).
    codebook: torch.Tensor
    ema_cluster_size: torch.Tensor
    ema_embed_sum: torch.Tensor
    steps_since_used: torch.Tensor
    restart_count: torch.Tensor
    kmeans_done: torch.Tensor

    def __init__(self, config: QuantizerConfig) -> None:
        super().__init__()
        if config.quantizer == "fsq":  # build_quantizer picks the class a config names
            raise InvalidValue(
                "This config asks for FSQ (quantizer 'fsq'); build it with "
                "vqkit.quantize.build_quantizer(config) or FiniteScalarQuantizer(config)."
            )
        self.config = config
        num, dim = config.num_embeddings, config.embedding_dim
        self.ema = config.codebook_update == "ema"
        self.estimator = ESTIMATOR_FUNCTIONS[config.gradient_estimator]
        # Small uniform init as in the reference implementation: codes start near the origin.
        initial = torch.empty(num, dim).uniform_(-1.0 / num, 1.0 / num)
        # Only the state a configuration uses is registered, so the default model's weights file
        # holds just the codebook, as before these options existed.
        if self.ema:
            self.register_buffer("codebook", initial)
            self.register_buffer("ema_cluster_size", torch.full((num,), FRESH_CLUSTER_SIZE))
            self.register_buffer("ema_embed_sum", initial * FRESH_CLUSTER_SIZE)
        else:
            self.codebook = nn.Parameter(initial)
        if config.dead_code_restart > 0:
            self.register_buffer("steps_since_used", torch.zeros(num, dtype=torch.long))
            self.register_buffer("restart_count", torch.zeros((), dtype=torch.long))
        if config.codebook_init == "kmeans":
            self.register_buffer("kmeans_done", torch.zeros((), dtype=torch.bool))
        # Host-side memory of kmeans_done once it is True: reading the buffer itself every step
        # would make a GPU wait for the device (a host synchronisation) at each forward.
        self._kmeans_known_done = False

    def _apply(self, fn, recurse=True):
        """nn.Module's (``.to``, ``.half``, ``.bfloat16``, ...), with :data:`EMA_STATISTICS`
        raised back to fp32 when cast to a narrower float (the codebook takes the new dtype)."""
        super()._apply(fn, recurse)
        for name in EMA_STATISTICS if self.ema else ():
            statistic = self._buffers[name]
            if (
                statistic is not None
                and statistic.is_floating_point()
                and torch.finfo(statistic.dtype).bits < 32
            ):
                self._buffers[name] = statistic.float()
        return self

    @property
    def num_codes(self) -> int:
        return self.config.num_embeddings

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"num_codes={c.num_embeddings}, dim={c.embedding_dim}, beta={c.beta}, "
            f"update={c.codebook_update!r}, estimator={c.gradient_estimator!r}"
        )

    def training_stats(self) -> dict[str, float | int]:
        """Counters kept across steps, logged once per epoch: restarts so far."""
        restarts = int(self.restart_count) if self.config.dead_code_restart > 0 else 0
        return {"codebook_restarts": restarts}

    def quantize_codes(self, z: torch.Tensor) -> torch.Tensor:
        """Code grid (B, H, W) of latents z (B, D, H, W) (any (B, D, *S) -> (B, *S)), without
        loss, gradient or updates."""
        shape = latent_shape(z, self.config.embedding_dim)
        return nearest_codes(as_rows(z.detach()), self.codebook).view(shape[0], *shape[2:])

    def codes_to_latents(self, codes: torch.Tensor) -> torch.Tensor:
        """Codebook vectors of integer codes: (B, H, W) -> (B, D, H, W) (any (B, *S) ->
        (B, D, *S)). Codes must lie in 0 .. num_codes - 1: checked for CPU tensors, not for
        GPU ones (reading them would make the GPU wait; ``VQVAE.decode`` checks once)."""
        codes = require_code_tensor(codes)
        if codes.device.type == "cpu":
            require_codes_in_range(codes, self.num_codes)
        return F.embedding(codes.long(), self.codebook).movedim(-1, 1)  # uint8 codes too

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantize latents z (B, D, H, W) (or (B, D, *S)): nearest codes, straight-through
        latents, the codebook + β·commitment loss (β·commitment alone with EMA updates), and
        in training mode the codebook's statistics (EMA, restarts, k-means init)."""
        shape = latent_shape(z, self.config.embedding_dim)
        flat = as_rows(z)  # (N, D), N = B·∏S (B·H·W for images)
        per_item = positions_per_item(shape)
        # An empty batch has nothing to learn from; an empty shard of a multi-process batch
        # still joins the others' collectives (they learn from their rows).
        learns = self.training and (flat.shape[0] > 0 or health.distributed())
        if learns and self.needs_initialization():
            self._kmeans_init(flat, per_item)
        codes = nearest_codes(flat, self.codebook)  # (N,)
        chosen = F.embedding(codes, self.codebook)  # (N, D): a lookup, not a one-hot matmul
        # The commitment loss keeps the encoder close to its codes; with the loss update, the
        # codebook loss moves codes toward encoder outputs. Each term stops the gradient on its
        # other side. (With EMA the codebook is a buffer and needs no loss.)
        loss = self.config.beta * _mean_squared(flat, chosen.detach())
        if not self.ema:
            loss = loss + _mean_squared(chosen, flat.detach())
        quantized = as_latents(self.estimator(flat, chosen), shape)  # forward: chosen
        counts: torch.Tensor | int = self.num_codes  # counted only if read, unless learning
        if learns:
            counts = count_batch_codes(codes, self.num_codes)
            self._update_statistics(flat, codes, counts, per_item)
        return QuantizerOutput(quantized, codes.view(shape[0], *shape[2:]), loss, counts)

    @torch.no_grad()
    def initialize(self, z: torch.Tensor) -> None:
        """The k-means init from latents z (B, D, H, W) if still pending, exactly as the first
        training forward would do it; compiled training calls this eagerly first, so that no
        compiled graph traces the data-dependent k-means."""
        if self.needs_initialization():
            shape = latent_shape(z, self.config.embedding_dim)
            if z.numel() or health.distributed():
                self._kmeans_init(as_rows(z), positions_per_item(shape))

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        # Loaded weights bring their own kmeans_done (False for an untrained model's): it is
        # read again rather than remembered from before.
        self._kmeans_known_done = False
        super()._load_from_state_dict(*args, **kwargs)

    def needs_initialization(self) -> bool:
        """Whether the k-means init is still to come (read from the device at most once)."""
        if self.config.codebook_init != "kmeans" or self._kmeans_known_done:
            return False
        self._kmeans_known_done = bool(self.kmeans_done)  # True after a restored checkpoint
        return not self._kmeans_known_done

    @torch.no_grad()
    def _kmeans_init(self, flat: torch.Tensor, rows_per_image: int) -> None:
        """Replace the codebook by k-means centroids of this batch's encoder outputs (all
        ranks' shards together), once: a batch with a non-finite output leaves it to the next
        (one NaN would spread into a centroid for good)."""
        whole = health.gather_batch(flat.detach(), rows_per_image)
        if not bool(torch.isfinite(whole).all()):  # the same answer on every rank
            return
        centroids = health.kmeans(whole, self.num_codes, self.config.kmeans_iters)
        self.codebook.copy_(centroids)
        if self.ema:
            self.ema_cluster_size.fill_(FRESH_CLUSTER_SIZE)
            self.ema_embed_sum.copy_(centroids * FRESH_CLUSTER_SIZE)
        self.kmeans_done.fill_(True)
        self._kmeans_known_done = True

    @torch.no_grad()
    def _update_statistics(
        self, flat: torch.Tensor, codes: torch.Tensor, counts: torch.Tensor, rows_per_image: int
    ) -> None:
        """After a training step's assignments: EMA update, usage counters, dead-code restarts.

        Batch counts and sums are summed over ranks first, so every rank applies the same update.
        A batch with a non-finite encoder output on any rank changes nothing: the training loop
        may skip that step (--skip-nonfinite), and one NaN averaged into the EMA statistics
        would otherwise spoil the codebook for good. Decided on the device (no host wait).
        """
        if not (self.ema or self.config.dead_code_restart > 0):
            return
        # Everything below may change, the codebook included (a parameter when loss-updated).
        state = [buffer for _, buffer in self.named_buffers()]
        state += [] if self.ema else [self.codebook.data]
        before = [tensor.clone() for tensor in state]
        # (K,), () bool, () bool
        global_counts, healthy, even = health.summed_counts_and_health(counts, flat)
        if self.ema:
            sums = torch.zeros_like(self.ema_embed_sum)
            sums.index_add_(0, codes, flat.to(sums.dtype))
            self.ema_update(global_counts, health.all_reduce_sum_(sums))
        if self.config.dead_code_restart > 0:
            health.update_steps_since_used(self.steps_since_used, global_counts)
            self._restart_dead_codes(flat, rows_per_image, even)
        for tensor, old in zip(state, before, strict=True):
            tensor.copy_(torch.where(healthy, tensor, old))

    @torch.no_grad()
    def ema_update(self, counts: torch.Tensor, sums: torch.Tensor) -> None:
        """One EMA step from a batch's cluster sizes ``counts`` (K,) and vector sums (K, D)."""
        decay, eps = self.config.ema_decay, self.config.ema_epsilon
        self.ema_cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
        self.ema_embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
        total = self.ema_cluster_size.sum()
        smoothed = (self.ema_cluster_size + eps) / (total + self.num_codes * eps) * total
        self.codebook.copy_(self.ema_embed_sum / smoothed.unsqueeze(1))

    @torch.no_grad()
    def _restart_dead_codes(
        self, flat: torch.Tensor, rows_per_image: int, even: torch.Tensor
    ) -> None:
        """Move dead codes onto random encoder outputs of this batch (drawn from all ranks').

        ``even`` (() bool) says whether all ranks hold equal shards; a step where they do not
        (a custom loop's last batch) restarts nothing, and the next even step does.

        Written with masks instead of index lists so that no step waits on the device to learn
        how many codes died.
        """
        dead = (
            health.dead_code_mask(
                self.steps_since_used,
                self.config.dead_code_restart,
                self.ema_cluster_size if self.ema else None,
                self.config.dead_code_threshold,
            )
            & even
        )  # (K,) bool
        replacements = health.sample_rows(flat, self.num_codes, rows_per_image)  # (K, D)
        replacements = replacements.to(self.codebook.dtype)
        rows = dead.unsqueeze(1)
        self.codebook.copy_(torch.where(rows, replacements, self.codebook))
        if self.ema:
            self.ema_cluster_size.masked_fill_(dead, FRESH_CLUSTER_SIZE)
            fresh_sums = replacements * FRESH_CLUSTER_SIZE
            self.ema_embed_sum.copy_(torch.where(rows, fresh_sums, self.ema_embed_sum))
        self.steps_since_used.masked_fill_(dead, 0)
        self.restart_count += dead.sum()


def _mean_squared(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean((a - b)²) as a () tensor; 0 (still in the graph) for an empty batch, where
    F.mse_loss gives NaN."""
    return F.mse_loss(a, b) if a.numel() else (a - b).sum()
