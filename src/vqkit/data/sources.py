"""Find, fetch, verify and load the MNIST and Fashion-MNIST splits, or the user's own.

Sources are tried in order: an explicit ``data_dir``; the copy embedded in the package (MNIST);
the Debian package folder (Fashion-MNIST); the download cache; the original mirrors. The
``idx`` dataset is the user's own 28×28 images in the same four files, read from ``data_dir``
only and checked for structure (their content has no known checksum).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import os
import tempfile
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, Literal

import numpy as np
import torch

from vqkit.data.idx import IdxError, idx_bytes, read_idx
from vqkit.errors import VqkitError
from vqkit.fileio import ensure_dir, write_bytes_atomic

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
    "INFO",
    "DatasetInfo",
    "FileInfo",
    "Split",
    "OWN_DATASET",
    "cache_dir",
    "dataset_classes",
    "download_split",
    "load_split",
    "write_own_dataset",
]

SplitName = Literal["train", "test"]

# Any 28×28 grayscale dataset in MNIST's four-file layout (KMNIST, your own), from --data-dir.
OWN_DATASET = "idx"
DATASETS = ("mnist", "fashion-mnist", OWN_DATASET)
# Labels are stored as uint8, so an own dataset has at most this many classes.
MAX_OWN_CLASSES = 256

# Where `apt-get install -y dataset-fashion-mnist` puts the files; tests monkeypatch this.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

IMAGE_SIZE = 28
_DOWNLOAD_TIMEOUT_S = 30
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileInfo:
    """One IDX file: its name without ``.gz``, decompressed SHA-256/size, original ``.gz`` MD5."""

    name: str
    sha256: str
    size: int
    gz_md5: str


@dataclass(frozen=True)
class DatasetInfo:
    """Static metadata of one dataset; ``files`` maps split -> (images, labels)."""

    name: str
    torchvision_folder: str  # torchvision keeps raw files in <root>/<folder>/raw/
    files: dict[str, tuple[FileInfo, FileInfo]]
    classes: tuple[str, ...]
    mirrors: tuple[str, ...]
    embedded: bool


INFO: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        torchvision_folder="MNIST",
        files={
            "train": (
                FileInfo(
                    "train-images-idx3-ubyte",
                    "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                    47040016,
                    "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                ),
                FileInfo(
                    "train-labels-idx1-ubyte",
                    "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                    60008,
                    "d53e105ee54ea40749a09fcbcd1e9432",
                ),
            ),
            "test": (
                FileInfo(
                    "t10k-images-idx3-ubyte",
                    "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                    7840016,
                    "9fb629c4189551a2d022fa330f9573f3",
                ),
                FileInfo(
                    "t10k-labels-idx1-ubyte",
                    "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
                    10008,
                    "ec29112dd5afa0611ce80d1b7f02629c",
                ),
            ),
        },
        classes=tuple(str(d) for d in range(10)),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        embedded=True,
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        torchvision_folder="FashionMNIST",
        files={
            "train": (
                FileInfo(
                    "train-images-idx3-ubyte",
                    "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                    47040016,
                    "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                ),
                FileInfo(
                    "train-labels-idx1-ubyte",
                    "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                    60008,
                    "25c81989df183df01b3e8a0aad5dffbe",
                ),
            ),
            "test": (
                FileInfo(
                    "t10k-images-idx3-ubyte",
                    "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                    7840016,
                    "bef4ecab320f06d8554ea6380940ec79",
                ),
                FileInfo(
                    "t10k-labels-idx1-ubyte",
                    "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
                    10008,
                    "bb300cfdad3c16e7a12a480ee83cd310",
                ),
            ),
        },
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        embedded=False,
    ),
}


@dataclass(frozen=True)
class Split:
    """One split of a dataset: ``images`` (N, 28, 28) uint8, ``labels`` (N,) int64."""

    dataset: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _info(dataset: str, split: str) -> DatasetInfo:
    if dataset not in INFO:
        raise VqkitError(f"Unknown dataset {dataset!r}; valid datasets are: {', '.join(DATASETS)}.")
    info = INFO[dataset]
    if split not in info.files:
        raise VqkitError(f"Unknown split {split!r}; valid splits are: train, test.")
    return info


def cache_dir(dataset: str) -> Path:
    """Download cache: ``$VQKIT_DATA/<dataset>`` or ``~/.cache/vqkit/data/<dataset>``."""
    root = os.environ.get("VQKIT_DATA") or "~/.cache/vqkit/data"
    return Path(root).expanduser() / dataset


def _find_in(folder: Path, f: FileInfo) -> Path | None:
    """The uncompressed or ``.gz`` copy of ``f`` in ``folder``; uncompressed is faster to read."""
    for name in (f.name, f.name + ".gz"):
        p = folder / name
        if p.is_file():
            return p
    return None


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
                f"Data folder {folder} holds only half of a split: {missing}[.gz] is missing."
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
        raise IdxError(f"IDX file {path} cannot be read ({e.strerror or e}).") from None
    return str(path.resolve()), st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=8)
def _read_verified(key: tuple[str, int, int], sha256: str | None) -> np.ndarray:
    return read_idx(key[0], expected_sha256=sha256)


def _read_pair(
    images_path: Path,
    labels_path: Path,
    n_classes: int,
    images_sha256: str | None = None,
    labels_sha256: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read and cross-check images (N, 28, 28) uint8 and labels (N,) uint8."""
    images = _read_verified(_file_key(images_path), images_sha256)
    labels = _read_verified(_file_key(labels_path), labels_sha256)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise IdxError(
            f"IDX file {images_path} holds shape {images.shape}, expected (N, 28, 28) images."
        )
    if images.dtype != np.uint8:
        raise IdxError(f"IDX file {images_path} holds {images.dtype} values, expected uint8.")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise IdxError(
            f"IDX file {labels_path} holds {labels.dtype} of shape {labels.shape}, "
            f"expected (N,) uint8 labels."
        )
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
        folders = [data_dir / info.torchvision_folder / "raw", data_dir / info.name, data_dir]
        found = _find_pair(folders, pair)
        if found is None:
            raise VqkitError(
                f"Data folder {data_dir} has no {info.name} {split} files "
                f"({pair[0].name}[.gz] and {pair[1].name}[.gz], flat or under "
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
    if dataset == OWN_DATASET:
        return _load_own_split(split, data_dir)
    info = _info(dataset, split)
    d, s = info.files[split]
    with contextlib.ExitStack() as stack:
        paths = _locate(
            info, split, Path(data_dir) if data_dir is not None else None, download, stack
        )
        images, labels = _read_pair(paths[0], paths[1], len(info.classes), d.sha256, s.sha256)
    # Fresh tensors per call: the cached arrays are shared and must not be mutated.
    return Split(
        dataset=dataset,
        split=split,
        images=torch.from_numpy(images.copy()),
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=info.classes,
    )


# --- the user's own dataset ----------------------------------------------------------------


def _own_pair(split: str, data_dir: str | Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split of the user's dataset, checked for structure."""
    if split not in ("train", "test"):
        raise VqkitError(f"Unknown split {split!r}; valid splits are: train, test.")
    if data_dir is None:
        raise VqkitError(
            f"The '{OWN_DATASET}' dataset is read from a folder of yours: give it with "
            "--data-dir (four IDX files named as MNIST's, such as train-images-idx3-ubyte.gz)."
        )
    folder = Path(data_dir)
    pair = INFO["mnist"].files[split]  # MNIST's file names; the content is the user's
    found = _find_pair([folder, folder / "raw"], pair)
    if found is None:
        raise VqkitError(
            f"Data folder {folder} has no {split} files ({pair[0].name}[.gz] and "
            f"{pair[1].name}[.gz], flat or under raw/)."
        )
    images, labels = _read_pair(found[0], found[1], MAX_OWN_CLASSES)
    if images.shape[0] == 0:
        raise VqkitError(f"IDX file {found[0]} holds no images.")
    return images, labels


def dataset_classes(dataset: str, data_dir: str | Path | None = None) -> tuple[str, ...]:
    """Class names of ``dataset``: the named datasets' own, or for the user's dataset "0" up
    to the largest label in either split (so both splits and every stage agree)."""
    if dataset != OWN_DATASET:
        return _info(dataset, "train").classes
    largest = max(int(_own_pair(split, data_dir)[1].max()) for split in ("train", "test"))
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


def write_own_dataset(
    folder: str | Path,
    train: tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor],
    test: tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor],
) -> Path:
    """Write (images, labels) of both splits as a dataset ``--dataset idx --data-dir folder``
    reads: four gzip-compressed IDX files with MNIST's names, each written atomically.

    Images: (N, 28, 28) integers 0..255, or floats in [0, 1] (scaled by 255 and rounded).
    Labels: (N,) integers 0..255. Returns the folder. Bad input raises :class:`VqkitError`
    before anything is written.
    """
    arrays = {}
    for split, (images, labels) in (("train", train), ("test", test)):
        image_bytes, label_bytes = _own_images(images, split), _own_labels(labels, split)
        if image_bytes.shape[0] != label_bytes.shape[0]:
            raise VqkitError(
                f"The {split} split has {image_bytes.shape[0]} images but "
                f"{label_bytes.shape[0]} labels."
            )
        names = INFO["mnist"].files[split]
        arrays[names[0].name], arrays[names[1].name] = image_bytes, label_bytes
    folder = Path(folder)
    ensure_dir(folder)
    for name, array in arrays.items():
        # mtime=0: the same arrays always give the same bytes.
        write_bytes_atomic(folder / f"{name}.gz", gzip.compress(idx_bytes(array), mtime=0))
    return folder


