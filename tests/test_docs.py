"""The Python examples of the docs run as written (training made smaller)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch
from PIL import Image

import vqkit.config

DOC = Path(__file__).resolve().parent.parent / "docs" / "from-the-tutorial.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_the_quantizer_example_gives_what_its_comments_say():
    scope: dict = {}
    exec(python_blocks()[0], scope)
    out, z = scope["out"], scope["z"]
    assert out.quantized.shape == z.shape and out.codes.shape == (8, 7, 7)
    assert out.codes.dtype == torch.int64 and out.loss.dim() == 0
    out.quantized.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))  # straight through: d(sum)/dz = 1


def test_the_python_walkthrough_runs(tmp_path, monkeypatch):
    preset = vqkit.config.preset_config

    def small(name: str) -> vqkit.config.RunConfig:
        config = preset(name)
        config.train = dataclasses.replace(config.train, epochs=1, train_limit=512, test_limit=100)
        return config

    monkeypatch.setattr(vqkit.config, "preset_config", small)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(python_blocks()[1], scope)
    assert scope["codes"].shape == (16, 7, 7) and scope["pictures"].shape == (16, 1, 28, 28)
    assert scope["used"].shape == (16, 7, 7) and scope["frames"].shape == (8, 1, 28, 28)
    model, path = scope["model"], scope["path"]
    assert torch.equal(path[0], model.encode(scope["three"][None])[0])
    assert torch.equal(path[-1], model.encode(scope["eight"][None])[0])
    # The figures: 16 originals above their reconstructions (2x), 16 samples 8 per row, and
    # the 8 frames in a row, on 2-pixel white margins.
    sizes = {"reconstructions.png": (2 * (16 * 30 + 2), 2 * (2 * 30 + 2))}
    sizes |= {"used.png": (2 * (8 * 30 + 2), 2 * (2 * 30 + 2))}
    sizes |= {"interpolation.png": (2 * (8 * 30 + 2), 2 * (30 + 2))}
    for name, size in sizes.items():
        with Image.open(tmp_path / name) as image:
            assert image.size == size, name


def test_every_top_level_name_the_readme_uses_exists():
    readme = DOC.parent.parent / "README.md"
    code = "\n".join(re.findall(r"```python\n(.*?)```", readme.read_text(), re.S))
    used = set(re.findall(r"(?<!from )\bvqkit\.(\w+)", code))  # not submodule imports
    assert {"train", "preset_config", "sample_codes", "PriorConfig"} <= used
    assert sorted(used - set(vqkit.__all__)) == []
    assert all(hasattr(vqkit, name) for name in vqkit.__all__)


def test_the_sequence_quantizer_example_of_the_codebook_guide_gives_what_it_says():
    guide = DOC.parent / "codebook.md"
    (block,) = [
        b for b in re.findall(r"```python\n(.*?)```", guide.read_text(), re.S) if "(B, T, D)" in b
    ]
    scope: dict = {}
    exec(block, scope)
    h, h_q, codes, vectors = scope["h"], scope["h_q"], scope["codes"], scope["vectors"]
    assert h_q.shape == h.shape == (8, 100, 64) and codes.shape == (8, 100)
    assert int(codes.min()) >= 0 and int(codes.max()) < 512
    assert torch.equal(vectors, scope["quantizer"].codebook[codes].transpose(1, 2))
    assert scope["loss"].dim() == 0 and float(scope["loss"]) > 0
