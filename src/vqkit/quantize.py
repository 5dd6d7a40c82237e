"""Vector quantization: snap each encoder output vector to its nearest codebook entry.

The quantizer contract, shared by every variant: ``forward(z)`` takes continuous latents
``(B, D, H, W)`` and returns a :class:`QuantizerOutput` with the straight-through quantized
latents, the integer code grid ``(B, H, W)``, the training loss and per-code usage counts;
``codes_to_latents`` maps integer grids back to latent vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vqkit.config import QuantizerConfig

# Largest number of distance entries (rows × codes) held at once. Chunking the distance matrix
# keeps peak memory flat as N×K grows, while chunks stay big enough for an efficient matmul.
DISTANCE_CHUNK_ELEMENTS = 1 << 22


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # (B, D, H, W) float, straight-through: gradient flows to z
    codes: torch.Tensor  # (B, H, W) int64 code indices
    loss: torch.Tensor  # () float: codebook loss + beta * commitment loss
    code_counts: torch.Tensor  # (K,) int64: how often each code was chosen in this batch


@torch.no_grad()
def nearest_codes(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row (squared L2) for each vector.

    vectors: (N, D), codebook: (K, D) -> (N,) int64. ||z||² is the same for every code, so the
    argmin only needs ||e||² - 2 z·e, one fused matrix product per chunk (never an N×K×D tensor).
    """
    # Distances and argmin stay fp32 even inside a bf16 autocast region (which would otherwise
    # run addmm in bf16 and pick wrong codes for near ties).
    with torch.autocast(vectors.device.type, enabled=False):
        vectors = vectors.detach().float()
        codebook = codebook.detach().float()
        code_sq_norms = codebook.pow(2).sum(dim=1)  # (K,)
        rows_per_chunk = max(1, DISTANCE_CHUNK_ELEMENTS // codebook.shape[0])
        if vectors.shape[0] <= rows_per_chunk:
            return torch.addmm(code_sq_norms, vectors, codebook.t(), alpha=-2.0).argmin(dim=1)
        out = torch.empty(vectors.shape[0], dtype=torch.long, device=vectors.device)
        for start in range(0, vectors.shape[0], rows_per_chunk):
            chunk = vectors[start : start + rows_per_chunk]
            distances = torch.addmm(code_sq_norms, chunk, codebook.t(), alpha=-2.0)  # (n, K)
            out[start : start + rows_per_chunk] = distances.argmin(dim=1)
        return out


def perplexity(code_counts: torch.Tensor) -> float:
    """exp(entropy) of the code-usage distribution: K when all codes are equally used, 1 if one."""
    probs = code_counts.double() / code_counts.sum().clamp(min=1)
    entropy = -(probs * torch.log(probs.clamp(min=1e-30))).sum()
    return float(torch.exp(entropy))


class VectorQuantizer(nn.Module):
    """The VQ-VAE quantizer (van den Oord et al. 2017) with the codebook learned by its loss."""

    def __init__(self, config: QuantizerConfig) -> None:
        super().__init__()
        self.config = config
        num, dim = config.num_embeddings, config.embedding_dim
        # Small uniform init as in the reference implementation: codes start near the origin.
        self.codebook = nn.Parameter(torch.empty(num, dim).uniform_(-1.0 / num, 1.0 / num))

    @property
    def num_codes(self) -> int:
        return self.config.num_embeddings

    def training_stats(self) -> dict[str, float | int]:
        """Counters the quantizer keeps across steps (restarts, ...), logged once per epoch."""
        return {}

    def quantize_codes(self, z: torch.Tensor) -> torch.Tensor:
        """Code grid (B, H, W) of latents z (B, D, H, W), without loss or gradient."""
        batch, dim, height, width = z.shape
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, dim)
        return nearest_codes(flat, self.codebook).view(batch, height, width)

    def codes_to_latents(self, codes: torch.Tensor) -> torch.Tensor:
        """Codebook vectors of an integer grid: (B, H, W) -> (B, D, H, W)."""
        return F.embedding(codes, self.codebook).permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        batch, dim, height, width = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, dim)  # (N, D), N = B·H·W
        codes = nearest_codes(flat, self.codebook)  # (N,)
        chosen = F.embedding(codes, self.codebook)  # (N, D): a lookup, not a one-hot matmul
        # Codebook loss moves codes toward encoder outputs; commitment loss keeps the encoder
        # close to its codes. Each term stops the gradient on its other side.
        codebook_loss = F.mse_loss(chosen, flat.detach())
        commitment_loss = F.mse_loss(flat, chosen.detach())
        loss = codebook_loss + self.config.beta * commitment_loss
        # Straight-through estimator: forward uses the code, backward copies the gradient to z.
        straight_through = flat + (chosen - flat).detach()
        quantized = straight_through.view(batch, height, width, dim).permute(0, 3, 1, 2)
        # index_add_ rather than bincount: CUDA bincount reads max() back to the host every step.
        counts = codes.new_zeros(self.num_codes).index_add_(0, codes, torch.ones_like(codes))
        return QuantizerOutput(quantized, codes.view(batch, height, width), loss, counts)


def build_quantizer(config: QuantizerConfig) -> nn.Module:
    """The quantizer a config asks for (one interface for every variant)."""
    return VectorQuantizer(config)
