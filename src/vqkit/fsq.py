"""Finite Scalar Quantization (Mentzer et al. 2023): a fixed grid of codes instead of a codebook.

No codebook: the latent is projected to one channel per entry of ``levels``, each channel is
squashed into a bounded range and rounded to one of L_i evenly spaced values, and the integer
code is the mixed-radix number whose digits are those values. Every one of the ∏ L_i codes is a
fixed point of the grid, so none can die; there is no codebook or commitment loss.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vqkit.config import QuantizerConfig
from vqkit.quantize import (
    QuantizerOutput,
    as_latents,
    as_rows,
    latent_shape,
    require_code_tensor,
    require_codes_in_range,
)

# Widens the tanh range a little so its open interval still rounds to the outermost values.
BOUND_MARGIN = 1e-3


class FiniteScalarQuantizer(nn.Module):
    """FSQ with levels (L_1..L_c) behind a D -> c -> D linear projection (identity when D = c)."""

    # The buffers registered in __init__, as static tools should read them (nn.Module's own
    # __getattr__ says Tensor | Module).
    levels: torch.Tensor
    radix: torch.Tensor
    top: torch.Tensor

    def __init__(self, config: QuantizerConfig) -> None:
        super().__init__()
        self.config = config
        levels = torch.tensor(config.fsq_levels, dtype=torch.long)
        channels, dim = len(config.fsq_levels), config.embedding_dim
        # Digit i of a code is worth ∏_{j<i} L_j (mixed radix, first channel least significant).
        radix = torch.cumprod(torch.cat([torch.ones(1, dtype=torch.long), levels[:-1]]), dim=0)
        # Non-persistent: derived from the config, so the weights file need not carry them.
        self.register_buffer("levels", levels, persistent=False)
        self.register_buffer("radix", radix, persistent=False)
        # The highest rounded value per channel: (L-1)/2 for odd L, L/2 - 1 for even L.
        self.register_buffer("top", (levels - 1) // 2, persistent=False)
        # The encoder and decoder keep their D channels; a projection adapts them to c channels.
        same = dim == channels
        self.project_in = nn.Identity() if same else nn.Linear(dim, channels)
        self.project_out = nn.Identity() if same else nn.Linear(channels, dim)

    @property
    def num_codes(self) -> int:
        return math.prod(self.config.fsq_levels)

    def extra_repr(self) -> str:
        return f"levels={list(self.config.fsq_levels)}, dim={self.config.embedding_dim}"

    @staticmethod
    def _project(layer: nn.Module, rows: torch.Tensor) -> torch.Tensor:
        """Rows (N, D) through a projection (N, c), or grid values (N, c) back (N, D)."""
        # Under autocast the Linear casts by itself; outside it, a bf16 row and an fp32 weight
        # would not multiply.
        if isinstance(layer, nn.Linear) and not torch.is_autocast_enabled(rows.device.type):
            rows = rows.to(layer.weight.dtype)
        return layer(rows)

    def training_stats(self) -> dict[str, float | int]:
        return {}

    def needs_initialization(self) -> bool:
        return False  # a fixed grid: nothing learned from data before the first step

    def initialize(self, z: torch.Tensor) -> None:
        pass

    def bound(self, h: torch.Tensor) -> torch.Tensor:
        """Squash (N, c) into ranges whose rounding gives exactly L_i integers per channel.

        Odd L: values -(L-1)/2 .. (L-1)/2, centred on h = 0. Even L: -L/2 .. L/2 - 1, shifted half
        a step down so that h = 0 falls on the boundary between two values and each sign of h
        reaches L/2 of them (no shift inside the tanh, which would favour one side).
        """
        levels = self.levels.to(h.dtype)
        half = (levels - 1) * (1 + BOUND_MARGIN) / 2
        offset = (self.levels % 2 == 0).to(h.dtype) / 2
        return torch.tanh(h) * half - offset

    def scalar_quantize(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-bound channels (N, c) -> (values in [-1, 1] (N, c) with straight-through rounding,
        integer codes (N,)).

        Bound and round in at least fp32: under bf16 autocast ``h`` arrives in bf16, whose
        rounding near the .5 boundaries would pick other codes than ``encode`` (fp32) does.
        """
        h = h.to(torch.promote_types(h.dtype, torch.float32))
        bounded = self.bound(h)
        half_width = self.levels // 2
        # The bound's margin lets a saturated tanh round one step past the last value once
        # (L - 1) * BOUND_MARGIN / 2 >= 0.5, i.e. for L > 1000: keep to the L values.
        integers = torch.minimum(torch.maximum(bounded.detach().round(), -half_width), self.top)
        rounded = bounded + (integers - bounded).detach()  # straight-through rounding
        # Clamped again as integers: a NaN latent has no digit, and its row gets code 0 (the
        # loss is NaN, which the training guard reports) instead of an index past the counts.
        digits = torch.minimum((integers.long() + half_width).clamp(min=0), self.levels - 1)
        return rounded / half_width.to(h.dtype), (digits * self.radix).sum(dim=1)

    def codes_to_values(self, codes: torch.Tensor) -> torch.Tensor:
        """Integer codes (N,) -> grid values (N, c) in [-1, 1]: the inverse of the code index."""
        digits = (codes.unsqueeze(1) // self.radix) % self.levels  # (N, c)
        half_width = self.levels // 2
        return (digits - half_width).float() / half_width.float()

    def quantize_codes(self, z: torch.Tensor) -> torch.Tensor:
        """Code grid (B, H, W) of latents z (B, D, H, W) (any (B, D, *S) -> (B, *S))."""
        shape = latent_shape(z, self.config.embedding_dim)
        with torch.no_grad():
            codes = self.scalar_quantize(self._project(self.project_in, as_rows(z)))[1]
            return codes.view(shape[0], *shape[2:])

    def codes_to_latents(self, codes: torch.Tensor) -> torch.Tensor:
        """Latents of a code grid (B, H, W) -> (B, D, H, W) (any (B, *S) -> (B, D, *S)): what
        the decoder saw in training. In the projections' dtype; without projections (D equal
        to the number of levels) the quantizer holds no weights to take a dtype from, and the
        grid values come as float32: cast them to your model's dtype.

        Codes must lie in 0 .. num_codes - 1: checked for CPU tensors; on a GPU others wrap to
        another code's latents (reading them would make it wait; ``VQVAE.decode`` checks once)."""
        codes = require_code_tensor(codes)
        if codes.device.type == "cpu":
            require_codes_in_range(codes, self.num_codes)
        values = self.codes_to_values(codes.reshape(-1))  # (N, c)
        latents = self._project(self.project_out, values)  # (N, D)
        return latents.view(*codes.shape, latents.shape[1]).movedim(-1, 1)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantize latents z (B, D, H, W) (or (B, D, *S)) onto the grid. The gradient reaches
        z through the bounding tanh and the projections (straight-through only across the
        rounding), so it is not the identity a VQ's straight-through copy gives."""
        shape = latent_shape(z, self.config.embedding_dim)
        h = self._project(self.project_in, as_rows(z))  # (N, c)
        values, codes = self.scalar_quantize(h)  # (N, c), (N,)
        quantized = as_latents(self._project(self.project_out, values), shape)
        if isinstance(self.project_out, nn.Identity):
            # No projection's type to take: the fp32 grid values take the encoder's, or they
            # would not enter a decoder cast wholly to bf16 (autocast casts them the same way).
            quantized = quantized.to(z.dtype)
        loss = torch.zeros((), device=z.device, dtype=quantized.dtype)
        # The counts are made only if read: nothing in FSQ's training step needs them.
        return QuantizerOutput(quantized, codes.view(shape[0], *shape[2:]), loss, self.num_codes)
