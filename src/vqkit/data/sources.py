"""Find, fetch, verify and load the MNIST and Fashion-MNIST splits, or the user's own.

Sources are tried in order: an explicit ``data_dir``; the copy embedded in the package (MNIST);
the Debian package folder (Fashion-MNIST); the download cache; the original mirrors. The
``idx`` dataset is the user's own 28×28 images in the same four files, read from ``data_dir``
only and checked for structure (their content has no known checksum).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import tempfile
import urllib.request
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import IO, Literal

import numpy as np
import torch

from vqkit import arguments
from vqkit.config import path_or_none
from vqkit.data.catalog import (
    DATASETS,
    IMAGE_SIZE,
    INFO,
    MAX_OWN_CLASSES,
    OWN_DATASET,
    DatasetInfo,
    FileInfo,
    Split,
)
from vqkit.data.idx import ChecksumMismatch, IdxError, read_idx
from vqkit.errors import InvalidValue, VqkitError
from vqkit.user_cache import cache_folder

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR",
    "cache_dir",
    "dataset_classes",
    "download_split",
    "load_split",
]

SplitName = Literal["train", "test"]

# Where `apt-get install -y dataset-fashion-mnist` puts the files; tests monkeypatch this.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

_DOWNLOAD_TIMEOUT_S = 30
_CHUNK = 1 << 20


def _info(dataset: str, split: str) -> DatasetInfo:
    if dataset not in INFO:
        raise InvalidValue(
            f"Unknown dataset {dataset!r}; valid datasets are: {', '.join(DATASETS)}."
        )
    info = INFO[dataset]
    if split not in info.files:
        raise InvalidValue(f"Unknown split {split!r}; valid splits are: train, test.")
    return info


def cache_dir(dataset: str) -> Path:
    """Download cache: ``$VQKIT_DATA/<dataset>`` or ``~/.cache/vqkit/data/<dataset>``."""
    return cache_folder("VQKIT_DATA", "~/.cache/vqkit/data") / dataset


def _find_in(folder: Path, f: FileInfo) -> Path | None:
    """The uncompressed or ``.gz`` copy of ``f`` in ``folder``; uncompressed is faster to read."""
    for name in (f.name, f.name + ".gz"):
        p = folder / name
        if p.is_file():
            return p
    return None


def require_data_folder(folder: Path) -> None:
    """A data folder that is gone (moved, renamed, mistyped) is named as gone, not as empty."""
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise VqkitError(
            f"The data folder '{folder}' {what}; give the folder that holds the IDX files with "
            "--data-dir."
        )


def _find_pair(
    folders: Sequence[Path], pair: tuple[FileInfo, FileInfo], strict: bool = True
) -> tuple[Path, Path] | None:
    """Both files of a split from the first folder holding them.

    With ``strict``, a folder holding only one of the two is an error rather than skipped
    (the download cache is not strict: an interrupted download leaves half a split).
    """
    for folder in folders:
        found = [_find_in(folder, f) for f in pair]
        if all(found):
            return found[0], found[1]  # type: ignore[return-value]
        if strict and any(found):
            missing = pair[found.index(None)].name
            raise VqkitError(
                f"The data folder '{folder}' holds only half of a split: {missing}[.gz] is missing."
            )
    return None


# --- downloading -------------------------------------------------------------------------


def _open_url(url: str) -> IO[bytes]:
    """Open ``url`` for reading; a module-level seam so tests can replace the network."""
    return urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S)


def _fetch_one(url: str, dest: Path, md5: str) -> None:
    """Stream ``url`` to ``dest`` atomically, keeping it only if its MD5 is ``md5``."""
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)  # integrity only
        with os.fdopen(fd, "wb") as out, contextlib.closing(_open_url(url)) as src:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != md5:
            raise VqkitError(
                f"Download {url} has MD5 {digest.hexdigest()}, expected {md5}, so it was refused."
            )
        os.replace(tmp, dest)  # atomic: readers never see a partial file
    finally:
        tmp.unlink(missing_ok=True)


def download_split(
    dataset: str, split: SplitName, dest: Path | None = None, mirrors: Sequence[str] | None = None
) -> tuple[Path, Path]:
    """Download the two ``.gz`` files of a split into ``dest`` (default: the cache dir).

    Each mirror is tried in order per file; a file is kept only if its ``.gz`` MD5 matches.
    Returns the (images, labels) paths; raises :class:`VqkitError` if no mirror worked.
    """
    info = _info(dataset, split)
    dest = Path(dest) if dest is not None else cache_dir(dataset)
    mirrors = info.mirrors if mirrors is None else tuple(mirrors)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VqkitError(f"Cannot create download folder {dest} ({e.strerror or e}).") from None
    paths = []
    for f in info.files[split]:
        target = dest / (f.name + ".gz")
        errors = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + f.name + ".gz"
            try:
                _fetch_one(url, target, f.gz_md5)
                break
            except VqkitError as e:
                errors.append(str(e))
            except (OSError, ValueError) as e:  # URLError/HTTPError are OSErrors
                errors.append(f"{url}: {e}")
        else:
            raise VqkitError(
                f"Could not download {f.name}.gz ({'; '.join(errors) or 'no mirrors'})."
            )
        paths.append(target)
    return paths[0], paths[1]


# --- loading -----------------------------------------------------------------------------


def _file_key(path: Path) -> tuple[str, int, int]:
    """Cache key: resolved path plus size and mtime, so a replaced file is re-verified."""
    try:
        st = path.stat()
    except OSError as e:
        raise IdxError(f"IDX file '{path}' cannot be read ({e.strerror or e}).") from None
    return str(path.resolve()), st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=8)
def _read_verified(key: tuple[str, int, int], sha256: str | None) -> np.ndarray:
    return read_idx(key[0], expected_sha256=sha256)


def _read_labels(path: Path, sha256: str | None = None) -> np.ndarray:
    """Read and check a labels file: (N,) uint8."""
    labels = _read_verified(_file_key(path), sha256)
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise IdxError(
            f"IDX file '{path}' holds {labels.dtype} of shape {labels.shape}, "
            f"expected (N,) uint8 labels."
        )
    return labels


def _read_pair(
    images_path: Path,
    labels_path: Path,
    n_classes: int,
    images_sha256: str | None = None,
    labels_sha256: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read and cross-check images (N, 28, 28) uint8 and labels (N,) uint8."""
    images = _read_verified(_file_key(images_path), images_sha256)
    labels = _read_labels(labels_path, labels_sha256)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise IdxError(
            f"IDX file {images_path} holds shape {images.shape}, expected (N, 28, 28) images."
        )
    if images.dtype != np.uint8:
        raise IdxError(f"IDX file {images_path} holds {images.dtype} values, expected uint8.")
    if images.shape[0] != labels.shape[0]:
        raise IdxError(
            f"IDX file {images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels."
        )
    if labels.size and int(labels.max()) >= n_classes:
        raise IdxError(
            f"IDX file {labels_path} holds label {int(labels.max())}, outside 0..{n_classes - 1}."
        )
    return images, labels


