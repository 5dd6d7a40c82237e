"""Datasets for vqkit: strict IDX reading, verified MNIST / Fashion-MNIST splits, own IDX data."""

from typing import TYPE_CHECKING

# Each name is imported from its module when first used: the command line reads the dataset
# names (vqkit.data.catalog) while it parses, before PyTorch, which the readers import, loads.
_HOMES = {
    "DATASETS": "vqkit.data.catalog",
    "INFO": "vqkit.data.catalog",
    "OWN_DATASET": "vqkit.data.catalog",
    "DatasetInfo": "vqkit.data.catalog",
    "FileInfo": "vqkit.data.catalog",
    "Split": "vqkit.data.catalog",
    "IdxError": "vqkit.data.idx",
    "idx_bytes": "vqkit.data.idx",
    "read_idx": "vqkit.data.idx",
    "write_own_dataset": "vqkit.data.own_writer",
    "DEBIAN_FASHION_MNIST_DIR": "vqkit.data.sources",
    "cache_dir": "vqkit.data.sources",
    "dataset_classes": "vqkit.data.sources",
    "download_split": "vqkit.data.sources",
    "load_split": "vqkit.data.sources",
}

if TYPE_CHECKING:  # what static tools and editors read; at run time, __getattr__ below
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


if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        import importlib

        home = _HOMES.get(name)
        if home is None:
            raise AttributeError(f"module 'vqkit.data' has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        globals()[name] = value  # later look-ups skip this function
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


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
