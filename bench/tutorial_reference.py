"""A faithful stand-in for the tutorial's training pipeline, to measure vqkit against.

What it keeps from the tutorial (its Exercises 1 and 2), because that is what costs time there:
- a map-style Dataset that converts every sample on access the way torchvision's ToTensor does
  (uint8 H×W array -> PIL image -> float tensor (1, H, W) / 255), batched by a DataLoader
  (batch 128, shuffle, no workers);
- two stride-2 4×4 convolutions each way, a quantizer that computes all distances, takes the
  argmin, builds a one-hot matrix and multiplies it with the codebook, codebook initialised
  uniform(-1/K, 1/K);
- Adam at 1e-3, loss = reconstruction MSE + codebook loss + 0.25 · commitment loss, and a
  ``loss.item()`` every step (a host read, as the tutorial's running total does).

torchvision is not needed: the MNIST arrays come from ``vqkit.data.load_split`` (not timed).

    python bench/tutorial_reference.py --preset efficient     # 3 epochs, prints time and MSE
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vqkit.data import load_split

# The tutorial's two settings: (hidden width, embedding dim, codebook size, epochs).
REFERENCE_PRESETS = {"default": (128, 64, 512, 5), "efficient": (64, 32, 128, 3)}
REFERENCE_BATCH = 128
REFERENCE_LR = 1e-3
REFERENCE_BETA = 0.25
EVAL_BATCH = 1000


class PerSampleTensorDataset(Dataset):
    """MNIST images as the tutorial's loader sees them: one PIL round trip per sample."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images.numpy()  # (N, 28, 28) uint8

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        picture = Image.fromarray(self.images[index], mode="L")
        # What ToTensor does for an 8-bit grey image: HWC byte buffer -> CHW float in [0, 1].
        array = np.asarray(picture, dtype=np.uint8)[:, :, None]
        tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
        return tensor.float().div(255), 0


class OneHotQuantizer(nn.Module):
    """Nearest-code quantizer in the tutorial's style: full distance matrix and one-hot product."""

    def __init__(self, codes: int, dim: int, beta: float) -> None:
        super().__init__()
        self.codes, self.dim, self.beta = codes, dim, beta
        self.table = nn.Embedding(codes, dim)
        self.table.weight.data.uniform_(-1.0 / codes, 1.0 / codes)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = z.permute(0, 2, 3, 1).contiguous().view(-1, self.dim)
        weight = self.table.weight
        squared = flat.pow(2).sum(1, keepdim=True) + weight.pow(2).sum(1) - 2 * flat @ weight.t()
        one_hot = F.one_hot(squared.argmin(1), self.codes).float()
        picked = (one_hot @ weight).view(z.shape[0], z.shape[2], z.shape[3], self.dim)
        picked = picked.permute(0, 3, 1, 2).contiguous()
        loss = F.mse_loss(picked, z.detach()) + self.beta * F.mse_loss(picked.detach(), z)
        return z + (picked - z).detach(), loss


class ReferenceVQVAE(nn.Module):
    """Two stride-2 4×4 convolutions down, the one-hot quantizer, two transposed ones up."""

    def __init__(self, hidden: int, dim: int, codes: int, beta: float = REFERENCE_BETA) -> None:
        super().__init__()
        self.down1 = nn.Conv2d(1, hidden, 4, stride=2, padding=1)
        self.down2 = nn.Conv2d(hidden, dim, 4, stride=2, padding=1)
        self.vq = OneHotQuantizer(codes, dim, beta)
        self.up1 = nn.ConvTranspose2d(dim, hidden, 4, stride=2, padding=1)
        self.up2 = nn.ConvTranspose2d(hidden, 1, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        quantized, vq_loss = self.vq(self.down2(F.relu(self.down1(x))))
        return torch.sigmoid(self.up2(F.relu(self.up1(quantized)))), vq_loss


def make_reference(preset: str, seed: int = 0) -> tuple[ReferenceVQVAE, torch.optim.Optimizer]:
    """The tutorial's model and optimiser for ``preset`` ('default' or 'efficient')."""
    hidden, dim, codes, _ = REFERENCE_PRESETS[preset]
    torch.manual_seed(seed)
    model = ReferenceVQVAE(hidden, dim, codes)
    return model, torch.optim.Adam(model.parameters(), lr=REFERENCE_LR)


def reference_loader(images: torch.Tensor, seed: int = 0) -> DataLoader:
    """DataLoader(batch 128, shuffle) over per-sample converted images."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        PerSampleTensorDataset(images),
        batch_size=REFERENCE_BATCH,
        shuffle=True,
        generator=generator,
    )


def reference_step(
    model: ReferenceVQVAE, optimizer: torch.optim.Optimizer, x: torch.Tensor
) -> float:
    """One tutorial training step; returns the loss read back with .item() as the tutorial does."""
    optimizer.zero_grad()
    reconstruction, vq_loss = model(x)
    loss = F.mse_loss(reconstruction, x) + vq_loss
    loss.backward()
    optimizer.step()
    return loss.item()


def reference_batches(images: torch.Tensor, epochs: int, seed: int = 0) -> Iterator[torch.Tensor]:
    """The loader's batches over ``epochs`` epochs (conversion happens as they are drawn)."""
    loader = reference_loader(images, seed)
    for _ in range(epochs):
        for x, _label in loader:
            yield x


@torch.no_grad()
def reference_test_mse(model: ReferenceVQVAE, images: torch.Tensor) -> float:
    """Mean squared error over all test pixels (uint8 (N, 28, 28) images)."""
    model.eval()
    total = 0.0
    for start in range(0, images.shape[0], EVAL_BATCH):
        x = images[start : start + EVAL_BATCH].unsqueeze(1).float().div(255)
        total += float((model(x)[0] - x).pow(2).sum(dtype=torch.float64))
    model.train()
    return total / images.numel()


def train_reference(
    preset: str,
    train_images: torch.Tensor,
    epochs: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[ReferenceVQVAE, float, int]:
    """Train the reference; returns (model, training seconds, images seen)."""
    model, optimizer = make_reference(preset)
    epochs = REFERENCE_PRESETS[preset][3] if epochs is None else epochs
    seen = 0
    started = time.perf_counter()
    for x in reference_batches(train_images, epochs):
        reference_step(model, optimizer, x)
        seen += x.shape[0]
        if on_batch is not None:
            on_batch(seen)
    return model, time.perf_counter() - started, seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(REFERENCE_PRESETS), default="efficient")
    parser.add_argument("--epochs", type=int, help="default: the preset's")
    args = parser.parse_args()
    train_images = load_split("mnist", "train").images
    test_images = load_split("mnist", "test").images
    model, seconds, seen = train_reference(args.preset, train_images, args.epochs)
    mse = reference_test_mse(model, test_images)
    print(
        f"reference {args.preset}: {seen} images in {seconds:.1f} s "
        f"({seen / seconds:.0f} img/s), test MSE {mse:.5f}"
    )


if __name__ == "__main__":
    main()
