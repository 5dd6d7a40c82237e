"""The code exemplars: patches of real images around the cells holding each code, checked
against a pixel-by-pixel crop and a plain search of the code grids."""

from __future__ import annotations

import numpy as np
import torch

from vqkit.codebook_exemplars import (
    EXEMPLARS_PER_CODE,
    MISSING,
    exemplar_blocks,
    exemplar_cells,
    exemplar_patches,
    framed,
)

CELL = 4  # 28-pixel images over 7x7 grids


def brute_force_cells(codes: torch.Tensor, code: int, count: int) -> list[tuple[int, int, int]]:
    found = []
    for index in range(codes.shape[0]):
        cells = [(r, c) for r in range(7) for c in range(7) if int(codes[index, r, c]) == code]
        if cells:
            found.append((index, *cells[0]))
        if len(found) == count:
            break
    return found


def brute_force_patch(image: np.ndarray, row: int, column: int) -> np.ndarray:
    """The cell at full brightness, its one-cell margin at half (rounded), black off the image."""
    patch = np.zeros((3 * CELL, 3 * CELL), dtype=np.uint8)
    for dy in range(3 * CELL):
        for dx in range(3 * CELL):
            y, x = (row - 1) * CELL + dy, (column - 1) * CELL + dx
            if 0 <= y < 28 and 0 <= x < 28:
                inside = CELL <= dy < 2 * CELL and CELL <= dx < 2 * CELL
                value = int(image[y, x])
                patch[dy, dx] = value if inside else int(np.rint(value / 2))
    return patch


def test_cells_are_the_first_in_reading_order_of_the_first_images_holding_the_code():
    codes = torch.randint(0, 40, (30, 7, 7), generator=torch.Generator().manual_seed(1))
    for code in range(40):
        assert exemplar_cells(codes, code, 4) == brute_force_cells(codes, code, 4), code


def test_patches_are_the_cell_with_one_cell_of_margin_black_beyond_the_edges():
    images = torch.randint(1, 256, (6, 28, 28), dtype=torch.uint8)  # no pixel is 0 inside
    codes = torch.full((6, 7, 7), 9)
    corners = [(0, 0, 0), (1, 6, 6), (2, 0, 6), (3, 3, 2)]  # edges on every side, and inside
    for index, row, column in corners:
        codes[index, row, column] = 5
    patches = exemplar_patches(framed(images, CELL), codes, 5)
    assert patches.shape == (EXEMPLARS_PER_CODE, 12, 12) and patches.dtype == np.uint8
    for patch, (index, row, column) in zip(patches, corners, strict=True):
        np.testing.assert_array_equal(patch, brute_force_patch(images[index].numpy(), row, column))


def test_a_code_rarer_than_the_block_leaves_blank_patches():
    images = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    codes = torch.zeros(3, 7, 7, dtype=torch.long)
    codes[1, 2, 2] = 7
    patches = exemplar_patches(framed(images, CELL), codes, 7)
    np.testing.assert_array_equal(patches[0], brute_force_patch(images[1].numpy(), 2, 2))
    assert (patches[1:] == MISSING).all()
    assert (exemplar_patches(framed(images, CELL), codes, 8) == MISSING).all()  # nowhere


def test_each_code_gets_one_block_of_its_patches_one_pixel_apart():
    images = torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8)
    codes = torch.randint(0, 3, (8, 7, 7), generator=torch.Generator().manual_seed(2))
    blocks = exemplar_blocks(images, codes, [2, 0])
    assert blocks.shape == (2, 2 * 12 + 3, 2 * 12 + 3)
    for block, code in zip(blocks, [2, 0], strict=True):
        patches = exemplar_patches(framed(images, CELL), codes, code)
        for slot, (top, left) in enumerate([(1, 1), (1, 14), (14, 1), (14, 14)]):
            np.testing.assert_array_equal(block[top : top + 12, left : left + 12], patches[slot])


def test_no_code_to_show_makes_no_block():
    images = torch.zeros(2, 28, 28, dtype=torch.uint8)
    blocks = exemplar_blocks(images, torch.zeros(2, 7, 7, dtype=torch.long), [])
    assert blocks.shape == (0, 27, 27)  # np.stack of nothing raised ValueError
