"""End to end: sample, interpolate, encode, decode and codebook on a small trained run."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqkit import codebook_view, runfiles
from vqkit.cli import main
from vqkit.codebook_view import (
    ATLAS_SCALE,
    CODEMAP_IMAGES,
    CODEMAP_SCALE,
    DPI,
    USAGE_FIGSIZE,
    tile_origin,
)
from vqkit.data import load_split
from vqkit.generate import strategies
from vqkit.images import tile, to_uint8
from vqkit.model import VQVAE
from vqkit.provenance import MADE_WITH_KEY

PNG_SCALE = 2  # vqkit.images.save_grid's default enlargement
SRC = Path(__file__).resolve().parents[1] / "src"


def png_size(count: int, columns: int, scale: int = PNG_SCALE) -> tuple[int, int]:
    """(width, height) of a PNG grid of ``count`` 28×28 images: 2-pixel gaps and borders."""
    rows = max(1, -(-count // columns))
    return (columns * 30 + 2) * scale, (rows * 30 + 2) * scale


def png_pixels(path: Path, scale: int = PNG_SCALE) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))[::scale, ::scale]


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def run_dir(usage_run) -> Path:
    return usage_run[0]


@pytest.fixture(scope="module")
def model(run_dir) -> VQVAE:
    return VQVAE.from_run(run_dir)


@pytest.fixture(scope="module")
def test_images() -> torch.Tensor:
    return load_split("mnist", "test").images


def test_sample_png_npy_and_codes(run_dir, model, tmp_path, capsys):
    png = tmp_path / "s.png"
    code, out, _ = run_cli(
        ["sample", run_dir, "--strategy", "random", "--n", 10, "--seed", 5, "--out", png], capsys
    )
    assert code == 0 and str(png) in out
    assert Image.open(png).size == png_size(10, 8)

    images, codes = tmp_path / "s.npy", tmp_path / "c.npy"
    args = ["sample", run_dir, "--strategy", "used", "--weighted", "--n", 6]
    code, out, _ = run_cli([*args, "--out", images, "--codes-out", codes], capsys)
    assert code == 0
    # How many codes it drew from, counted here over the training images (the tutorial's line).
    train_codes = model.encode(load_split("mnist", "train").images)
    used = len(torch.unique(train_codes))
    assert f"drew by their frequency from the {used} codes of {model.num_codes} that" in out
    array = np.load(images, allow_pickle=False)
    grids = np.load(codes, allow_pickle=False)
    assert array.shape == (6, 28, 28) and array.dtype == np.float32
    assert array.min() >= 0 and array.max() <= 1
    assert grids.shape == (6, 7, 7) and grids.dtype == np.int64
    with torch.no_grad():
        decoded = model.decode(torch.from_numpy(grids))[:, 0].numpy()
    assert np.allclose(array, decoded, atol=1e-6)  # the images are the decoded codes


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--strategy", "random", "--weighted"], "--weighted does not apply to the 'random'"),
        (["--strategy", "random", "--digit", "3"], "--digit does not apply to the 'random'"),
        (["--strategy", "used", "--top-k", "3"], "--top-k does not apply to the 'used'"),
        (["--strategy", "used", "--temperature", "0.5"], "--temperature does not apply"),
    ],
)
def test_sample_refuses_options_a_strategy_does_not_take(run_dir, tmp_path, capsys, flags, message):
    code, _, err = run_cli(["sample", run_dir, *flags, "--out", tmp_path / "x.png"], capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_sample_strategy_choices_come_from_the_registry(run_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["sample", str(run_dir), "--strategy", "nope", "--out", str(tmp_path / "x.png")])
    choices = ", ".join(f"'{name}'" for name in strategies())
    assert "random" in choices and f"choose from {choices}" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["crossfade", "wipe", "random-mask", "latent"])
def test_interpolate(run_dir, model, tmp_path, capsys, test_images, mode):
    out = tmp_path / f"{mode}.png"
    code, _, _ = run_cli(
        [
            "interpolate",
            run_dir,
            "--from",
            "digit:3",
            "--to",
            1,
            "--steps",
            5,
            "--mode",
            mode,
            "--out",
            out,
        ],
        capsys,
    )
    assert code == 0
    assert Image.open(out).size == png_size(7, 7)
    # The strip's ends are the originals: digit:3 is the first test image labelled 3.
    first_three = int(torch.nonzero(load_split("mnist", "test").labels == 3)[0])
    pixels = png_pixels(out)
    assert np.array_equal(pixels[2:30, 2:30], test_images[first_three].numpy())
    assert np.array_equal(pixels[2:30, 2 + 6 * 30 : 30 + 6 * 30], test_images[1].numpy())


def test_interpolate_writes_npy_frames_and_code_grids(run_dir, model, tmp_path, capsys):
    png, frames, walk = tmp_path / "s.png", tmp_path / "f.npy", tmp_path / "w.npy"
    base = ["interpolate", run_dir, "--from", "digit:3", "--to", 1, "--steps", 5]
    assert run_cli([*base, "--out", png], capsys)[0] == 0
    code, out, _ = run_cli([*base, "--out", frames, "--codes-out", walk], capsys)
    assert code == 0 and f"wrote {walk}" in out
    array, grids = np.load(frames, allow_pickle=False), np.load(walk, allow_pickle=False)
    assert array.shape == (7, 28, 28) and array.dtype == np.float32
    assert grids.shape == (5, 7, 7) and grids.dtype == np.int64
    # The same images as the PNG's strip (rounded as the PNG rounds), the steps decoded from
    # the grids, and the walk from A's codes to B's.
    pixels = png_pixels(png)
    for i, image in enumerate(to_uint8(array)):
        assert np.array_equal(pixels[2:30, 2 + 30 * i : 30 + 30 * i], image)
    with torch.no_grad():
        decoded = model.decode(torch.from_numpy(grids))[:, 0].numpy()
    assert np.allclose(array[1:-1], decoded, atol=1e-6)
    ends = model.encode(torch.from_numpy(np.rint(array[[0, -1]] * 255).astype(np.uint8)))
    assert np.array_equal(grids[[0, -1]], ends.numpy())


def test_interpolate_from_png_equals_from_index(run_dir, tmp_path, capsys, test_images):
    mine = tmp_path / "mine.png"
    Image.fromarray(test_images[4].numpy()).convert("RGB").save(mine)
    outs = []
    for source in (mine, 4):
        outs.append(tmp_path / f"from-{Path(str(source)).stem}.png")
        args = ["interpolate", run_dir, "--from", source, "--to", "digit:7", "--out", outs[-1]]
        assert run_cli(args, capsys)[0] == 0
    assert np.array_equal(png_pixels(outs[0]), png_pixels(outs[1]))


def test_interpolate_bad_inputs(run_dir, tmp_path, capsys):
    wrong = tmp_path / "wrong.png"
    Image.new("L", (32, 32)).save(wrong)
    base = ["interpolate", run_dir, "--to", "0", "--out", tmp_path / "x.png"]
    for source, message in [(wrong, "32×32"), ("99999", "outside the test set"), ("a.txt", "")]:
        code, _, err = run_cli([*base, "--from", source], capsys)
        assert code == 2 and message in err and err.count("\n") == 1


def test_encode_decode_round_trip_equals_reconstruct(run_dir, tmp_path, capsys, test_images):
    recon, codes, decoded = tmp_path / "r.png", tmp_path / "c.npy", tmp_path / "d.npy"
    assert run_cli(["reconstruct", run_dir, "--n", 8, "--start", 3, "--out", recon], capsys)[0] == 0
    assert run_cli(["encode", run_dir, "test:3-10", "--out", codes], capsys)[0] == 0
    assert np.load(codes).shape == (8, 7, 7)
    assert run_cli(["decode", run_dir, codes, "--out", decoded], capsys)[0] == 0
    originals = test_images[3:11].numpy()
    expected = tile(np.concatenate([originals, to_uint8(np.load(decoded))]), 8)
    assert np.array_equal(png_pixels(recon), expected)  # same pixels as reconstruct's


def test_reconstruct_writes_the_reconstructions_as_npy(run_dir, model, tmp_path, capsys):
    out = tmp_path / "r.npy"
    argv = ["reconstruct", run_dir, "--n", 300, "--start", 5, "--out", out]
    assert run_cli(argv, capsys)[0] == 0
    array = np.load(out)
    images = load_split("mnist", "test").images[5:305]
    with torch.no_grad():
        expected = model(images).reconstruction[:, 0].clamp(0, 1).numpy()
    assert array.dtype == np.float32 and array.shape == (300, 28, 28)
    np.testing.assert_allclose(array, expected, atol=1e-5)


def test_training_images_by_index_in_encode_reconstruct_and_interpolate(run_dir, tmp_path, capsys):
    # The tutorial reconstructs and interpolates training images: train:N names them.
    train = load_split("mnist", "train").images
    recon, codes, decoded = tmp_path / "r.png", tmp_path / "c.npy", tmp_path / "d.npy"
    args = ["reconstruct", run_dir, "--split", "train", "--n", 4, "--start", 9, "--out", recon]
    assert run_cli(args, capsys)[0] == 0
    assert run_cli(["encode", run_dir, "train:9-12", "--out", codes], capsys)[0] == 0
    assert run_cli(["decode", run_dir, codes, "--out", decoded], capsys)[0] == 0
    expected = tile(np.concatenate([train[9:13].numpy(), to_uint8(np.load(decoded))]), 4)
    assert np.array_equal(png_pixels(recon), expected)
    strip = tmp_path / "i.png"
    args = ["interpolate", run_dir, "--from", "train:0", "--to", "train:10", "--out", strip]
    assert run_cli(args, capsys)[0] == 0
    pixels = png_pixels(strip)
    assert np.array_equal(pixels[2:30, 2:30], train[0].numpy())
    assert np.array_equal(pixels[2:30, 2 + 9 * 30 : 30 + 9 * 30], train[10].numpy())
    with Image.open(strip) as png:  # the settings that made it, in the PNG
        assert json.loads(png.text[MADE_WITH_KEY]) == {
            "command": "interpolate", "from": "train:0", "to": "train:10", "mode": "crossfade",
            "steps": 8, "seed": 0,
        }  # fmt: skip
    beyond = ["interpolate", run_dir, "--from", "train:60000", "--to", 0, "--out", strip]
    code, _, err = run_cli(beyond, capsys)
    assert code == 2 and "Train index 60000 is outside the training set (0 to 59999)." in err
    code, _, err = run_cli(
        ["reconstruct", run_dir, "--split", "train", "--start", 59999, "--n", 2, "--out", recon],
        capsys,
    )
    assert code == 2 and "runs past the end of the training set (60000 images)" in err


def test_encode_png_and_decode_png(run_dir, model, tmp_path, capsys, test_images):
    mine = tmp_path / "mine.png"
    Image.fromarray(test_images[0].numpy()).save(mine)
    codes, out = tmp_path / "c.npy", tmp_path / "d.png"
    assert run_cli(["encode", run_dir, mine, "digit:0", "--out", codes], capsys)[0] == 0
    grids = np.load(codes, allow_pickle=False)
    with torch.no_grad():
        first_zero = int(torch.nonzero(load_split("mnist", "test").labels == 0)[0])
        expected = model.encode(test_images[[0, first_zero]]).numpy()
    assert np.array_equal(grids, expected)
    assert run_cli(["decode", run_dir, codes, "--out", out, "--columns", 1], capsys)[0] == 0
    assert Image.open(out).size == png_size(2, 1)


def test_a_png_drawn_dark_on_light_gets_a_note_and_its_codes(
    run_dir, tmp_path, capsys, test_images
):
    # A student's digit drawn in black on white paper gets codes of another kind of image from
    # an MNIST model, which learned light digits on black: the commands say so and go on.
    paper = tmp_path / "paper.png"
    Image.fromarray(255 - test_images[0].numpy()).save(paper)
    light = tmp_path / "light.png"
    Image.fromarray(test_images[1].numpy()).save(light)
    codes = tmp_path / "c.npy"
    code, _, err = run_cli(["encode", run_dir, light, paper, "test:3", "--out", codes], capsys)
    assert code == 0 and np.load(codes).shape == (3, 7, 7)
    assert err == (
        f"vqkit: note: '{paper}' is dark on a light background, unlike the mnist images this "
        "model learned (light on black); invert it for codes that mean what they do for those.\n"
    )
    strip = tmp_path / "strip.png"
    code, _, err = run_cli(
        ["interpolate", run_dir, "--from", paper, "--to", 3, "--out", strip], capsys
    )
    assert code == 0 and f"'{paper}' is dark on a light background" in err
    code, _, err = run_cli(["encode", run_dir, light, "--out", tmp_path / "d.npy"], capsys)
    assert code == 0 and err == ""
    # A PNG named without its suffix is still a drawing; a light ring touching two edges of
    # the frame is still light on dark.
    bare = tmp_path / "drawing"
    bare.write_bytes(paper.read_bytes())
    ring = np.zeros((28, 28), dtype=np.uint8)
    ring[:, :3] = ring[:3, :] = 255
    Image.fromarray(ring).save(tmp_path / "ring.png")
    args = ["encode", run_dir, bare, tmp_path / "ring.png", "--out", tmp_path / "e.npy"]
    code, _, err = run_cli(args, capsys)
    assert code == 0 and f"'{bare}' is dark" in err and "ring" not in err


def test_decode_refuses_bad_codes(run_dir, model, tmp_path, capsys):
    k = model.num_codes
    np.save(tmp_path / "shape.npy", np.zeros((3, 6, 7), dtype=np.int64))
    np.save(tmp_path / "range.npy", np.full((7, 7), k))
    np.save(tmp_path / "float.npy", np.zeros((1, 7, 7), dtype=np.float32))
    np.save(tmp_path / "obj.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    (tmp_path / "text.npy").write_text("hello")
    cases = {
        "shape.npy": "shape (3, 6, 7)",
        "range.npy": f"include {k}",
        "float.npy": "float32",
        "obj.npy": "pickled",
        "text.npy": "not a .npy file",
    }
    for name, message in cases.items():
        out = tmp_path / f"{name}.png"
        code, _, err = run_cli(["decode", run_dir, tmp_path / name, "--out", out], capsys)
        assert code == 2 and message in err and err.count("\n") == 1
        assert not out.exists()


def test_codebook_figures(run_dir, model, tmp_path, capsys):
    out = tmp_path / "figs"
    code, text, _ = run_cli(["codebook", run_dir, "--out", out], capsys)
    assert code == 0
    counts = torch.tensor(
        __import__("json").loads((run_dir / runfiles.CODE_USAGE).read_text())["counts"]
    )
    used = int((counts > 0).sum())
    assert f"codes used: {used} of {model.num_codes}" in text
    names = runfiles.FIGURE_NAMES
    sizes = {
        names["codebook_usage"]: (USAGE_FIGSIZE[0] * DPI, USAGE_FIGSIZE[1] * DPI),
        names["codebook_atlas"]: png_size(used, math.ceil(math.sqrt(used)), ATLAS_SCALE),
        names["codebook_codemap"]: png_size(CODEMAP_IMAGES, CODEMAP_IMAGES, CODEMAP_SCALE),
    }
    # Exemplars: a block of 2x2 patches of 12 pixels, 1 apart, per code; blocks 5 apart.
    columns, block = math.ceil(math.sqrt(used)), 2 * 12 + 3
    rows = math.ceil(used / columns)
    side = (columns * (block + 5) + 5, rows * (block + 5) + 5)
    sizes[names["codebook_exemplars"]] = tuple(v * ATLAS_SCALE for v in side)
    for name, size in sizes.items():
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size == tuple(int(s) for s in size)
        assert f"wrote {out / name}" in text


def test_codebook_out_naming_a_file_is_refused_not_made_a_folder(run_dir, tmp_path, capsys):
    # Every other command's --out is a file; `--out cb.png` quietly became a folder.
    out = tmp_path / "cb.png"
    code, _, err = run_cli(["codebook", run_dir, "--out", out], capsys)
    assert code == 2 and not out.exists()
    assert f"'{out}' names a file; give a folder (e.g. '{tmp_path / 'cb'}')" in err
    out.mkdir()  # a folder of that name already made is the user's choice
    assert run_cli(["codebook", run_dir, "--out", out], capsys)[0] == 0


def test_codebook_atlas_tiles_are_the_decoded_filled_grids(model, tmp_path):
    from vqkit.codebook_view import code_atlas

    codes = torch.tensor([0, 5, 7])
    tiles = code_atlas(model, codes)
    with torch.no_grad():
        for tile_image, code in zip(tiles, codes.tolist(), strict=True):
            grid = torch.full((1, 7, 7), code)
            # Equal up to rounding: oneDNN may sum in another order for another batch size.
            torch.testing.assert_close(tile_image, model.decode(grid)[0, 0], rtol=1e-5, atol=1e-6)


def test_tile_origin_is_where_tile_puts_each_image():
    # The atlas and code-map labels are drawn at tile_origin: it must name the corner tile()
    # painted. Seven distinct 3x5 images in 3 columns: a wrong row/column split shows.
    images = torch.arange(1, 8, dtype=torch.uint8).view(7, 1, 1).expand(7, 3, 3).contiguous()
    canvas = tile(images, columns=3)
    for index in range(7):
        x, y = tile_origin(index, columns=3, size=3)
        assert (canvas[y : y + 3, x : x + 3] == index + 1).all(), index


def atlas_codes(monkeypatch, tmp_path, counts: torch.Tensor) -> list[int]:
    """The codes plot_atlas decodes for ``counts``, in its order (tiles left blank)."""
    drawn = []

    def blank_tiles(model, codes):
        drawn.extend(codes.tolist())
        return torch.zeros(codes.numel(), 28, 28)

    monkeypatch.setattr(codebook_view, "code_atlas", blank_tiles)
    codebook_view.plot_atlas(None, counts, tmp_path / "atlas.png")
    return drawn


def test_the_atlas_shows_the_used_codes_most_used_first(monkeypatch, tmp_path):
    drawn = atlas_codes(monkeypatch, tmp_path, torch.tensor([0, 5, 2, 9, 0, 5]))
    assert drawn == [3, 1, 5, 2]  # ties keep code order; dead codes 0 and 4 are left out


def test_the_atlas_tiles_only_the_most_used_codes(monkeypatch, tmp_path):
    generator = torch.Generator().manual_seed(4)
    counts = torch.zeros(2**20, dtype=torch.long)
    used = torch.randperm(2**20, generator=generator)[: codebook_view.MAX_TILED_CODES + 500]
    counts[used] = torch.randint(1, 1000, (used.numel(),), generator=generator)
    by_use = sorted(used.tolist(), key=lambda c: (-counts[c], c))
    assert atlas_codes(monkeypatch, tmp_path, counts) == by_use[: codebook_view.MAX_TILED_CODES]


def test_every_used_code_draws_a_visible_bar_in_the_usage_figure(tmp_path):
    # One code chosen 10^6 times and 63 chosen 10 times each: on a linear axis the rare ones
    # drew nothing and looked dead. Pixel columns holding the bars' blue, at least 3 pixels
    # high, must span all 64 used codes (about 6 columns each) and none of the 64 dead ones.
    from matplotlib.colors import to_rgb

    counts = torch.tensor([1_000_000] + [10] * 63 + [0] * 64)
    path = codebook_view.plot_usage(counts, tmp_path / "usage.png", images=60_000)
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    blue = np.array([round(255 * c) for c in to_rgb(codebook_view.USED_COLOR)])
    bar_columns = np.flatnonzero((np.abs(pixels - blue).sum(axis=2) < 12).sum(axis=0) >= 3)
    per_code = (bar_columns.max() - bar_columns.min() + 1) / 64
    assert len(bar_columns) >= 64 * 4 and 4 <= per_code <= 8, (len(bar_columns), per_code)


def test_real_subprocess_encode_then_bad_decode(run_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    codes = tmp_path / "c.npy"
    done = subprocess.run(
        [sys.executable, "-m", "vqkit", "encode", str(run_dir), "test:0-2", "--out", str(codes)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and np.load(codes).shape == (3, 7, 7)
    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((3, 7, 7), -4))
    done = subprocess.run(
        [sys.executable, "-m", "vqkit", "decode", str(run_dir), str(bad), "--out", "x.png"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("vqkit: error: The codes in") and "-4" in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


@pytest.mark.parametrize("strategy", ["used", "random"])
def test_a_missing_data_folder_is_refused_even_where_cached_codes_would_answer(
    run_dir, tmp_path, capsys, strategy
):
    # `sample --strategy used` reads cached code counts, and `random` no data at all: a
    # mistyped --data-dir was never looked at, and the command went on without a word.
    # (train-prior, which reads cached code grids: tests/test_prior_resume.py.)
    missing = tmp_path / "no-such-folder"
    run_dir = shutil.copytree(run_dir, tmp_path / "run")  # a wrong answer would write into it
    args = ["sample", run_dir, "--strategy", strategy, "--out", tmp_path / "s.png"]
    before = sorted(p.name for p in run_dir.iterdir())
    code, _, err = run_cli([*args, "--data-dir", missing], capsys)
    assert code == 2 and f"The data folder '{missing}' does not exist;" in err, err
    assert sorted(p.name for p in run_dir.iterdir()) == before
    assert not (tmp_path / "s.png").exists()


def test_exemplar_labels_sit_in_the_gap_above_each_block_not_on_its_patches(tmp_path):
    # In the block's corner the label hid the first patch's corner. Black tiles: any pixel
    # inside a tile that is not black is a label drawn over it.
    blocks = np.zeros((4, 25, 25), dtype=np.uint8)
    padding, scale = codebook_view.EXEMPLAR_BLOCK_PADDING, ATLAS_SCALE
    for above in (True, False):
        figure = codebook_view._labelled_tiles(blocks, [888, 4, 56, 7], padding, above=above)
        path = codebook_view._save(figure, tmp_path / f"{above}.png")
        pixels = np.asarray(Image.open(path).convert("L")).astype(int)
        on_tiles = 0
        for index in range(4):
            x, y = codebook_view.tile_origin(index, 2, 25, padding)
            inside = pixels[y * scale : (y + 25) * scale, x * scale : (x + 25) * scale]
            on_tiles += int((inside > 40).sum())
        gap = pixels[: padding * scale, : 25 * scale]  # white, above the first block
        if above:  # the label's black outline shows in the gap
            assert on_tiles == 0 and (gap < 100).sum() > 20, (gap < 100).sum()
        else:
            assert on_tiles > 20  # the check sees a label on a tile
