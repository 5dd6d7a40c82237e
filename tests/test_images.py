"""Image grids laid out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vqkit.images import comparison_canvas, save_png, tile, to_uint8


def test_tile_places_each_image_row_by_row_on_a_white_canvas():
    images = np.stack([np.full((3, 2), value, dtype=np.uint8) for value in (10, 20, 30)])
    canvas = tile(images, columns=2, padding=1)
    # Two rows of two 3×2 cells with 1-pixel gaps and borders; the fourth cell stays white.
    expected = np.array(
        [
            [255, 255, 255, 255, 255, 255, 255],
            [255, 10, 10, 255, 20, 20, 255],
            [255, 10, 10, 255, 20, 20, 255],
            [255, 10, 10, 255, 20, 20, 255],
            [255, 255, 255, 255, 255, 255, 255],
            [255, 30, 30, 255, 255, 255, 255],
            [255, 30, 30, 255, 255, 255, 255],
            [255, 30, 30, 255, 255, 255, 255],
            [255, 255, 255, 255, 255, 255, 255],
        ],
        dtype=np.uint8,
    )
    assert np.array_equal(canvas, expected)


def test_float_pixels_are_rounded_to_the_nearest_of_256_levels():
    # 0.5 * 255 = 127.5 and 0.1 * 255 = 25.5 round up, 0.998 * 255 = 254.49 down; 0.2 * 255 =
    # 51.0 stays; out-of-range values are clipped. 10.5 / 255 is a tie with an even integer
    # part: half-up gives 11 where round-half-to-even (np.rint) would give 10.
    tie = np.float32(10.5) / np.float32(255)
    assert tie * np.float32(255) == np.float32(10.5)  # exact in float32, so a true tie
    pixels = np.array([[[0.0, 0.5, 0.1, 0.998, 0.2, 1.0, -0.3, 1.7, tie]]], dtype=np.float32)
    assert to_uint8(pixels).tolist() == [[[0, 128, 26, 254, 51, 255, 0, 255, 11]]]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_pixels_of_any_float_tensor_type_round_the_same_way(dtype):
    # bf16 and fp16 hold these values exactly; NumPy has no bfloat16 of its own.
    pixels = torch.tensor([[[0.0, 0.5, 0.25, 1.0, -0.5, 2.0]]], dtype=dtype)
    assert to_uint8(pixels).tolist() == [[[0, 128, 64, 255, 0, 255]]]


def test_more_columns_than_images_make_the_row_only_as_wide_as_the_images():
    images = np.zeros((3, 4, 5), dtype=np.uint8)
    assert tile(images, columns=8, padding=2).shape == (2 + 4 + 2, 2 + 3 * (5 + 2))


def test_an_enlarged_png_repeats_each_pixel_in_a_block(tmp_path):
    # Nearest-neighbour enlargement: every canvas pixel becomes a scale x scale block of
    # exactly its value, with no blending across the edges between pixels.
    canvas = np.array([[0, 255, 40], [200, 7, 90]], dtype=np.uint8)
    save_png(canvas, tmp_path / "x.png", scale=3)
    with Image.open(tmp_path / "x.png") as image:
        assert np.array_equal(np.asarray(image), np.kron(canvas, np.ones((3, 3), dtype=np.uint8)))


def test_a_comparison_puts_the_originals_in_one_row_above_their_reconstructions(tmp_path):
    originals = np.full((3, 28, 28), 10, dtype=np.uint8)
    reconstructions = np.full((3, 28, 28), 200, dtype=np.uint8)
    pixels = comparison_canvas(originals, reconstructions)
    assert pixels.shape == (2 + 2 * 30, 2 + 3 * 30)  # 2 rows of 3 images, 2-pixel gaps
    for column in range(3):
        left = 2 + column * 30
        assert (pixels[2:30, left : left + 28] == 10).all()
        assert (pixels[32:60, left : left + 28] == 200).all()


def test_a_long_comparison_wraps_into_pairs_of_rows_each_original_above_its_own(tmp_path):
    # 37 images at 16 per row: three pairs of rows, the last holding 5 images then blanks.
    originals = np.arange(37, dtype=np.uint8).reshape(37, 1, 1).repeat(28, 1).repeat(28, 2)
    reconstructions = originals + 100
    pixels = comparison_canvas(originals, reconstructions, columns=16)
    assert pixels.shape == (2 + 6 * 30, 2 + 16 * 30)
    for index in range(48):
        pair, column = divmod(index, 16)
        top, left = 2 + 2 * pair * 30, 2 + column * 30
        original = pixels[top : top + 28, left : left + 28]
        below = pixels[top + 30 : top + 58, left : left + 28]
        expected = (index, index + 100) if index < 37 else (255, 255)  # blank past the last
        assert (original == expected[0]).all() and (below == expected[1]).all(), index
