"""Convolutional encoder/decoder around a quantizer: 28×28 images <-> 7×7 grids of codes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vqkit import arguments
from vqkit.config import ModelConfig, checked_model_config
from vqkit.errors import InvalidValue, VqkitError
from vqkit.fast_conv import SUB_PIXEL_MAX_OUT_CHANNELS, ConvTranspose2d
from vqkit.quantize import (
    CountedCodes,
    Quantizer,
    QuantizerOutput,
    build_quantizer,
    require_codes_in_range,
)


def relu_after_conv() -> nn.ReLU:
    """The ReLU that follows a convolution, in place: no convolution's backward reads its own
    output, so overwriting it is exact and saves a feature map's allocation and memory pass
    (3-4% of an fp32 CPU step of the efficient model). A forward hook on that convolution sees
    its output rectified, as in torchvision's networks."""
    return nn.ReLU(inplace=True)


class ResidualBlock(nn.Module):
    """The paper's block: ReLU, 3×3 conv, ReLU, 1×1 conv, added to the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The first ReLU may not overwrite x, which the sum adds back.
        return x + self.conv1(F.relu(self.conv3(F.relu(x)), inplace=True))


class Encoder(nn.Module):
    """(B, C, 28, 28) -> (B, D, 7, 7) with two stride-2 4×4 convolutions."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden, dim = config.hidden_dim, config.quantizer.embedding_dim
        layers: list[nn.Module] = [
            nn.Conv2d(config.in_channels, hidden, 4, 2, 1),
            relu_after_conv(),
        ]
        if config.residual_blocks:
            layers.append(nn.Conv2d(hidden, hidden, 4, 2, 1))
            layers += [ResidualBlock(hidden) for _ in range(config.residual_blocks)]
            layers += [nn.ReLU(), nn.Conv2d(hidden, dim, 1)]
        else:
            layers.append(nn.Conv2d(hidden, dim, 4, 2, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """(B, D, 7, 7) -> (B, C, 28, 28) in [0, 1] with two stride-2 transposed convolutions."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden, dim = config.hidden_dim, config.quantizer.embedding_dim
        layers: list[nn.Module] = []
        if config.residual_blocks:
            layers.append(nn.Conv2d(dim, hidden, 3, padding=1))
            layers += [ResidualBlock(hidden) for _ in range(config.residual_blocks)]
            layers += [nn.ReLU(), ConvTranspose2d(hidden, hidden, 4, 2, 1)]
        else:
            layers.append(ConvTranspose2d(dim, hidden, 4, 2, 1))
        # A transposed convolution of at most SUB_PIXEL_MAX_OUT_CHANNELS outputs returns a
        # cropped view on the CPU, which autograd forbids changing in place.
        narrow = hidden <= SUB_PIXEL_MAX_OUT_CHANNELS
        layers += [
            nn.ReLU() if narrow else relu_after_conv(),
            ConvTranspose2d(hidden, config.in_channels, 4, 2, 1),
            nn.Sigmoid(),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


@dataclass
class VQVAEOutput(CountedCodes):
    """What the VQ-VAE's forward returns for a batch of B images."""

    reconstruction: torch.Tensor  # (B, C, H, W) in [0, 1]
    codes: torch.Tensor  # (B, h, w) int64
    # () quantizer loss: codebook + beta * commitment; beta * commitment alone with EMA codebook
    # updates; 0 for FSQ
    vq_loss: torch.Tensor
    # (K,) codes chosen in this batch (given as K: counted when first read)
    code_counts: torch.Tensor | int  # type: ignore[assignment]


def images_to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, H, W) or (B, C, H, W) -> float (B, C, H, W) in [0, 1].

    Float images must already be in [0, 1]: float pixels 0-255 would be silently mis-encoded,
    so they are refused (the check costs a reduction; vqkit's own data are uint8).
    """
    if not isinstance(images, torch.Tensor):
        raise InvalidValue(
            "Images must be a torch tensor (B, H, W) or (B, C, H, W), not a "
            f"{type(images).__name__}."
        )
    if images.dim() not in (3, 4):
        raise InvalidValue(
            f"Images must be a batch (B, H, W) or (B, C, H, W); this tensor has shape "
            f"{tuple(images.shape)}."
        )
    if images.dim() == 3:
        images = images.unsqueeze(1)
    images = arguments.widened(images)  # uint16 and wider: checked as int64 below
    if images.is_floating_point() and images.element_size() == 1:  # fp8: no min or max either
        images = images.float()
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if images.dtype == torch.bool or images.is_complex():
        raise InvalidValue(f"Images must hold uint8 or float pixels, not {images.dtype}.")
    if not images.is_floating_point():  # int16/32/64 pixels, as 0-255 like uint8
        if images.numel() and not 0 <= int(images.min()) <= int(images.max()) <= 255:
            raise InvalidValue(
                f"Integer images must hold pixels 0-255, and these range from "
                f"{int(images.min())} to {int(images.max())}."
            )
        return images.float().div_(255.0)
    if images.numel():
        low, high = float(images.min()), float(images.max())
        if not 0.0 <= low <= high <= 1.0:  # NaN fails every comparison
            raise InvalidValue(
                f"Float images must hold pixels in [0, 1], and these range from {low:g} to "
                f"{high:g}; pass uint8 pixels 0-255, or divide them by 255 first."
            )
    return images.to(torch.promote_types(images.dtype, torch.float32))  # float64 stays float64


def input_for(network: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``images_to_input`` on the device and in the float type of ``network``'s weights, so a
    network on a GPU, or converted by ``.double()`` for gradient checks, takes the same images."""
    weight = next(network.parameters(), None)
    if weight is not None and isinstance(images, torch.Tensor):
        images = images.to(weight.device)  # before the conversion: uint8 pixels are 4× smaller
    x = images_to_input(images)
    if weight is not None and weight.is_floating_point():
        x = x.to(weight.dtype)
    return x


class VQVAE(nn.Module):
    """Encoder -> vector quantizer -> decoder, configured by one :class:`ModelConfig`."""

    def __init__(self, config: ModelConfig) -> None:
        if not isinstance(config, ModelConfig):
            raise InvalidValue(
                f"VQVAE takes a ModelConfig (a run config's .model, as in "
                f"VQVAE(preset_config('efficient').model)), not a {type(config).__name__}."
            )
        config = checked_model_config(config)  # fields may have been edited since it was made
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer: Quantizer = build_quantizer(config.quantizer)
        self.decoder = Decoder(config)

    @property
    def num_codes(self) -> int:
        """How many distinct codes the quantizer emits (K; the product of the levels for FSQ)."""
        return self.quantizer.num_codes

    def model_input(self, images: torch.Tensor) -> torch.Tensor:
        """``images_to_input`` checked against the shape this model was built for, on the
        model's device and in its float type (a model turned ``.double()`` takes float64)."""
        x = input_for(self.encoder, images)
        size, channels = self.config.image_size, self.config.in_channels
        if tuple(x.shape[1:]) != (channels, size, size):
            raise InvalidValue(
                f"This model takes images of shape (B, {size}, {size}) or (B, {channels}, "
                f"{size}, {size}), channels first; these have shape {tuple(images.shape)}."
            )
        return x

    def forward(self, images: torch.Tensor) -> VQVAEOutput:
        """images: uint8 or float (B, [C,] H, W) -> reconstruction, codes, loss, usage."""
        q = self.quantizer(self.encoder(self.model_input(images)))
        if not isinstance(q, QuantizerOutput):  # a quantizer of one's own (register_quantizer)
            raise VqkitError(
                f"The quantizer {type(self.quantizer).__qualname__} returned a "
                f"{type(q).__name__} from forward, not the vqkit.quantize.QuantizerOutput "
                "that vqkit reads."
            )
        return VQVAEOutput(self.decoder(q.quantized), q.codes, q.loss, q.counts_or_num_codes())

    @torch.no_grad()
    def initialize(self, images: torch.Tensor) -> None:
        """The quantizer's one-time set-up from a training batch (k-means init), if pending."""
        if self.quantizer.needs_initialization():
            self.quantizer.initialize(self.encoder(self.model_input(images)))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, [C,] H, W), uint8 0-255 or float in [0, 1], on any device -> integer code
        grids (B, h, w) on the model's device."""
        return self.quantizer.quantize_codes(self.encoder(self.model_input(images)))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """integer code grids (B, h, w), on any device -> images (B, C, H, W) in [0, 1] on the
        model's device, without autograd history; for gradients through the decoder call
        ``model.decoder(model.quantizer.codes_to_latents(codes))``."""
        codes = arguments.integers(codes, "Code grids (B, h, w)")
        grid = self.config.grid_size
        if codes.dim() != 3 or tuple(codes.shape[1:]) != (grid, grid):
            raise InvalidValue(
                f"Code grids must have the shape (B, {grid}, {grid}) for this model; these have "
                f"{tuple(codes.shape)}."
            )
        require_codes_in_range(codes, self.num_codes)  # once here, also for codes on a GPU
        weight = next(self.decoder.parameters())
        latents = self.quantizer.codes_to_latents(codes.to(weight.device, torch.long))
        # FSQ without a projection gives fp32 grid values whatever the model was cast to.
        return self.decoder(latents.to(weight.dtype))

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str | torch.device = "cpu") -> VQVAE:
        """The trained model stored in a run folder, in eval mode."""
        from vqkit.checkpoint import load_model

        return load_model(run_dir, device=device)
