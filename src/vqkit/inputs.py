"""Naming input images on the command line: split indices and ranges, digits, PNG files.

One reference names one or more images:

- ``17`` or ``test:17``: test image 17; ``test:0-99``: test images 0 to 99 (inclusive);
- ``train:17``, ``train:0-99``: the same in the training split (the tutorial's images);
- ``digit:3``: the first test image labelled 3 (the class index for Fashion-MNIST);
- anything else: a path to a PNG of the model's image size (colour converted to grayscale,
  transparency laid over black: :func:`grayscale`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vqkit.constants import SPLIT_NAMES
from vqkit.data import INFO, Split, load_split
from vqkit.errors import VqkitError

# ASCII digits only (re's \d takes every script's: "test:١٢" read image 12), and \Z, not $,
# which also matches before a final newline.
_INDEX = re.compile(r"^(?:(test|train):)?([0-9]+)\Z")
_RANGE = re.compile(r"^(test|train):([0-9]+)-([0-9]+)\Z")
_DIGIT = re.compile(r"^digit:(-?[0-9]+)\Z")

# What an image reference may be, as the sentences refusing one list it.
ANY_REFERENCE = (
    "an image index (17, test:17, train:17), a range (test:A-B, train:A-B), digit:D or an "
    "existing PNG file"
)
ONE_REFERENCE = (  # where one image is asked
    "an image index (17, test:17, train:17), digit:D or an existing PNG file"
)

# Pillow modes that convert to grayscale without guessing a value range: 8-bit ones, and
# 16-bit grayscale (Pillow opens a 16-bit PNG as "I;16", "I;16B" or "I", values 0 to 65535).
_CONVERTIBLE_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I"}


@dataclass
class ImageSet:
    """Images named by references: ``images`` (N, H, W) uint8 and one name per image
    (``test:17``, ``train:3`` or the PNG's path)."""

    images: torch.Tensor
    names: list[str]


def load_png(path: str | Path, size: int = 28, expected: str = ANY_REFERENCE) -> torch.Tensor:
    """A PNG file as a (size, size) uint8 grayscale tensor, with a clear error for bad files
    (a missing one is said not to be any of the references ``expected``)."""
    path = Path(path)
    if path.is_dir():
        raise VqkitError(
            f"'{path}' is a folder; name its PNG files one by one (for example {path}/*.png)."
        )
    if not path.is_file():
        raise VqkitError(f"'{path}' is not {expected}.")
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise VqkitError(f"'{path}' is not a PNG file (it is {image.format or 'unknown'}).")
            if image.mode not in _CONVERTIBLE_MODES | _SIXTEEN_BIT_MODES:
                raise VqkitError(
                    f"'{path}' has the pixel format {image.mode}; save it as 8-bit grayscale."
                )
            if image.size != (size, size):
                width, height = image.size
                raise VqkitError(
                    f"'{path}' is {width}×{height} pixels; the model needs {size}×{size} images."
                )
            pixels = grayscale(image)
    except Image.DecompressionBombError as exc:  # its header claims billions of pixels
        raise VqkitError(
            f"'{path}' declares an image far larger than {size}×{size} pixels; the model needs "
            f"{size}×{size} images."
        ) from exc
    except UnidentifiedImageError as exc:
        raise VqkitError(f"'{path}' is not an image file Pillow can read (not a PNG).") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's PNG parser raises all three
        raise VqkitError(f"'{path}' cannot be read as a PNG: it is damaged or truncated.") from exc
    return torch.from_numpy(pixels.copy())


def grayscale(image: Image.Image) -> np.ndarray:
    """The image's luminance as uint8 (Pillow's weights, 0.299 R + 0.587 G + 0.114 B).

    An image with transparency is laid over black, the background of MNIST's light-on-dark
    digits, unless everything not transparent is of one colour (within ONE_COLOUR_SPREAD
    levels): ink of one colour, black, white or any other, drawn on a transparent canvas. The
    drawing is then its alpha channel, read as light ink on black. (A stencil, an opaque
    square with a transparent digit, is such an image too: its digit comes out dark on light.)
    """
    gray, alpha = _gray_and_alpha(image)
    if alpha is None or alpha.min() == 255:
        return gray
    # Mostly opaque pixels only: exporters that store premultiplied colour round the colour
    # of a faint edge pixel far off its ink's.
    drawn = gray[alpha >= 128]
    if drawn.size and int(drawn.max()) - int(drawn.min()) <= ONE_COLOUR_SPREAD:
        return alpha
    return ((gray.astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)


# Gray levels within which the visible pixels of an image with transparency count as one colour
# of ink (a stray or slightly off pixel of a drawing app's brush).
ONE_COLOUR_SPREAD = 8


def _gray_and_alpha(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """8-bit luminance and, for an image with transparency, its 8-bit alpha channel."""
    key = image.info.get("transparency")  # a colour key (tRNS) or a palette's entry
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.rint(values / 257), 0, 255).astype(np.uint8)  # 65535 -> 255
        alpha = None if not isinstance(key, int) else np.where(values == key, 0, 255)
        return gray, None if alpha is None else alpha.astype(np.uint8)
    if image.mode in ("LA", "PA", "RGBA") or key is not None:
        # A palette or a colour key becomes an alpha channel on the way to RGBA.
        both = np.asarray(image.convert("RGBA").convert("LA"), dtype=np.uint8)
        return both[..., 0], both[..., 1]
    return np.asarray(image.convert("L"), dtype=np.uint8), None


def split_loader(dataset: str, data_dir: str | Path | None = None) -> Callable[[str], Split]:
    """A function loading a split of the dataset ("test" or "train") on its first use only (PNG
    inputs never need one)."""
    return functools.cache(lambda split: load_split(dataset, split, data_dir))


def _index_in(index: int, split: str, images: Split) -> int:
    if index >= len(images):
        raise VqkitError(
            f"{split.capitalize()} index {index} is outside the {SPLIT_NAMES[split]} "
            f"(0 to {len(images) - 1})."
        )
    return index


def resolve_images(
    references: Sequence[str],
    splits: Callable[[str], Split],
    size: int = 28,
    expected: str = ANY_REFERENCE,
) -> ImageSet:
    """All images named by ``references``, in order; ``splits("test")`` and ``splits("train")``
    load a split lazily. ``expected`` lists the kinds of reference the caller takes, for the
    sentence refusing one."""
    images: list[torch.Tensor] = []
    names: list[str] = []
    for reference in references:
        index, span = _INDEX.match(reference), _RANGE.match(reference)
        digit = _DIGIT.match(reference)
        if index:
            split = index.group(1) or "test"
            chosen = splits(split)
            position = _index_in(int(index.group(2)), split, chosen)
            images.append(chosen.images[position : position + 1])
            names.append(f"{split}:{position}")
        elif span:
            split, first, last = span.group(1), int(span.group(2)), int(span.group(3))
            if first > last:
                raise VqkitError(f"The range '{reference}' is empty: its start exceeds its end.")
            chosen = splits(split)
            _index_in(last, split, chosen)
            images.append(chosen.images[first : last + 1])
            names.extend(f"{split}:{i}" for i in range(first, last + 1))
        elif digit:
            test = splits("test")
            label = int(digit.group(1))
            if not 0 <= label < len(test.classes):
                raise VqkitError(
                    f"'{reference}' names no class: labels go from 0 to {len(test.classes) - 1}."
                )
            matches = torch.nonzero(test.labels == label).flatten()
            if matches.numel() == 0:
                raise VqkitError(f"The test set holds no image labelled {label}.")
            position = int(matches[0])
            images.append(test.images[position : position + 1])
            names.append(f"test:{position}")
        elif not reference.strip():  # Path("") would read as '.', the current folder
            raise VqkitError(f"An image reference is empty; give {expected}.")
        else:
            images.append(load_png(reference, size, expected).unsqueeze(0))
            names.append(reference)
    if not images:
        raise VqkitError("No input images were given.")
    return ImageSet(torch.cat(images), names)


def light_background_note(found: ImageSet, dataset: str) -> str | None:
    """A note naming the PNG inputs drawn dark on a light background (three quarters of their
    outer two-pixel frame brighter than mid-gray: a light stroke may touch an edge) when the
    run learned a named dataset, whose images are all light on black: such a drawing (black
    ink on white paper) gets codes of another kind of image. None when there is none, or for
    one's own data, which may be either."""
    if dataset not in INFO:
        return None
    frame = torch.ones(found.images.shape[1:], dtype=torch.bool)
    frame[2:-2, 2:-2] = False
    light = [
        name
        for name, image in zip(found.names, found.images, strict=True)
        if not _names_split_image(name) and (image[frame] > 127).float().mean() >= 0.75
    ]
    if not light:
        return None
    names = ", ".join(f"'{name}'" for name in light)
    return (
        f"{names} {'is' if len(light) == 1 else 'are'} dark on a light background, unlike the "
        f"{dataset} images this model learned (light on black); invert "
        f"{'it' if len(light) == 1 else 'them'} for codes that mean what they do for those."
    )


def _names_split_image(name: str) -> bool:
    """Whether an image reference or ImageSet name is a split's image (17, test:17, digit:3),
    not a file's path."""
    return any(pattern.match(name) for pattern in (_INDEX, _RANGE, _DIGIT))


def resolve_image(reference: str, splits: Callable[[str], Split], size: int = 28) -> torch.Tensor:
    """The one image a reference names, (H, W) uint8; a range of several is an error."""
    found = resolve_images([reference], splits, size, ONE_REFERENCE)
    if found.images.shape[0] != 1:
        raise VqkitError(f"'{reference}' names {found.images.shape[0]} images; give exactly one.")
    return found.images[0]
