"""load_split / download_split: embedded MNIST, local layouts, offline errors, file:// mirrors."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import shutil
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from vqkit.data import (
    DATASETS,
    INFO,
    FileInfo,
    IdxError,
    Split,
    download_split,
    load_split,
    sources,
)
from vqkit.errors import VqkitError

EMBEDDED = Path(sources.__file__).parent / "mnist"
# Published MNIST class counts (independent of this loader).
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def idx_bytes(code: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return struct.pack(">HBB", 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + payload


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may see a real Debian install, the user's cache, or the network."""
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    monkeypatch.setenv("VQKIT_DATA", str(tmp_path / "cache"))

    def offline(url: str):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(sources, "_open_url", offline)


# --- embedded MNIST ----------------------------------------------------------------------


def test_embedded_mnist_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # must not depend on the working directory
    s = load_split("mnist", "train", download=False)
    assert isinstance(s, Split) and len(s) == 60000
    assert s.images.shape == (60000, 28, 28) and s.images.dtype == torch.uint8
    assert s.labels.shape == (60000,) and s.labels.dtype == torch.int64
    assert int(s.labels[0]) == 5
    assert torch.bincount(s.labels, minlength=10).tolist() == TRAIN_COUNTS
    assert s.classes == tuple("0123456789")


def test_embedded_mnist_test_and_fresh_tensors() -> None:
    a = load_split("mnist", "test")
    assert a.images.shape == (10000, 28, 28)
    assert torch.bincount(a.labels, minlength=10).tolist() == TEST_COUNTS
    a.images.zero_()  # mutating a result must not corrupt the in-process cache
    b = load_split("mnist", "test")
    assert int(b.images.sum()) > 0


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(VqkitError, match="Unknown dataset 'cifar'.*mnist, fashion-mnist, idx"):
        load_split("cifar", "train")
    with pytest.raises(VqkitError, match="split"):
        load_split("mnist", "valid")  # type: ignore[arg-type]
    assert DATASETS == ("mnist", "fashion-mnist", "idx")
    assert INFO["fashion-mnist"].classes[0] == "T-shirt/top"
    assert INFO["fashion-mnist"].classes[-1] == "Ankle boot"


# --- explicit data_dir -------------------------------------------------------------------


def test_torchvision_layout(tmp_path: Path) -> None:
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(EMBEDDED / name, raw / name)
    s = load_split("mnist", "test", data_dir=tmp_path / "root", download=False)
    assert torch.equal(s.labels, load_split("mnist", "test").labels)
    # The folder that visibly holds raw/ is accepted too, not only torchvision's root.
    s = load_split("mnist", "test", data_dir=tmp_path / "root" / "MNIST", download=False)
    assert torch.equal(s.labels, load_split("mnist", "test").labels)