def _own_images(images: np.ndarray | torch.Tensor, split: str) -> np.ndarray:
    array = np.asarray(images)
    if array.ndim != 3 or array.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or array.shape[0] == 0:
        raise VqkitError(
            f"The {split} images have shape {array.shape}; they must be (N, 28, 28), N >= 1."
        )
    if array.dtype.kind == "f":
        if not (np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1):
            raise VqkitError(
                f"The {split} images are floats outside [0, 1]; give floats in [0, 1] or "
                "integers from 0 to 255."
            )
        return np.rint(array * 255).astype(np.uint8)
    return _as_bytes(array, f"{split} images")


def _own_labels(labels: np.ndarray | torch.Tensor, split: str) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1:
        raise VqkitError(f"The {split} labels have shape {array.shape}; they must be (N,).")
    return _as_bytes(array, f"{split} labels")


def _as_bytes(array: np.ndarray, what: str) -> np.ndarray:
    """``array`` as uint8, refusing anything but integers from 0 to 255."""
    if array.dtype.kind not in "biu":
        raise VqkitError(f"The {what} are {array.dtype}; they must be integers from 0 to 255.")
    if array.size and (int(array.min()) < 0 or int(array.max()) > 255):
        raise VqkitError(
            f"The {what} hold values from {int(array.min())} to {int(array.max())}; they "
            "must be from 0 to 255."
        )
    return array.astype(np.uint8)
