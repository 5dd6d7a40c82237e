"""Fashion-MNIST from Debian's dataset-fashion-mnist package, verified by checksum."""

from __future__ import annotations

import pytest
import torch

from vqkit.data import DEBIAN_FASHION_MNIST_DIR, load_split

pytestmark = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists(),
    reason="apt-get install -y dataset-fashion-mnist to run this test",
)


def test_fashion_mnist_test_split_loads_with_ten_balanced_classes():
    split = load_split("fashion-mnist", "test")
    assert split.images.shape == (10000, 28, 28) and split.images.dtype == torch.uint8
    # The test set has exactly 1000 images of each of the 10 classes.
    assert torch.equal(torch.bincount(split.labels), torch.full((10,), 1000))
    assert split.classes[9] == "Ankle boot"
