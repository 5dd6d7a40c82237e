"""Pictures of a codebook: usage histogram, code atlas, code exemplars, and code maps over
test images.

Figures are drawn with matplotlib's object API on an Agg canvas (never pyplot), so nothing here
changes the caller's plotting backend and nothing is imported until a figure is drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vqkit import runfiles
from vqkit.codebook_exemplars import exemplar_blocks
from vqkit.codes_io import encode_images
from vqkit.config import EVAL_BATCH_SIZE
from vqkit.constants import CODEMAP_IMAGES as CODEMAP_IMAGES  # re-exported
from vqkit.constants import MAX_CODEMAP_IMAGES
from vqkit.errors import VqkitError
from vqkit.fileio import atomic_open, ensure_dir
from vqkit.images import tile, to_uint8
from vqkit.model import VQVAE
from vqkit.quantize import perplexity

DPI = 100
USAGE_FIGSIZE = (10.0, 4.0)  # inches: 1000 × 400 pixels at DPI
USAGE_MAX_STEPS = 2000  # steps drawn in the usage figure: two per pixel column of its width
ATLAS_SCALE = 3  # screen pixels per image pixel in the atlas
CODEMAP_SCALE = 12  # large enough for a code index in each of the 7×7 cells
# The atlas and the exemplars tile at most this many codes, the most used: 32 × 32 tiles of 84
# pixels. A large codebook's every used code (tens of thousands) made a figure of hundreds of
# megapixels that took minutes to draw and that no one could read.
MAX_TILED_CODES = 1024
EXEMPLAR_BATCH = EVAL_BATCH_SIZE  # images encoded at once when searching for exemplars
# Pixels between codes' blocks (their own patches are 1 apart): 15 on screen, room for the
# ATLAS_FONT_SIZE label drawn in the gap above each block.
EXEMPLAR_BLOCK_PADDING = 5
ATLAS_FONT_SIZE = 6  # points; a code index fits in a corner of an 84-pixel tile
CODEMAP_FONT_SIZE = 8  # points; three digits fit in a 48-pixel cell
TILE_PADDING = 2  # vqkit.images.tile's default
DEAD_COLOR = "tab:red"
USED_COLOR = "tab:blue"


@dataclass
class CodebookFigures:
    usage: Path
    atlas: Path
    codemap: Path
    exemplars: Path | None = None  # written when test images to search were given

    def paths(self) -> list[Path]:
        """The figures written, in the order of runfiles.FIGURE_NAMES."""
        return [p for p in (self.usage, self.atlas, self.exemplars, self.codemap) if p]


def _save(figure, path: str | Path, stamp: dict[str, str] | None = None) -> Path:
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=DPI, metadata=stamp)
    return path


def _pixel_figure(width: int, height: int):
    """A figure exactly width × height pixels whose one axes covers it in pixel coordinates."""
    from matplotlib.figure import Figure

    # Agg truncates width·dpi to an int; half a pixel more keeps the exact size. The axes
    # cover the width × height pixels of the canvas, not that extra half: over the whole figure
    # a data unit was (width + 0.5) / width pixels, and matplotlib before 3.11 drew the tiles
    # a pixel off from where tile_origin puts them.
    figure = Figure(figsize=((width + 0.5) / DPI, (height + 0.5) / DPI), dpi=DPI)
    axes = figure.add_axes((0.0, 0.0, width / (width + 0.5), height / (height + 0.5)))
    axes.set_axis_off()
    return figure, axes


def _label_style(fontsize: int) -> dict:
    """Yellow text with a black outline: readable on both black background and white strokes."""
    from matplotlib import patheffects

    outline = [patheffects.withStroke(linewidth=2, foreground="black")]
    return {"color": "yellow", "fontsize": fontsize, "path_effects": outline}


def _show_canvas(canvas, scale: int):
    """Draw a uint8 (H, W) canvas enlarged ``scale`` times; returns (figure, axes)."""
    height, width = canvas.shape
    figure, axes = _pixel_figure(width * scale, height * scale)
    axes.imshow(
        canvas,
        cmap="gray",
        vmin=0,
        vmax=255,
        interpolation="nearest",
        extent=(0, width * scale, height * scale, 0),
    )
    axes.set_xlim(0, width * scale)
    axes.set_ylim(height * scale, 0)
    return figure, axes


def tile_origin(
    index: int, columns: int, size: int, padding: int = TILE_PADDING
) -> tuple[int, int]:
    """Top-left (x, y) of image ``index`` in a :func:`vqkit.images.tile` canvas."""
    row, col = divmod(index, columns)
    return padding + col * (size + padding), padding + row * (size + padding)


def plot_usage(
    counts: torch.Tensor,
    path: str | Path,
    images: int | None = None,
    stamp: dict[str, str] | None = None,
) -> Path:
    """Bar chart of code counts sorted from most to least used; dead codes marked in red."""
    from matplotlib.figure import Figure

    counts = counts.cpu()
    # Only the used codes are sorted and drawn: the dead ones, a band, need no bar each.
    sorted_counts = torch.sort(counts[counts > 0].double(), descending=True).values
    total = float(sorted_counts.sum())
    share = (sorted_counts / max(total, 1.0) * 100.0).numpy()
    used = sorted_counts.numel()
    dead = counts.numel() - used
    figure = Figure(figsize=USAGE_FIGSIZE, dpi=DPI)
    axes = figure.add_subplot()
    if used:
        # One filled outline of touching bars, not a bar each: matplotlib took minutes over
        # the tens of thousands of bars a large codebook would need. Past USAGE_MAX_STEPS
        # codes a step spans several; the shares fall, so its height is its first code's.
        starts = np.unique(np.linspace(0, used, min(used, USAGE_MAX_STEPS) + 1).astype(int))
        axes.stairs(
            share[starts[:-1]], starts - 0.5, fill=True, color=USED_COLOR, baseline=share[-1] / 2
        )
        # A log scale: on a linear one a codebook's rarely used codes (often most of the used
        # ones) drew no visible bar and looked as dead as the dead ones.
        axes.set_yscale("log")
        axes.set_ylim(share[used - 1] / 2, share[0] * 2)
    if dead:
        # Dead codes have no bar; a red band along the axis shows where they sit and how many.
        axes.axvspan(used - 0.5, counts.numel() - 0.5, color=DEAD_COLOR, alpha=0.15)
        middle = (share[0] * share[used - 1]) ** 0.5 if used else 0.5  # halfway on the log axis
        axes.text((used + counts.numel()) / 2, middle, f"{dead:,} dead codes", color=DEAD_COLOR,
                  ha="center")  # fmt: skip
    over = f" over {images:,} training images" if images is not None else ""
    axes.set_title(
        f"Code usage{over}: {used:,} of {counts.numel():,} codes used, "
        f"perplexity {perplexity(counts):.1f}"
    )
    axes.set_xlabel("codes, most used first")
    axes.set_ylabel("share of all code choices (%, log scale)" if used else "share (%)")
    axes.set_xlim(-0.5, counts.numel() - 0.5)
    figure.tight_layout()
    return _save(figure, path, stamp)


def atlas_columns(count: int) -> int:
    """Columns of a near-square atlas of ``count`` tiles."""
    return max(1, math.ceil(math.sqrt(count)))


@torch.no_grad()
def code_atlas(model: VQVAE, codes: torch.Tensor) -> torch.Tensor:
    """What each code paints: the decoding of a grid filled with it, (len(codes), H, W)."""
    size = model.config.grid_size
    device = next(model.parameters()).device
    grids = codes.to(device).view(-1, 1, 1).expand(-1, size, size)
    return model.decode(grids)[:, 0].cpu()


def codes_by_use(counts: torch.Tensor) -> torch.Tensor:
    """The codes with a count, most used first (ties in code order)."""
    counts = counts.cpu()
    used = torch.nonzero(counts > 0).flatten()  # ascending: a stable sort keeps ties in order
    return used[torch.argsort(counts[used], descending=True, stable=True)]


def tiled_codes(counts: torch.Tensor) -> torch.Tensor:
    """The codes the atlas and the exemplars show: the ``MAX_TILED_CODES`` most used."""
    return codes_by_use(counts)[:MAX_TILED_CODES]


def _labelled_tiles(tiles, codes: list[int], padding: int = TILE_PADDING, above: bool = False):
    """Tiles (N, S, S) laid out near-square ``padding`` pixels apart, enlarged, each labelled
    with its code in its top-left corner, or with ``above`` in the gap over that corner (the
    padding must then hold a line of text); returns the figure."""
    columns = atlas_columns(len(codes))
    figure, axes = _show_canvas(tile(tiles, columns, padding), ATLAS_SCALE)
    size = tiles.shape[-1]
    for index, code in enumerate(codes):
        x, y = tile_origin(index, columns, size, padding)
        axes.text(
            x * ATLAS_SCALE + 1,
            y * ATLAS_SCALE + (-1 if above else 1),
            str(code),
            va="bottom" if above else "top",
            ha="left",
            **_label_style(ATLAS_FONT_SIZE),
        )
    return figure


def plot_atlas(
    model: VQVAE, counts: torch.Tensor, path: str | Path, stamp: dict[str, str] | None = None
) -> Path:
    """Every used code decoded (the ``MAX_TILED_CODES`` most used when more are), most used
    first, each tile labelled with its code index."""
    used = tiled_codes(counts)
    return _save(_labelled_tiles(code_atlas(model, used), used.tolist()), path, stamp)


def plot_exemplars(
    model: VQVAE,
    counts: torch.Tensor,
    images: torch.Tensor,
    path: str | Path,
    stamp: dict[str, str] | None = None,
) -> Path:
    """For every used code (the ``MAX_TILED_CODES`` most used when more are), most used first,
    four patches of ``images`` (N, H, W) around cells the encoder gave that code
    (vqkit.codebook_exemplars), labelled with its index."""
    codes = encode_images(model, images, EXEMPLAR_BATCH)
    used = tiled_codes(counts).tolist()
    blocks = exemplar_blocks(images, codes, used)
    # Above each block: in its corner a label hid the first patch's corner, often its stroke.
    figure = _labelled_tiles(blocks, used, EXEMPLAR_BLOCK_PADDING, above=True)
    return _save(figure, path, stamp)


@torch.no_grad()
def plot_code_map(
    model: VQVAE, images: torch.Tensor, path: str | Path, stamp: dict[str, str] | None = None
) -> Path:
    """Test images (N, H, W) side by side with their code grid drawn over them."""
    device = next(model.parameters()).device
    codes = model.encode(images.to(device)).cpu()  # (N, h, w)
    pixels = to_uint8(images)
    count, size = pixels.shape[0], pixels.shape[-1]
    grid = codes.shape[-1]
    cell = size * CODEMAP_SCALE / grid  # screen pixels per code cell
    figure, axes = _show_canvas(tile(pixels, count), CODEMAP_SCALE)
    for index in range(count):
        x0, y0 = (v * CODEMAP_SCALE for v in tile_origin(index, count, size))
        for line in range(grid + 1):
            offset = line * cell
            axes.plot([x0, x0 + size * CODEMAP_SCALE], [y0 + offset] * 2, color="tab:cyan", lw=0.5)
            axes.plot([x0 + offset] * 2, [y0, y0 + size * CODEMAP_SCALE], color="tab:cyan", lw=0.5)
        for row in range(grid):
            for col in range(grid):
                axes.text(
                    x0 + (col + 0.5) * cell,
                    y0 + (row + 0.5) * cell,
                    str(int(codes[index, row, col])),
                    ha="center",
                    va="center",
                    **_label_style(CODEMAP_FONT_SIZE),
                )
    return _save(figure, path, stamp)


def write_codebook_figures(
    model: VQVAE,
    counts: torch.Tensor,
    test_images: torch.Tensor,
    out_dir: str | Path,
    stamp: dict[str, str] | None = None,
    exemplar_images: torch.Tensor | None = None,
) -> CodebookFigures:
    """The usage histogram, code atlas and code map PNGs, named as in ``runfiles.FIGURE_NAMES``,
    and with ``exemplar_images`` the code exemplars.

    counts: (K,) code usage over the training set; test_images: (N, H, W) for the code map;
    stamp: the provenance chunks of every figure (vqkit.provenance); exemplar_images: (N, H, W)
    test images searched for each code's patches.
    """
    if not 1 <= test_images.shape[0] <= MAX_CODEMAP_IMAGES:
        raise VqkitError(
            f"The code map shows 1 to {MAX_CODEMAP_IMAGES} test images, not {test_images.shape[0]}."
        )
    out_dir = ensure_dir(out_dir)
    images = int(counts.sum()) // model.config.grid_size**2
    names = runfiles.FIGURE_NAMES
    exemplars = None
    if exemplar_images is not None:
        path = out_dir / names["codebook_exemplars"]
        exemplars = plot_exemplars(model, counts, exemplar_images, path, stamp)
    return CodebookFigures(
        usage=plot_usage(counts, out_dir / names["codebook_usage"], images, stamp),
        atlas=plot_atlas(model, counts, out_dir / names["codebook_atlas"], stamp),
        codemap=plot_code_map(model, test_images, out_dir / names["codebook_codemap"], stamp),
        exemplars=exemplars,
    )