def test_flat_uncompressed_folder(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (flat / name).write_bytes(gzip.decompress((EMBEDDED / f"{name}.gz").read_bytes()))
    s = load_split("mnist", "test", data_dir=str(flat))
    ref = load_split("mnist", "test")
    assert torch.equal(s.images, ref.images) and torch.equal(s.labels, ref.labels)


def test_data_dir_without_files_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(VqkitError, match=f"{tmp_path}.*no mnist test files"):
        load_split("mnist", "test", data_dir=tmp_path)  # no silent fallback to embedded


def test_data_dir_with_half_a_split_is_an_error(tmp_path: Path) -> None:
    shutil.copy(EMBEDDED / "t10k-images-idx3-ubyte.gz", tmp_path)
    with pytest.raises(VqkitError, match="t10k-labels-idx1-ubyte.*missing"):
        load_split("mnist", "test", data_dir=tmp_path)


def test_modified_known_file_fails_checksum(tmp_path: Path) -> None:
    content = bytearray(gzip.decompress((EMBEDDED / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    content[-1] = (content[-1] + 1) % 10  # still a valid IDX file, but not the real one
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(bytes(content))
    shutil.copy(EMBEDDED / "t10k-images-idx3-ubyte.gz", tmp_path)
    with pytest.raises(IdxError, match="t10k-labels-idx1-ubyte' fails its checksum") as caught:
        load_split("mnist", "test", data_dir=tmp_path)
    # Whose mistake it most often is: one's own files read as MNIST's (no --dataset idx).
    assert str(caught.value).endswith(
        f"; if '{tmp_path}' holds images of your own, add --dataset idx (dataset='idx' in Python)."
    )


# --- a tiny fake Fashion-MNIST with known checksums --------------------------------------


def _fake_files(folder: Path, n_images: int = 3, n_labels: int = 3, side: int = 28) -> dict:
    """Write tiny .gz split files; return {name: (decompressed bytes, gz bytes)}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n_images, side, 28), dtype=np.uint8)
    labels = np.arange(n_labels, dtype=np.uint8) % 10
    out = {}
    for name, content in (
        ("t10k-images-idx3-ubyte", idx_bytes(0x08, images.shape, images.tobytes())),
        ("t10k-labels-idx1-ubyte", idx_bytes(0x08, labels.shape, labels.tobytes())),
    ):
        gz = gzip.compress(content)
        (folder / f"{name}.gz").write_bytes(gz)
        out[name] = (content, gz)
    return out


@pytest.fixture
def fake_fashion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fashion-MNIST metadata pointing at a file:// mirror of tiny files; returns the mirror."""
    mirror = tmp_path / "mirror"
    files = _fake_files(mirror)
    infos = tuple(
        FileInfo(name, hashlib.sha256(c).hexdigest(), len(c), hashlib.md5(gz).hexdigest())
        for name, (c, gz) in files.items()
    )
    info = dataclasses.replace(
        INFO["fashion-mnist"],
        files={"test": infos, "train": INFO["fashion-mnist"].files["train"]},
        mirrors=(mirror.as_uri() + "/",),
    )
    monkeypatch.setitem(INFO, "fashion-mnist", info)
    monkeypatch.setattr(sources, "_open_url", sources.urllib.request.urlopen)
    return mirror


def test_fashion_offline_error_names_the_fix() -> None:
    for download in (False, True):  # disabled, and enabled but the network fails
        with pytest.raises(VqkitError) as info:
            load_split("fashion-mnist", "train", download=download)
        msg = str(info.value)
        assert "apt-get install -y dataset-fashion-mnist" in msg and "--data-dir" in msg
        assert "\n" not in msg


def test_fashion_from_debian_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_fashion
) -> None:
    debian = tmp_path / "debian"
    shutil.copytree(fake_fashion, debian)
    shutil.rmtree(fake_fashion)  # prove no download happens
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", debian)
    s = load_split("fashion-mnist", "test", download=False)
    assert s.images.shape == (3, 28, 28) and s.labels.tolist() == [0, 1, 2]
    assert s.classes[1] == "Trouser"


def test_download_from_file_mirror(tmp_path: Path, fake_fashion: Path) -> None:
    s = load_split("fashion-mnist", "test")
    assert s.labels.tolist() == [0, 1, 2]
    cache = tmp_path / "cache" / "fashion-mnist"
    assert sorted(p.name for p in cache.iterdir()) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    shutil.rmtree(fake_fashion)  # the cache now serves offline loads
    assert len(load_split("fashion-mnist", "test", download=False)) == 3


@pytest.mark.parametrize("download", ["no", 0, None])
def test_download_must_be_true_or_false(fake_fashion: Path, download) -> None:
    # "no" is truthy: it would have downloaded when no local copy was there.
    with pytest.raises(VqkitError, match=f"download must be True or False, not {download!r}"):
        load_split("fashion-mnist", "test", download=download)
    assert len(load_split("fashion-mnist", "test", download=np.True_)) == 3  # NumPy's too


def test_download_falls_back_to_second_mirror(tmp_path: Path, fake_fashion: Path) -> None:
    dest = tmp_path / "dl"
    paths = download_split(
        "fashion-mnist",
        "test",
        dest,
        mirrors=[(tmp_path / "empty").as_uri(), fake_fashion.as_uri()],
    )
    assert [p.name for p in paths] == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert paths[1].read_bytes() == (fake_fashion / "t10k-labels-idx1-ubyte.gz").read_bytes()


def test_download_with_bad_md5_is_refused(tmp_path: Path, fake_fashion: Path) -> None:
    gz = fake_fashion / "t10k-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes() + b"\x00")  # same content plus a byte: different MD5
    with pytest.raises(VqkitError, match="MD5"):
        load_split("fashion-mnist", "test")
    cache = tmp_path / "cache" / "fashion-mnist"
    assert list(cache.iterdir()) == []  # no partial or temp file left behind


# --- cross-file checks -------------------------------------------------------------------


def _load_fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **shape) -> Split:
    folder = tmp_path / "fake"
    files = _fake_files(folder, **shape)
    infos = tuple(
        FileInfo(name, hashlib.sha256(c).hexdigest(), len(c), "") for name, (c, _) in files.items()
    )
    monkeypatch.setitem(INFO, "mnist", dataclasses.replace(INFO["mnist"], files={"test": infos}))
    return load_split("mnist", "test", data_dir=folder)


def test_count_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(VqkitError, match="3 images but .*t10k-labels-idx1-ubyte.gz holds 2 labels"):
        _load_fake(tmp_path, monkeypatch, n_labels=2)


def test_wrong_image_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(VqkitError, match=r"t10k-images-idx3-ubyte.gz holds shape \(3, 27, 28\)"):
        _load_fake(tmp_path, monkeypatch, side=27)


def test_label_out_of_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(INFO, "mnist", dataclasses.replace(INFO["mnist"], classes=("a", "b")))
    with pytest.raises(VqkitError, match="label 2, outside 0..1"):
        _load_fake(tmp_path, monkeypatch)


def test_a_file_replaced_by_one_of_the_same_size_is_read_again(tmp_path: Path) -> None:
    # Verified arrays are cached by path, size and modification time; a file rewritten in
    # place with other pixels of the same size must not be served from that cache.
    folder = tmp_path / "own"
    folder.mkdir()
    labels, blank = idx_bytes(0x08, (2,), bytes([0, 1])), idx_bytes(0x08, (2, 28, 28), bytes(1568))
    for stem in ("train", "t10k"):
        (folder / f"{stem}-labels-idx1-ubyte").write_bytes(labels)
        (folder / f"{stem}-images-idx3-ubyte").write_bytes(blank)
    first = load_split("idx", "train", data_dir=folder)
    assert int(first.images.sum()) == 0
    images = folder / "train-images-idx3-ubyte"
    images.write_bytes(idx_bytes(0x08, (2, 28, 28), bytes([7]) * (2 * 784)))
    later = images.stat().st_mtime_ns + 10**9  # a clock step the file system surely records
    os.utime(images, ns=(later, later))
    again = load_split("idx", "train", data_dir=folder)
    assert torch.equal(again.images, torch.full((2, 28, 28), 7, dtype=torch.uint8))


@pytest.fixture
def two_good_mirrors(tmp_path, monkeypatch):
    """Fashion-MNIST metadata for tiny files served, identically, by two file:// mirrors."""
    labels = idx_bytes(0x08, (3,), bytes([0, 1, 2]))
    images = idx_bytes(0x08, (3, 28, 28), bytes(range(256)) * 9 + bytes(48))
    infos = []
    mirrors = []
    for mirror_name in ("first", "second"):
        mirror = tmp_path / mirror_name
        mirror.mkdir()
        mirrors.append(mirror)
    for name, content in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        gz = gzip.compress(content, mtime=0)
        for mirror in mirrors:
            (mirror / f"{name}.gz").write_bytes(gz)
        infos.append(
            FileInfo(
                name, hashlib.sha256(content).hexdigest(), len(content), hashlib.md5(gz).hexdigest()
            )
        )
    info = dataclasses.replace(
        INFO["fashion-mnist"],
        files={"test": tuple(infos), "train": INFO["fashion-mnist"].files["train"]},
        mirrors=tuple(m.as_uri() + "/" for m in mirrors),
    )
    monkeypatch.setitem(INFO, "fashion-mnist", info)
    monkeypatch.setenv("VQKIT_DATA", str(tmp_path / "cache"))
    opened = []

    def open_url(url):
        opened.append(url)
        return sources.urllib.request.urlopen(url)

    monkeypatch.setattr(sources, "_open_url", open_url)
    return mirrors, opened


def test_mirrors_are_tried_in_their_listed_order(tmp_path, two_good_mirrors):
    # The first mirror that works serves every file; a later one is only a fallback.
    mirrors, opened = two_good_mirrors
    sources.download_split("fashion-mnist", "test", tmp_path / "dl")
    assert opened == [
        mirrors[0].as_uri() + "/t10k-images-idx3-ubyte.gz",
        mirrors[0].as_uri() + "/t10k-labels-idx1-ubyte.gz",
    ]


def test_a_download_is_synced_before_it_is_renamed_into_place(
    tmp_path, two_good_mirrors, monkeypatch
):
    # As atomic_open: the downloaded bytes reach the disk before the rename publishes the file,
    # so a power cut cannot leave an empty cached file under the final name.
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_size))
        real_fsync(fd)

    def replace(source, destination):
        events.append(("replace", Path(destination).name))
        real_replace(source, destination)

    monkeypatch.setattr(sources.os, "fsync", fsync)
    monkeypatch.setattr(sources.os, "replace", replace)
    images, labels = sources.download_split("fashion-mnist", "test", tmp_path / "dl")
    assert events == [
        ("fsync", images.stat().st_size),
        ("replace", images.name),
        ("fsync", labels.stat().st_size),
        ("replace", labels.name),
    ]
