"""Paths between two images through the discrete latent space.

Four modes, each giving ``steps`` code grids from A's codes (t = 0) to B's codes (t = 1):

- ``crossfade``: patches switch from A's code to B's in a random order; at step t the first
  round(t·P) patches of that order hold B's code (P = h·w). A switched patch stays switched.
- ``wipe``: the same, with patches switching in raster order (top-left to bottom-right).
- ``random-mask``: the tutorial's own recipe: each step draws a fresh mask that takes every
  patch from B with probability t, independently of the other steps, so the number of B's
  patches varies around t·P and a patch may switch back.
- ``latent``: the continuous encoder outputs are interpolated linearly, then quantized.
"""

from __future__ import annotations

import torch

from vqkit import arguments
from vqkit.constants import INTERPOLATION_MODES, MIN_INTERPOLATION_STEPS
from vqkit.errors import InvalidValue, out_of_memory_said
from vqkit.model import VQVAE, images_to_input

MODES = INTERPOLATION_MODES
MIN_STEPS = MIN_INTERPOLATION_STEPS  # the two ends, t = 0 and t = 1


def _checked_steps(steps: int) -> int:
    return arguments.whole_number(steps, "The number of interpolation steps", MIN_STEPS)


def _step_fractions(steps: int) -> torch.Tensor:
    return torch.linspace(0.0, 1.0, _checked_steps(steps), dtype=torch.float64)


def patch_switch_codes(
    codes_a: torch.Tensor, codes_b: torch.Tensor, order: torch.Tensor, steps: int
) -> torch.Tensor:
    """Grids (steps, h, w) where step t takes B's code at the first round(t·P) patches of order.

    codes_a, codes_b: (h, w) int; order: (P,) a permutation of the flat patch indices.
    """
    flat_a, flat_b = codes_a.flatten(), codes_b.flatten()
    patches = flat_a.numel()
    # rank[p] = position of patch p in the switching order; it switches once rank < count.
    rank = torch.empty_like(order)
    rank[order] = torch.arange(patches, device=order.device)
    counts = torch.round(_step_fractions(steps) * patches).long().to(order.device)  # (steps,)
    switched = rank.unsqueeze(0) < counts.unsqueeze(1)  # (steps, P)
    frames = torch.where(switched, flat_b.unsqueeze(0), flat_a.unsqueeze(0))
    return frames.view(steps, *codes_a.shape)


