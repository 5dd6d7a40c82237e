"""Datasets for vqkit: strict IDX reading and verified MNIST / Fashion-MNIST splits."""

from vqkit.data.idx import IdxError, read_idx
from vqkit.data.sources import (
    DATASETS,
    DEBIAN_FASHION_MNIST_DIR,
    INFO,
    DatasetInfo,
    FileInfo,
    Split,
    cache_dir,
    download_split,
    load_split,
)

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
    "INFO",
    "DatasetInfo",
    "FileInfo",
    "IdxError",
    "Split",
    "cache_dir",
    "download_split",
    "load_split",
    "read_idx",
]
