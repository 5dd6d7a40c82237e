"""What vqkit knows about its datasets: names, files with their checksums, class names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vqkit.config import IMAGE_SIZE

if TYPE_CHECKING:  # the names above are read while the command line parses: no PyTorch yet
    import torch

__all__ = [
    "DATASETS",
    "IMAGE_SIZE",
    "INFO",
    "MAX_OWN_CLASSES",
    "OWN_DATASET",
    "DatasetInfo",
    "FileInfo",
    "Split",
]

# Any 28×28 grayscale dataset in MNIST's four-file layout (KMNIST, your own), from --data-dir.
OWN_DATASET = "idx"
DATASETS = ("mnist", "fashion-mnist", OWN_DATASET)
# Labels are stored as uint8, so an own dataset has at most this many classes.
MAX_OWN_CLASSES = 256


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


def split_size(dataset: str, split: str) -> int | None:
    """The number of images in a named dataset's split, from its label file's size (one byte
    per label after an IDX header of 8 bytes: magic and count); None for one's own data."""
    info = INFO.get(dataset)
    return None if info is None else info.files[split][1].size - 8


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