def interpolate_codes(
    codes_a: torch.Tensor,
    codes_b: torch.Tensor,
    steps: int,
    mode: str = "crossfade",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Code-space interpolation (crossfade, wipe or random-mask) between two (h, w) grids ->
    (steps, h, w); NumPy grids (``np.load`` of ``vqkit encode``'s output) are taken too."""
    codes_a = arguments.integers(codes_a, "A code grid", arrays=True)
    codes_b = arguments.integers(codes_b, "A code grid", arrays=True)
    if codes_a.shape != codes_b.shape or codes_a.dim() != 2:
        raise InvalidValue("Both code grids must be 2-D and of the same shape.")
    patches = codes_a.numel()
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    if mode == "crossfade":
        order = torch.randperm(patches, generator=generator).to(codes_a.device)
    elif mode == "wipe":
        order = torch.arange(patches, device=codes_a.device)
    elif mode == "random-mask":
        return random_mask_codes(codes_a, codes_b, steps, generator)
    else:
        raise InvalidValue(
            f"'{mode}' is not a code-space mode; use crossfade, wipe or random-mask."
        )
    return patch_switch_codes(codes_a, codes_b, order, steps)


def random_mask_codes(
    codes_a: torch.Tensor, codes_b: torch.Tensor, steps: int, generator: torch.Generator
) -> torch.Tensor:
    """Grids (steps, h, w) where step t takes each patch's code from B with probability t, a
    fresh draw per step (uniform < t: never at t = 0, always at t = 1)."""
    fractions = _step_fractions(steps)
    shape = (fractions.numel(), codes_a.numel())
    draws = torch.rand(shape, generator=generator, dtype=torch.float64)
    switched = (draws < fractions.unsqueeze(1)).to(codes_a.device)
    frames = torch.where(switched, codes_b.flatten().unsqueeze(0), codes_a.flatten().unsqueeze(0))
    return frames.view(-1, *codes_a.shape)


@torch.no_grad()
def interpolate_latent(
    model: VQVAE, image_a: torch.Tensor, image_b: torch.Tensor, steps: int
) -> torch.Tensor:
    """Quantized linear path between the encoder outputs of two (H, W) images -> (steps, h, w).

    torch.lerp is exact at both ends, so step 0 and the last step are encode(A) and encode(B).
    """
    device = next(model.parameters()).device
    pair = model.model_input(torch.stack([image_a, image_b]).to(device))
    z_a, z_b = model.encoder(pair)  # each (D, h, w)
    weights = _step_fractions(steps).to(device, z_a.dtype).view(steps, 1, 1, 1)  # lerp: one type
    path = torch.lerp(z_a.unsqueeze(0), z_b.unsqueeze(0), weights)  # (steps, D, h, w)
    return model.quantizer.quantize_codes(path)


@torch.no_grad()
def interpolation(
    model: VQVAE,
    image_a: torch.Tensor,
    image_b: torch.Tensor,
    steps: int = 8,
    mode: str = "crossfade",
    seed: int = 0,
) -> torch.Tensor:
    """Code grids (steps, h, w) from image A's codes to image B's with the named mode."""
    _checked_steps(steps)  # before any encoding
    seed = arguments.seed(seed)
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper: the model inside
    arguments.instance(model, VQVAE, "The model", "VQVAE.from_run(run_dir)")
    for name, image in (("Image A", image_a), ("Image B", image_b)):
        arguments.instance(image, torch.Tensor, name, "a (28, 28) uint8 tensor")
    if image_a.shape != image_b.shape:
        raise InvalidValue(
            f"Images A and B must have the same shape, not {tuple(image_a.shape)} and "
            f"{tuple(image_b.shape)}."
        )
    if image_a.dtype != image_b.dtype:  # stacked, uint8 would be read as floats 0-255
        raise InvalidValue(
            f"Images A and B must hold pixels of one type, not {image_a.dtype} and "
            f"{image_b.dtype} (uint8 0-255, or floats in [0, 1])."
        )
    size = model.config.image_size
    if tuple(image_a.shape) not in ((size, size), (1, size, size)):  # not a batch: one pair
        raise InvalidValue(
            f"Images A and B must each be one {size}×{size} image, of shape ({size}, {size}) or "
            f"(1, {size}, {size}); these have shape {tuple(image_a.shape)}."
        )
    if mode not in MODES:
        raise InvalidValue(
            f"Unknown interpolation mode '{mode}'; choose one of: {', '.join(MODES)}."
        )
    with out_of_memory_said("fewer steps"):
        if mode == "latent":
            return interpolate_latent(model, image_a, image_b, steps)
        device = next(model.parameters()).device
        codes_a, codes_b = model.encode(torch.stack([image_a, image_b]).to(device))
        generator = torch.Generator().manual_seed(seed)
        return interpolate_codes(codes_a, codes_b, steps, mode, generator)


@torch.no_grad()
def interpolation_strip(
    model: VQVAE, image_a: torch.Tensor, image_b: torch.Tensor, codes: torch.Tensor
) -> torch.Tensor:
    """Original A, the decoded steps, original B: (steps + 2, H, W) floats in [0, 1]."""
    device = next(model.parameters()).device
    decoded = model.decode(codes.to(device))[:, 0].cpu()
    originals = images_to_input(torch.stack([image_a, image_b]))[:, 0]
    return torch.cat([originals[:1], decoded, originals[1:]])
