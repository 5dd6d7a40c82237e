"""Code files and input images: round trips and every kind of bad file, as one clear error."""

from __future__ import annotations

import io
import os
import pickle
import zlib
from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from vqkit.codes_io import load_codes, save_codes, write_images
from vqkit.data import Split
from vqkit.errors import VqkitError
from vqkit.inputs import load_png, resolve_image, resolve_images

K, GRID = 16, 7


def test_codes_round_trip(tmp_path):
    codes = torch.randint(0, K, (5, GRID, GRID), generator=torch.Generator().manual_seed(0))
    path = save_codes(codes, tmp_path / "c.npy")
    raw = np.load(path, allow_pickle=False)
    assert raw.dtype == np.int64 and raw.shape == (5, GRID, GRID)
    assert torch.equal(load_codes(path, K, GRID), codes)


def test_codes_that_are_not_integers_are_refused_before_saving(tmp_path):
    # save_codes stored a float 3.7 as code 3 without a word.
    for codes in (np.full((1, GRID, GRID), 3.7), torch.full((1, GRID, GRID), 3.0)):
        with pytest.raises(VqkitError, match="The code grids to save must hold integers, not"):
            save_codes(codes, tmp_path / "c.npy")
    assert not (tmp_path / "c.npy").exists()
    saved = save_codes(np.full((1, GRID, GRID), 3, dtype=np.uint8), tmp_path / "c.npy")
    assert np.array_equal(np.load(saved), np.full((1, GRID, GRID), 3))
    # NumPy arrays torch.as_tensor does not take as they are: reversed and big-endian.
    codes = np.arange(2 * GRID * GRID).reshape(2, GRID, GRID) % K
    for layout in (np.flip(codes, 0), codes.astype(">i4")):
        assert np.array_equal(np.load(save_codes(layout, tmp_path / "c.npy")), layout)


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.int16, np.uint64])
def test_any_integer_dtype_and_single_grid(tmp_path, dtype):
    grid = (np.arange(GRID * GRID) % K).reshape(GRID, GRID).astype(dtype)
    np.save(tmp_path / "one.npy", grid)
    loaded = load_codes(tmp_path / "one.npy", K, GRID)
    assert loaded.shape == (1, GRID, GRID) and loaded.dtype == torch.int64
    assert loaded[0].tolist() == grid.astype(np.int64).tolist()


BAD_ARRAYS = {
    "shape": (np.zeros((2, 8, 7), dtype=np.int64), "shape"),
    "flat": (np.zeros(49, dtype=np.int64), "shape"),
    "empty": (np.zeros((0, 7, 7), dtype=np.int64), "shape"),
    "rank4": (np.zeros((1, 1, 7, 7), dtype=np.int64), "shape"),
    "float": (np.zeros((2, 7, 7)), "integers"),
    "bool": (np.zeros((2, 7, 7), dtype=bool), "integers"),
    "negative": (np.full((1, 7, 7), -1), "include -1"),
    "too_big": (np.full((1, 7, 7), K), f"include {K}"),
}


@pytest.mark.parametrize("name", sorted(BAD_ARRAYS))
def test_bad_arrays_are_refused(tmp_path, name):
    array, message = BAD_ARRAYS[name]
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(VqkitError, match=message):
        load_codes(tmp_path / "bad.npy", K, GRID)


def test_bad_files_are_refused(tmp_path):
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "archive.npz", codes=np.zeros((7, 7), dtype=np.int64))
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps(np.zeros((7, 7), dtype=np.int64)))
    good = io.BytesIO()
    np.save(good, np.zeros((4, 7, 7), dtype=np.int64))
    (tmp_path / "cut.npy").write_bytes(good.getvalue()[:150])
    # A header promising 10^12 grids over 800 bytes: np.load would first try to allocate them.
    header = good.getvalue()[:128].replace(
        b"(4, 7, 7), }" + b" " * 12, b"(1%s, 7, 7), }" % (b"0" * 12)
    )
    assert len(header) == 128
    (tmp_path / "lying.npy").write_bytes(header + bytes(800))
    cases = {
        pickled: "pickled",
        tmp_path / "archive.npz": "not a .npy",
        tmp_path / "raw.pkl": "not a .npy",
        tmp_path / "cut.npy": "damaged",
        tmp_path / "lying.npy": "damaged: its header promises 392,000,000,000,000 bytes of data",
        tmp_path / "missing.npy": "does not exist",
        tmp_path: "folder",
    }
    for path, message in cases.items():
        with pytest.raises(VqkitError, match=message):
            load_codes(path, K, GRID)