@contextlib.contextmanager
def _embedded_pair(info: DatasetInfo, split: str) -> Iterator[tuple[Path, Path] | None]:
    """Real paths of the embedded files (extracted temporarily if installed as a zip)."""
    if not info.embedded:
        yield None
        return
    folder = resources.files("vqkit.data").joinpath(info.name)
    entries = [folder.joinpath(f.name + ".gz") for f in info.files[split]]
    if not all(e.is_file() for e in entries):
        yield None
        return
    with resources.as_file(entries[0]) as images, resources.as_file(entries[1]) as labels:
        yield Path(images), Path(labels)


def _locate(
    info: DatasetInfo,
    split: str,
    data_dir: Path | None,
    download: bool,
    stack: contextlib.ExitStack,
) -> tuple[Path, Path]:
    pair = info.files[split]
    if data_dir is not None:
        require_data_folder(data_dir)
        # torchvision's root, this dataset's folder in it (which holds raw/), or flat files.
        folders = [data_dir / info.torchvision_folder / "raw", data_dir / info.name, data_dir]
        found = _find_pair([*folders, data_dir / "raw"], pair)
        if found is None:
            raise VqkitError(
                f"The data folder '{data_dir}' has no {info.name} {split} files "
                f"({pair[0].name}[.gz] and {pair[1].name}[.gz], flat, under raw/ or under "
                f"{info.torchvision_folder}/raw/)."
            )
        return found
    embedded = stack.enter_context(_embedded_pair(info, split))
    if embedded is not None:
        return embedded
    if info.name == "fashion-mnist":
        found = _find_pair([DEBIAN_FASHION_MNIST_DIR], pair)
        if found is not None:
            return found
    found = _find_pair([cache_dir(info.name)], pair, strict=False)
    if found is not None:
        return found
    hint = (
        "install it with `apt-get install -y dataset-fashion-mnist`"
        if info.name == "fashion-mnist"
        else "reinstall vqkit"
    )
    where = "or put the four IDX files in a folder and pass it with --data-dir"
    if not download:
        raise VqkitError(
            f"No local copy of {info.name} was found and downloading is disabled; {hint} {where}."
        )
    try:
        return download_split(info.name, split)  # type: ignore[arg-type]
    except VqkitError as e:
        raise VqkitError(
            f"No local copy of {info.name} was found and downloading failed "
            f"({str(e).rstrip('.')}); {hint} {where}."
        ) from None


