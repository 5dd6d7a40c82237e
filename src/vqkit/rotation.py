"""Gradient estimators that carry the decoder's gradient past the non-differentiable code lookup.

The straight-through estimator copies the gradient at the code vector q unchanged onto the encoder
output e. The rotation trick (Fifty et al. 2024, "Restructuring Vector Quantization with the
Rotation Trick") instead treats q as a fixed rotation and rescaling of e: the forward value is
still exactly q, but the backward pass rotates the gradient by the same matrix, so its angle to e
carries information about where e sits inside its code's cell.
"""

from __future__ import annotations

import torch

# Guards the normalisations against zero-length vectors (an encoder output at the origin).
NORM_FLOOR = 1e-12


def straight_through(vectors: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Forward: exactly ``chosen``; backward: the identity onto ``vectors``. Both (N, D).

    Written as chosen + (z - z) rather than z + (chosen - z), which differs from the code by a
    rounding of z's magnitude: the decoder then trains on the very latents that sampling
    decodes (``codes_to_latents``).
    """
    return chosen.detach() + (vectors - vectors.detach())


def rotation_trick(vectors: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Forward: ``chosen``; backward: through ``λ R e`` with R, λ held constant. Both (N, D).

    R is the rotation taking the direction of e onto that of q, written without forming a D×D
    matrix: with unit vectors ê, q̂ and r = (ê + q̂)/|ê + q̂|, R e = e - 2 r (r·e) + 2 q̂ (ê·e);
    λ = |q| / |e| rescales. The forward value is replaced by q exactly (no rounding drift).
    """
    e_norm = vectors.detach().norm(dim=1, keepdim=True).clamp_min(NORM_FLOOR)  # (N, 1)
    q_norm = chosen.detach().norm(dim=1, keepdim=True).clamp_min(NORM_FLOOR)  # (N, 1)
    e_hat = vectors.detach() / e_norm
    q_hat = chosen.detach() / q_norm
    r = e_hat + q_hat
    r = r / r.norm(dim=1, keepdim=True).clamp_min(NORM_FLOOR)
    rotated = (
        vectors
        - 2 * r * (r * vectors).sum(dim=1, keepdim=True)
        + 2 * q_hat * (e_hat * vectors).sum(dim=1, keepdim=True)
    )
    scaled = rotated * (q_norm / e_norm)
    return chosen.detach() + (scaled - scaled.detach())


# The function of each name config.GRADIENT_ESTIMATORS offers (config imports no torch).
ESTIMATOR_FUNCTIONS = {"ste": straight_through, "rotation": rotation_trick}