def test_write_images_npy_and_png(tmp_path):
    images = torch.rand(3, 1, 28, 28) * 1.2 - 0.1
    array = np.load(write_images(images, tmp_path / "x.npy"), allow_pickle=False)
    assert array.dtype == np.float32 and array.shape == (3, 28, 28)
    assert np.array_equal(array, images[:, 0].clamp(0, 1).numpy())
    with pytest.raises(VqkitError, match="must end in .png or .npy"):
        write_images(images, tmp_path / "x.jpg")


def save_image(path, pixels: np.ndarray, mode: str, fmt: str = "PNG"):
    Image.fromarray(pixels).convert(mode).save(path, format=fmt)
    return path


@pytest.fixture
def digit_pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "1"])
def test_png_modes_convert_to_grayscale(tmp_path, digit_pixels, mode):
    path = save_image(tmp_path / f"{mode}.png", digit_pixels, mode)
    with Image.open(path) as image:
        expected = np.asarray(image.convert("RGBA" if mode == "P" else mode).convert("L"))
    loaded = load_png(path)
    assert loaded.dtype == torch.uint8 and loaded.shape == (28, 28)
    assert np.array_equal(loaded.numpy(), expected)
    if mode in ("L", "LA", "RGB", "RGBA"):  # lossless for gray content
        assert np.array_equal(loaded.numpy(), digit_pixels)


def ink_mask() -> np.ndarray:
    """A digit's ink coverage, 0 (paper) to 255 (ink), with soft edges."""
    rows, cols = np.mgrid[0:28, 0:28]
    distance = np.hypot(rows - 14, cols - 14)
    return np.clip((9 - abs(distance - 7)) * 64, 0, 255).astype(np.uint8)


def rgba(red_green_blue: np.ndarray | int, alpha: np.ndarray) -> np.ndarray:
    colour = np.broadcast_to(np.asarray(red_green_blue, dtype=np.uint8), alpha.shape)
    return np.stack([colour, colour, colour, alpha], axis=-1)


def premultiplied(gray: int, alpha: np.ndarray) -> np.ndarray:
    """RGBA as an exporter keeping premultiplied colour writes it: a faint pixel's colour is
    rounded to what its alpha can carry (colour x alpha / 255, back to 8 bits, divided again)."""
    kept = np.rint(gray * alpha.astype(np.float64) / 255)
    shown = np.where(alpha > 0, np.rint(kept * 255 / np.maximum(alpha, 1)), 0)
    return rgba(np.clip(shown, 0, 255).astype(np.uint8), alpha)


def test_ink_of_one_colour_on_a_transparent_canvas_is_read_as_light_ink_on_black(tmp_path):
    # Transparency used to be dropped: black ink on a transparent canvas came out as an empty
    # black square, white ink (or white paper made transparent) as an empty white one.
    ink = ink_mask()
    assert ((ink > 0) & (ink < 255)).any() and ink.max() == 255 and (ink == 0).any()  # soft edges
    paper_made_transparent = np.where(ink > 0, 0, 255).astype(np.uint8)  # black ink, white paper
    navy = np.stack([np.zeros_like(ink), np.zeros_like(ink), np.full_like(ink, 128), ink], -1)
    stray = rgba(0, ink)
    stray[14, 14, :3] = 3  # one pixel of the brush slightly off black
    assert ink[14, 14] > 0
    drawings = {
        "black ink": rgba(0, ink),
        "white ink": rgba(255, ink),
        "white paper": rgba(paper_made_transparent, ink),
        "#222 ink": rgba(0x22, ink),  # a design tool's black
        "navy ink": navy,
        "black ink with a stray pixel": stray,
        "#222 ink, stored premultiplied": premultiplied(0x22, ink),  # a browser canvas's PNG
    }
    for name, pixels in drawings.items():
        path = tmp_path / f"{name}.png"
        Image.fromarray(pixels, "RGBA").save(path)
        assert np.array_equal(load_png(path).numpy(), ink), name
    gray_alpha = tmp_path / "la.png"
    Image.fromarray(np.stack([np.zeros_like(ink), ink], axis=-1), "LA").save(gray_alpha)
    assert np.array_equal(load_png(gray_alpha).numpy(), ink)


