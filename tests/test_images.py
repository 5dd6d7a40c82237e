"""Image grids laid out by hand."""

from __future__ import annotations

import numpy as np

from vqkit.images import tile


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
