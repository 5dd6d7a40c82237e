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


def first_cells(
    codes: torch.Tensor, wanted: list[int], count: int
) -> dict[int, list[tuple[int, int, int]]]:
    """For each code in ``wanted``, (image, row, column) of up to ``count`` cells holding it in
    code grids (N, h, w): in the first image holding it, the next, ... (one cell each, the first
    in reading order). One pass over the grids for all codes: a search per code took seconds
    for a codebook of thousands of used codes."""
    found: dict[int, list[tuple[int, int, int]]] = {int(code): [] for code in wanted}
    width = codes.shape[-1]
    for index, grid in enumerate(codes.flatten(1).tolist()):
        taken = set()  # codes already given a cell of this image
        for position, code in enumerate(grid):
            cells = found.get(code)
            if cells is not None and code not in taken and len(cells) < count:
                taken.add(code)
                cells.append((index, *divmod(position, width)))
    return found


def exemplar_cells(codes: torch.Tensor, code: int, count: int) -> list[tuple[int, int, int]]:
    """:func:`first_cells` of one code."""
    return first_cells(codes, [code], count)[code]


def framed(images: torch.Tensor, cell: int) -> np.ndarray:
    """uint8 images (N, H, W) with ``cell`` black pixels added on every side."""
    return np.pad(to_uint8(images), ((0, 0), (cell, cell), (cell, cell)))


def exemplar_patches(padded: np.ndarray, codes: torch.Tensor, code: int) -> np.ndarray:
    """``EXEMPLARS_PER_CODE`` uint8 patches (P, 3s, 3s) around cells holding ``code``: the cell
    of s pixels (s = image side / grid side) with one cell of margin on each side, the margin
    dimmed; blank (white) where fewer cells hold it. ``padded`` is :func:`framed` of the images."""
    return _patches_at(padded, codes.shape[-1], exemplar_cells(codes, code, EXEMPLARS_PER_CODE))


def _patches_at(padded: np.ndarray, grid: int, cells: list[tuple[int, int, int]]) -> np.ndarray:
    """The patches of :func:`exemplar_patches` around ``cells`` of grids ``grid`` cells wide."""
    cell = padded.shape[-1] // (grid + 2)  # the side is grid + 2 cells
    patches = np.full((EXEMPLARS_PER_CODE, 3 * cell, 3 * cell), MISSING, dtype=np.uint8)
    for slot, (index, row, column) in enumerate(cells):
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
    cells = first_cells(codes, shown, EXEMPLARS_PER_CODE)
    grid = codes.shape[-1]
    blocks = [
        tile(_patches_at(padded, grid, cells[code]), EXEMPLAR_COLUMNS, PATCH_GAP) for code in shown
    ]
    if not blocks:  # no code used: an empty figure, as the atlas draws
        side = EXEMPLAR_COLUMNS * (3 * cell + PATCH_GAP) + PATCH_GAP
        return np.zeros((0, side, side), dtype=np.uint8)
    return np.stack(blocks)