def test_colour_keys_and_palettes_with_a_transparent_entry_are_read_the_same_way(tmp_path):
    stroke = ink_mask() > 127
    key = tmp_path / "key.png"  # grayscale, white paper marked transparent by a tRNS colour key
    Image.fromarray(np.where(stroke, 0, 255).astype(np.uint8), "L").save(key, transparency=255)
    palette = Image.fromarray(stroke.astype(np.uint8), "P")  # entry 0 white paper, 1 black ink
    palette.putpalette([255, 255, 255, 0, 0, 0])
    palette.save(tmp_path / "palette.png", transparency=0)
    for path in (key, tmp_path / "palette.png"):
        assert np.array_equal(load_png(path).numpy(), stroke * np.uint8(255)), path.name


def test_partly_transparent_gray_is_laid_over_black(tmp_path, digit_pixels):
    alpha = np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8)
    path = tmp_path / "over.png"
    Image.fromarray(rgba(digit_pixels, alpha), "RGBA").save(path)
    expected = np.floor(digit_pixels.astype(np.float64) * alpha / 255 + 0.5).astype(np.uint8)
    assert np.array_equal(load_png(path).numpy(), expected)


def test_sixteen_bit_grayscale_is_scaled_to_eight_bits(tmp_path, digit_pixels):
    path = tmp_path / "16.png"
    Image.fromarray(digit_pixels.astype(np.uint16) * 257).save(path)  # 255 -> 65535
    with Image.open(path) as image:
        assert image.mode.startswith("I")  # stored with 16 bits per pixel
    assert np.array_equal(load_png(path).numpy(), digit_pixels)
    # With white paper marked transparent by a colour key, as an 8-bit image would be.
    stroke = ink_mask() > 127
    keyed = tmp_path / "16-key.png"
    Image.fromarray(np.where(stroke, 0, 65535).astype(np.uint16)).save(keyed)
    # The key's tRNS chunk is put in by hand, after the 33 bytes of signature and header:
    # Pillow before 10.3 refuses to save a colour key for a 16-bit image (the bytes are those
    # it writes since).
    data = keyed.read_bytes()
    key = b"tRNS" + (65535).to_bytes(2, "big")
    trns = (2).to_bytes(4, "big") + key + zlib.crc32(key).to_bytes(4, "big")
    keyed.write_bytes(data[:33] + trns + data[33:])
    with Image.open(keyed) as image:
        assert image.mode.startswith("I") and image.info["transparency"] == 65535
    assert np.array_equal(load_png(keyed).numpy(), stroke * np.uint8(255))


def test_bad_pngs(tmp_path, digit_pixels):
    big = save_image(tmp_path / "big.png", np.zeros((32, 30), dtype=np.uint8), "L")
    jpeg = save_image(tmp_path / "d.jpg", digit_pixels, "L", fmt="JPEG")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"definitely not an image")
    good = save_image(tmp_path / "good.png", digit_pixels, "L")
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:60])
    # The chunk after the 33-byte signature and header claims a wrong length, so the parser
    # reads data as the next chunk's name (Pillow raises SyntaxError, not OSError).
    wrong_length = tmp_path / "length.png"
    data = bytearray(good.read_bytes())
    data[36] ^= 0x06
    wrong_length.write_bytes(bytes(data))
    cases = {
        big: "30×32 pixels; the model needs 28×28",
        jpeg: "not a PNG",
        junk: "not an image file",
        cut: "damaged or truncated",
        wrong_length: "damaged or truncated",
        tmp_path / "absent.png": "is not an image index",
        tmp_path: "is a folder; name its PNG files one by one",
    }
    for path, message in cases.items():
        with pytest.raises(VqkitError, match=message):
            load_png(path)


