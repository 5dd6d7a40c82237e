"""Where each code is chosen: patches of real images around grid cells that hold the code.

A code decoded on its own (the atlas) shows what the decoder paints with it; the patches here
show what the encoder maps to it, which is what tells strokes, ends and background apart.
"""

from __future__ import annotations

import numpy as np
import torch

from vqkit.images import tile, to_uint8

EXEMPLARS_PER_CODE = 4  # patches per code, from as many different images, in a 2×2 block
EXEMPLAR_COLUMNS = 2
EXEMPLAR_IMAGES = 1000  # test images searched (one encoding pass)
PATCH_GAP = 1  # pixels between the patches of one code (codebook_view spaces the codes wider)
# A patch the searched images did not provide (the code is rarer there): blank, like the gaps
# between patches, and unlike any dimmed margin (at most 128).
MISSING = 255
MARGIN_DIMMING = 0.5  # the margin around the code's cell at half brightness: the cell stands out


def exemplar_cells(codes: torch.Tensor, code: int, count: int) -> list[tuple[int, int, int]]:
    """(image, row, column) of up to ``count`` cells holding ``code`` in code grids (N, h, w):
    the first image holding it, the next, ... (one cell each, the first in reading order)."""
    holds = codes == code
    images = torch.nonzero(holds.flatten(1).any(dim=1)).flatten()[:count].tolist()
    cells = []
    for index in images:
        row, column = torch.nonzero(holds[index])[0].tolist()
        cells.append((index, row, column))
    return cells


def framed(images: torch.Tensor, cell: int) -> np.ndarray:
    """uint8 images (N, H, W) with ``cell`` black pixels added on every side."""
    return np.pad(to_uint8(images), ((0, 0), (cell, cell), (cell, cell)))


def exemplar_patches(padded: np.ndarray, codes: torch.Tensor, code: int) -> np.ndarray:
    """``EXEMPLARS_PER_CODE`` uint8 patches (P, 3s, 3s) around cells holding ``code``: the cell
    of s pixels (s = image side / grid side) with one cell of margin on each side, the margin
    dimmed; blank (white) where fewer cells hold it. ``padded`` is :func:`framed` of the images."""
    cell = padded.shape[-1] // (codes.shape[-1] + 2)  # the side is grid + 2 cells
    patches = np.full((EXEMPLARS_PER_CODE, 3 * cell, 3 * cell), MISSING, dtype=np.uint8)
    for slot, (index, row, column) in enumerate(exemplar_cells(codes, code, EXEMPLARS_PER_CODE)):
        # Padded coordinates: the cell starts one cell further in; the patch one cell before.
        top, left = row * cell, column * cell
        patch = padded[index, top : top + 3 * cell, left : left + 3 * cell].astype(np.float32)
        dimmed = np.rint(patch * MARGIN_DIMMING)
        dimmed[cell : 2 * cell, cell : 2 * cell] = patch[cell : 2 * cell, cell : 2 * cell]
        patches[slot] = dimmed.astype(np.uint8)
    return patches


def exemplar_blocks(images: torch.Tensor, codes: torch.Tensor, shown: list[int]) -> np.ndarray:
    """One 2×2 block of patches per code in ``shown``: (len(shown), B, B) uint8."""
    cell = images.shape[-1] // codes.shape[-1]
    padded = framed(images, cell)  # once for every code
    blocks = [
        tile(exemplar_patches(padded, codes, code), EXEMPLAR_COLUMNS, PATCH_GAP) for code in shown
    ]
    if not blocks:  # no code used: an empty figure, as the atlas draws
        side = EXEMPLAR_COLUMNS * (3 * cell + PATCH_GAP) + PATCH_GAP
        return np.zeros((0, side, side), dtype=np.uint8)
    return np.stack(blocks)
