"""Write arrays as an own dataset: the four IDX files ``--dataset idx --data-dir`` reads."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from vqkit import arguments
from vqkit.data.catalog import IMAGE_SIZE, INFO
from vqkit.data.idx import idx_bytes
from vqkit.errors import VqkitError
from vqkit.fileio import ensure_dir, write_bytes_atomic

__all__ = ["write_own_dataset"]


def write_own_dataset(
    folder: str | Path,
    train: tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor],
    test: tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor],
    *,
    overwrite: bool = False,
) -> Path:
    """Write (images, labels) of both splits as a dataset ``--dataset idx --data-dir folder``
    reads: four gzip-compressed IDX files with MNIST's names, each written atomically.

    Images: (N, 28, 28) or (N, 1, 28, 28) integers 0..255, or floats in [0, 1] (scaled by 255
    and rounded). Labels: (N,) integers 0..255. Returns the folder. Bad input raises
    :class:`VqkitError` before anything is written, and so does a folder already holding
    dataset files unless ``overwrite`` (which also removes their uncompressed copies: readers
    prefer those).
    """
    folder = arguments.folder(folder, "The dataset folder")
    overwrite = arguments.switch(overwrite, "overwrite")
    arrays = {}
    splits = {"train": arguments.pair_of_arrays(train, "The training split")}
    splits["test"] = arguments.pair_of_arrays(test, "The test split")
    for split, (images, labels) in splits.items():
        image_bytes, label_bytes = _own_images(images, split), _own_labels(labels, split)
        if image_bytes.shape[0] != label_bytes.shape[0]:
            raise VqkitError(
                f"The {split} split has {image_bytes.shape[0]} images but "
                f"{label_bytes.shape[0]} labels."
            )
        names = INFO["mnist"].files[split]
        arrays[names[0].name], arrays[names[1].name] = image_bytes, label_bytes
    existing = [
        path for name in arrays for path in (folder / name, folder / f"{name}.gz") if path.exists()
    ]
    if existing and not overwrite:
        raise VqkitError(
            f"The folder {folder} already holds dataset files ({existing[0].name} and "
            f"{len(existing) - 1} more); pass overwrite=True to replace them."
        )
    ensure_dir(folder)
    for name, array in arrays.items():
        # mtime=0: the same arrays always give the same bytes.
        write_bytes_atomic(folder / f"{name}.gz", gzip.compress(idx_bytes(array), mtime=0))
        (folder / name).unlink(missing_ok=True)  # a stale uncompressed copy would be read first
    return folder


def _as_numpy(values: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
    """Any array or tensor as NumPy: a tensor is detached and moved to the CPU first, and
    half-precision floats (which NumPy lacks, bfloat16) become float32."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.is_floating_point() and values.element_size() < 4:
            values = values.float()
        return values.numpy()
    try:
        return np.asarray(values)
    except ValueError:  # nested lists of unequal lengths
        raise VqkitError(
            f"The {what} are not a rectangular array (rows of unequal length)."
        ) from None


def _own_images(images: np.ndarray | torch.Tensor, split: str) -> np.ndarray:
    array = _as_numpy(images, f"{split} images")
    shape = array.shape  # as given, before a channel axis is dropped
    if array.ndim == 4 and array.shape[1] == 1:  # (N, 1, 28, 28), as the model takes them too
        array = array[:, 0]
    if array.ndim != 3 or array.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or array.shape[0] == 0:
        raise VqkitError(
            f"The {split} images have shape {shape}; they must be "
            "(N, 28, 28) or (N, 1, 28, 28), N >= 1."
        )
    if array.dtype.kind == "f":
        if not (np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1):
            raise VqkitError(
                f"The {split} images are floats outside [0, 1]; give floats in [0, 1] or "
                "integers from 0 to 255."
            )
        return np.rint(array * 255).astype(np.uint8)
    pixels = _as_bytes(array, f"{split} images")
    if pixels.max() == 1:  # read as 0-255, a 0/1 mask would come out black, as booleans do
        raise VqkitError(
            f"The {split} images are integers 0 and 1 only, read as 0 to 255 they would be "
            "black; multiply them by 255 or give floats in [0, 1]."
        )
    return pixels


def _own_labels(labels: np.ndarray | torch.Tensor, split: str) -> np.ndarray:
    array = _as_numpy(labels, f"{split} labels")
    if array.ndim != 1:
        raise VqkitError(f"The {split} labels have shape {array.shape}; they must be (N,).")
    return _as_bytes(array, f"{split} labels")


def _as_bytes(array: np.ndarray, what: str) -> np.ndarray:
    """``array`` as uint8, refusing anything but integers from 0 to 255 (booleans too: written
    as pixels 0 and 1, a mask would come out black)."""
    if array.dtype.kind not in "iu":
        raise VqkitError(f"The {what} are {array.dtype}; they must be integers from 0 to 255.")
    if array.size and (int(array.min()) < 0 or int(array.max()) > 255):
        raise VqkitError(
            f"The {what} hold values from {int(array.min())} to {int(array.max())}; they "
            "must be from 0 to 255."
        )
    return array.astype(np.uint8)