@pytest.fixture
def fake_splits() -> Callable[[str], Split]:
    """Test image i is filled with the value i (10 images), training image i with 100 + i (20)."""

    def split(name: str) -> Split:
        count, first = (10, 0) if name == "test" else (20, 100)
        images = (first + torch.arange(count, dtype=torch.uint8)).view(count, 1, 1)
        labels = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6, 5, 3] * (count // 10))
        names = tuple(str(i) for i in range(10))
        return Split("mnist", name, images.expand(count, 28, 28).clone(), labels, names)

    return split


def test_resolve_references(tmp_path, fake_splits, digit_pixels):
    png = save_image(tmp_path / "x.png", digit_pixels, "L")
    references = ["7", "test:2-4", "digit:5", "digit:1", "train:13", "train:18-19", str(png)]
    found = resolve_images(references, fake_splits)
    assert found.names == [
        "test:7", "test:2", "test:3", "test:4", "test:4", "test:1", "train:13", "train:18",
        "train:19", str(png),
    ]  # fmt: skip
    first_pixels = [int(image[0, 0]) for image in found.images[:-1]]
    assert first_pixels == [7, 2, 3, 4, 4, 1, 113, 118, 119]  # each image holds its index
    assert np.array_equal(found.images[-1].numpy(), digit_pixels)
    assert int(resolve_image("test:9", fake_splits)[0, 0]) == 9
    assert int(resolve_image("train:10", fake_splits)[0, 0]) == 110  # the tutorial's second


def test_a_range_of_one_index_names_that_one_image(fake_splits):
    # test:A-B is inclusive, so A-A is one image, not an empty range.
    found = resolve_images(["test:6-6"], fake_splits)
    assert found.names == ["test:6"] and int(found.images[0, 0, 0]) == 6


def test_png_and_test_inputs_never_load_a_split_they_do_not_name(tmp_path, digit_pixels):
    png = save_image(tmp_path / "x.png", digit_pixels, "L")
    loaded: list[str] = []

    def splits(name: str) -> Split:
        loaded.append(name)
        images, labels = torch.zeros(3, 28, 28, dtype=torch.uint8), torch.zeros(3, dtype=torch.long)
        return Split("mnist", name, images, labels, tuple(str(i) for i in range(10)))

    assert resolve_images([str(png)], splits).images.shape == (1, 28, 28)
    assert loaded == []
    resolve_images(["2", "test:0-1", "digit:0"], splits)
    assert set(loaded) == {"test"}


@pytest.mark.parametrize(
    "reference, message",
    [
        ("10", "Test index 10 is outside the test set \\(0 to 9\\)"),
        ("train:20", "Train index 20 is outside the training set \\(0 to 19\\)"),
        ("test:5-3", "is empty"),
        ("test:8-10", "outside the test set"),
        ("train:15-25", "outside the training set"),
        ("train:", "is not an image index"),
        ("digit:10", "names no class"),
        ("digit:7", "no image labelled 7"),
        ("test:0-1", "names 2 images"),
        # Other scripts' digits and a trailing newline were read as index 3 and test:3.
        ("\u0663", "is not an image index"),
        ("test:3\n", "is not an image index"),
        ("digit:\u0663", "is not an image index"),
    ],
)
def test_bad_references(fake_splits, reference, message):
    with pytest.raises(VqkitError, match=message):
        resolve_image(reference, fake_splits)


def test_a_missing_file_is_refused_with_the_references_the_caller_takes(fake_splits, tmp_path):
    # interpolate takes one image: its sentence used to offer test:A-B ranges, then refuse one.
    absent = str(tmp_path / "absent.png")
    one = r"is not an image index \(17, test:17, train:17\), digit:D or an existing PNG file"
    with pytest.raises(VqkitError, match=one):
        resolve_image(absent, fake_splits)
    with pytest.raises(VqkitError, match=r"a range \(test:A-B, train:A-B\), digit:D or"):
        resolve_images([absent], fake_splits)


def test_a_npy_header_claiming_fewer_grids_than_the_file_holds_is_refused(tmp_path):
    # A header damaged to say (1, 7, 7) over four grids' bytes would otherwise load silently
    # as one grid, dropping three.
    buffer = io.BytesIO()
    np.save(buffer, np.ones((4, 7, 7), dtype=np.int64))
    data = buffer.getvalue()
    assert b"(4, 7, 7)" in data
    (tmp_path / "c.npy").write_bytes(data.replace(b"(4, 7, 7)", b"(1, 7, 7)", 1))
    with pytest.raises(VqkitError, match="damaged"):
        load_codes(tmp_path / "c.npy", 8, 7)


def test_a_pipe_is_refused_in_a_sentence_not_waited_on(tmp_path):
    # A FIFO with no writer made decode wait forever; one with a writer (a shell's
    # <(cat codes.npy)) was called damaged, as its size cannot be measured.
    fifo = tmp_path / "codes.npy"
    os.mkfifo(fifo)
    with pytest.raises(VqkitError, match="is a pipe or device, not a file; save the codes"):
        load_codes(fifo, K, GRID)
