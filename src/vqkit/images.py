"""Image grids written to PNG with Pillow (no plotting library needed for pixels)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from vqkit.constants import COMPARISON_COLUMNS, GRID_COLUMNS
from vqkit.fileio import write_bytes_atomic


def to_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, [1,] H, W) float in [0, 1] or uint8 -> (N, H, W) uint8."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu()
        # NumPy has no bfloat16: a model cast to bf16 decodes into it.
        array = (images.float() if images.is_floating_point() else images).numpy()
    else:
        array = images
    if array.ndim == 4:
        array = array[:, 0]
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return array


def tile(images: torch.Tensor | np.ndarray, columns: int, padding: int = 2) -> np.ndarray:
    """Lay N images (N, H, W) out row by row on a white-padded canvas -> (rows·(H+p)+p, ...).

    More ``columns`` than images would only add blank canvas: the row is as wide as N."""
    pixels = to_uint8(images)
    count, height, width = pixels.shape
    columns = max(1, min(columns, count))
    rows = max(1, -(-count // columns))
    canvas = np.full(
        (rows * (height + padding) + padding, columns * (width + padding) + padding),
        255,
        dtype=np.uint8,
    )
    for index in range(count):
        row, col = divmod(index, columns)
        top, left = padding + row * (height + padding), padding + col * (width + padding)
        canvas[top : top + height, left : left + width] = pixels[index]
    return canvas


def png_bytes(canvas: np.ndarray, scale: int = 1, stamp: dict[str, str] | None = None) -> bytes:
    """A uint8 (H, W) canvas as a grayscale PNG file's bytes, enlarged ``scale`` times
    (nearest); ``stamp`` (see vqkit.provenance) goes into the file's text chunks."""
    image = Image.fromarray(canvas, mode="L")
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    chunks = PngInfo()
    for key, value in (stamp or {}).items():
        chunks.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=chunks)
    return buffer.getvalue()


def save_png(
    canvas: np.ndarray, path: str | Path, scale: int = 1, stamp: dict[str, str] | None = None
) -> Path:
    """Write :func:`png_bytes` of ``canvas`` to ``path`` (atomically)."""
    path = Path(path)
    write_bytes_atomic(path, png_bytes(canvas, scale, stamp))
    return path


def save_grid(
    images: torch.Tensor | np.ndarray,
    path: str | Path,
    columns: int = GRID_COLUMNS,
    scale: int = 2,
    stamp: dict[str, str] | None = None,
) -> Path:
    """Write images (N, [1,] H, W) as one PNG grid."""
    return save_png(tile(images, columns), path, scale, stamp)


# The reconstructions figure's enlargement (vqkit.training): 28-pixel digits are small.
COMPARISON_SCALE = 2


def comparison_canvas(
    originals: torch.Tensor | np.ndarray,
    reconstructions: torch.Tensor | np.ndarray,
    columns: int = COMPARISON_COLUMNS,
) -> np.ndarray:
    """Originals in the top row, their reconstructions right below (the tutorial's figure);
    past ``columns`` images the next ones form another such pair of rows, and so on."""
    top, bottom = to_uint8(originals), to_uint8(reconstructions)
    count = top.shape[0]
    if count <= columns:
        return tile(np.concatenate([top, bottom]), columns=count)
    # Blank (white, as the padding) images fill the last pair of rows, so each original
    # stays right above its own reconstruction.
    blank = np.full((-count % columns, *top.shape[1:]), 255, dtype=np.uint8)
    top, bottom = np.concatenate([top, blank]), np.concatenate([bottom, blank])
    rows = [half[i : i + columns] for i in range(0, len(top), columns) for half in (top, bottom)]
    return tile(np.concatenate(rows), columns)
