"""Datasets for vqkit: strict IDX reading, verified MNIST / Fashion-MNIST splits, own IDX data."""

from vqkit.data.catalog import DATASETS, INFO, OWN_DATASET, DatasetInfo, FileInfo, Split
from vqkit.data.idx import IdxError, idx_bytes, read_idx
from vqkit.data.own_writer import write_own_dataset
from vqkit.data.sources import (
    DEBIAN_FASHION_MNIST_DIR,
    cache_dir,
    dataset_classes,
    download_split,
    load_split,
)

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
    "INFO",
    "OWN_DATASET",
    "DatasetInfo",
    "FileInfo",
    "IdxError",
    "Split",
    "cache_dir",
    "dataset_classes",
    "download_split",
    "idx_bytes",
    "load_split",
    "read_idx",
    "write_own_dataset",
]
