"""A model too large to train is refused in one sentence before anything is allocated."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from vqkit import devices, runfiles
from vqkit.cli import main
from vqkit.config import preset_config
from vqkit.devices import TRAINING_BYTES_PER_PARAMETER, require_trainable_size
from vqkit.errors import VqkitError
from vqkit.model import VQVAE
from vqkit.prior import MAX_PRIOR_KERNEL, MAX_PRIOR_LAYERS, PriorConfig
from vqkit.prior_training import train_prior


def test_the_count_is_that_of_the_real_model(monkeypatch):
    config = preset_config("default").model
    real = VQVAE(config)
    count = sum(t.numel() for t in [*real.parameters(), *real.buffers()])
    need = count * TRAINING_BYTES_PER_PARAMETER
    monkeypatch.setattr(devices, "memory_bytes", lambda device: need)
    require_trainable_size(lambda: VQVAE(config), torch.device("cpu"), "VQ-VAE", "--x")
    monkeypatch.setattr(devices, "memory_bytes", lambda device: need - 1)
    with pytest.raises(VqkitError, match=f"would have {count:,} parameters"):
        require_trainable_size(lambda: VQVAE(config), torch.device("cpu"), "VQ-VAE", "--x")


def test_building_on_the_meta_device_draws_no_random_numbers():
    # The check runs before training seeds its generator, and must not shift what it draws.
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    require_trainable_size(
        lambda: VQVAE(preset_config("efficient").model), torch.device("cpu"), "VQ-VAE", "--x"
    )
    assert torch.equal(torch.rand(3), expected)


def test_a_model_that_cannot_be_built_on_the_meta_device_is_not_checked(monkeypatch):
    # A quantizer of one's own may read a tensor's value in its constructor: meta tensors
    # have none. The check is skipped then (training builds the model for real and goes on).
    def reads_a_value() -> torch.nn.Module:
        layer = torch.nn.Linear(2, 2)
        float(layer.weight.sum())  # raises on the meta device
        return layer

    monkeypatch.setattr(devices, "memory_bytes", lambda device: 1)
    require_trainable_size(reads_a_value, torch.device("cpu"), "VQ-VAE", "--x")
    with pytest.raises(VqkitError, match="would have 6 parameters"):
        require_trainable_size(lambda: torch.nn.Linear(2, 2), torch.device("cpu"), "VQ-VAE", "--x")


def test_a_model_whose_sizes_overflow_on_the_meta_device_is_refused(tmp_path, capsys):
    # 2**62 codes of 64 dimensions: PyTorch cannot even describe the tensor, and the check,
    # skipped, left training to fail with "Storage size calculation overflowed".
    out = tmp_path / "run"
    argv = ["train", "--preset", "efficient", "--num-embeddings", str(2**62), "--out", str(out)]
    assert main([*argv, "--quiet", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "The VQ-VAE would hold tensors larger than any memory (their sizes overflow" in err
    assert "Traceback" not in err and not out.exists()


def test_prior_shapes_far_beyond_any_use_are_refused_for_a_new_prior(small_run, tmp_path):
    # 10**9 layers were built for ten minutes until memory ran out. A prior saved with more
    # than the bounds (before they existed) still loads: only a new one is held to them.
    run = Path(shutil.copytree(small_run.run_dir, tmp_path / "run"))
    before = sorted(p.name for p in run.iterdir())
    cases = [
        ({"layers": 10**9}, "layers must be 1 to 100 (--layers), not 1000000000"),
        ({"channels": 10**9}, "channels must be 1 to 4096 (--channels), not 1000000000"),
        ({"kernel_size": 10**9 + 1}, "an odd number from 3 to 63, not 1000000001"),
    ]
    for settings, message in cases:
        saved = PriorConfig(**settings)
        assert PriorConfig.from_dict(saved.to_dict()) == saved
        with pytest.raises(VqkitError, match=re.escape(message)):
            train_prior(run, saved, device="cpu", progress=False)
    assert sorted(p.name for p in run.iterdir()) == before
    PriorConfig(
        layers=MAX_PRIOR_LAYERS, channels=8, kernel_size=MAX_PRIOR_KERNEL
    ).require_new_prior_bounds()


def test_train_refuses_it_before_making_its_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(devices, "memory_bytes", lambda device: 2**20)  # a 1 MiB machine
    out = tmp_path / "run"
    argv = ["train", "--preset", "efficient", "--epochs", "1", "--train-limit", "64"]
    assert main([*argv, "--out", str(out), "--quiet", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "The VQ-VAE would have" in err and "more than the 0.0 GiB of this CPU's memory" in err
    assert "--hidden-dim, --num-embeddings" in err and not out.exists()


def test_train_prior_refuses_it_before_writing_a_prior_file(
    small_run, tmp_path, monkeypatch, capsys
):
    run = Path(shutil.copytree(small_run.run_dir, tmp_path / "run"))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    monkeypatch.setattr(devices, "memory_bytes", lambda device: 2**20)
    assert main(["train-prior", str(run), "--epochs", "1", "--quiet", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "The prior would have" in err and "choose a smaller --channels or --layers" in err
    after = {p.name: p.read_bytes() for p in run.iterdir()}
    assert {name: after[name] for name in before} == before  # new: the code-grid cache only
    assert (
        not (run / runfiles.PRIOR_CONFIG).exists() and not (run / runfiles.PRIOR_WEIGHTS).exists()
    )


def test_inference_runs_on_channels_last_weights_and_gives_the_model_back_as_it_was(small_run):
    # oneDNN's convolutions encode about twice as fast on channels-last weights; the caller's
    # model keeps its own layout (a state_dict of channels-last tensors would not save with
    # safetensors' save_file), and one already channels-last stays so.
    from vqkit.checkpoint import load_model
    from vqkit.codes_io import encode_images
    from vqkit.data import load_split
    from vqkit.usage import count_codes

    model = load_model(small_run.run_dir)  # in the default layout, as it loads
    images = load_split("mnist", "test").images[:300]
    with torch.no_grad():
        expected = model.encode(images)
    layouts = [p.stride() for p in model.parameters()]
    seen = []
    real_encode = model.encode

    def encode(batch):
        seen.append(model.encoder.net[2].weight.is_contiguous(memory_format=torch.channels_last))
        return real_encode(batch)

    model.encode = encode
    try:
        assert torch.equal(encode_images(model, images, 128), expected)
        counts = count_codes(model, images, 128)
    finally:
        del model.encode
    assert seen and all(seen)
    assert torch.equal(counts, torch.bincount(expected.flatten(), minlength=model.num_codes))
    assert [p.stride() for p in model.parameters()] == layouts
    with devices.channels_last_on_cpu(model.to(memory_format=torch.channels_last)):
        pass
    assert model.encoder.net[2].weight.is_contiguous(memory_format=torch.channels_last)
    model.to(memory_format=torch.contiguous_format)
    with pytest.raises(RuntimeError, match="inside"), devices.channels_last_on_cpu(model):
        raise RuntimeError("inside")
    assert [p.stride() for p in model.parameters()] == layouts