def load_split(
    dataset: str,
    split: SplitName,
    data_dir: str | Path | None = None,
    download: bool = True,
) -> Split:
    """Load one verified split; images (N, 28, 28) uint8, labels (N,) int64.

    Raises :class:`VqkitError` for an unknown name, missing or damaged files.
    """
    for value, what in ((dataset, "dataset"), (split, "split")):
        if not isinstance(value, str):
            raise InvalidValue(f"The {what} is named by a string, not {value!r}.")
    path_or_none(data_dir, "The data folder (--data-dir)")
    download = arguments.switch(download, "download")  # "no" would have meant yes
    if dataset == OWN_DATASET:
        return _load_own_split(split, data_dir)
    info = _info(dataset, split)
    d, s = info.files[split]
    with contextlib.ExitStack() as stack:
        paths = _locate(
            info, split, Path(data_dir) if data_dir is not None else None, download, stack
        )
        try:
            images, labels = _read_pair(paths[0], paths[1], len(info.classes), d.sha256, s.sha256)
        except ChecksumMismatch as exc:
            if data_dir is None:
                raise
            # Well-formed files that are not the dataset's: most likely one's own images.
            raise ChecksumMismatch(
                f"{str(exc).removesuffix('.')}; if '{data_dir}' holds images of your own, "
                "add --dataset idx (dataset='idx' in Python)."
            ) from exc
    # Fresh tensors per call: the cached arrays are shared and must not be mutated.
    return Split(
        dataset=dataset,
        split=split,
        images=torch.from_numpy(images.copy()),
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=info.classes,
    )


# --- the user's own dataset ----------------------------------------------------------------


def _own_files(split: str, data_dir: str | Path | None) -> tuple[Path, Path]:
    """The (images, labels) files of one split of the user's dataset."""
    if split not in ("train", "test"):
        raise InvalidValue(f"Unknown split {split!r}; valid splits are: train, test.")
    if data_dir is None:
        raise VqkitError(
            f"The '{OWN_DATASET}' dataset is read from a folder of yours: give it with "
            "--data-dir (four IDX files named as MNIST's, such as train-images-idx3-ubyte.gz)."
        )
    folder = Path(data_dir)
    require_data_folder(folder)
    pair = INFO["mnist"].files[split]  # MNIST's file names; the content is the user's
    found = _find_pair([folder, folder / "raw"], pair)
    if found is None:
        raise VqkitError(
            f"The data folder '{folder}' has no {split} files ({pair[0].name}[.gz] and "
            f"{pair[1].name}[.gz], flat or under raw/); vqkit.data.write_own_dataset makes "
            "them from image and label arrays."
        )
    return found


def _own_pair(split: str, data_dir: str | Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split of the user's dataset, checked for structure."""
    images_path, labels_path = _own_files(split, data_dir)
    images, labels = _read_pair(images_path, labels_path, MAX_OWN_CLASSES)
    if images.shape[0] == 0:
        raise VqkitError(f"IDX file {images_path} holds no images.")
    return images, labels


def dataset_classes(dataset: str, data_dir: str | Path | None = None) -> tuple[str, ...]:
    """Class names of ``dataset``: the named datasets' own, or for the user's dataset "0" up
    to the largest label in either split (so both splits and every stage agree)."""
    if dataset != OWN_DATASET:
        return _info(dataset, "train").classes
    # The labels files alone: the images of the other split need not be read for this.
    labels = [_read_labels(_own_files(split, data_dir)[1]) for split in ("train", "test")]
    largest = max(int(split_labels.max(initial=0)) for split_labels in labels)
    return tuple(str(label) for label in range(largest + 1))


def _load_own_split(split: str, data_dir: str | Path | None) -> Split:
    images, labels = _own_pair(split, data_dir)
    return Split(
        dataset=OWN_DATASET,
        split=split,
        images=torch.from_numpy(images.copy()),
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=dataset_classes(OWN_DATASET, data_dir),
    )
