"""Speed settings: schedules follow their formulas, bf16 keeps codes exact, layout is neutral."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
import torch.nn.functional as F

from vqkit import acceleration
from vqkit.acceleration import (
    CompiledStep,
    autocast,
    bf16_is_fast,
    make_scheduler,
    prepare_model,
    require_compile_toolchain,
    resolve_precision,
)
from vqkit.checkpoint import load_weights_into, save_weights
from vqkit.cli import main
from vqkit.cli.train_cmd import config_from_args, register
from vqkit.config import RunConfig, TrainConfig, preset_config
from vqkit.errors import VqkitError
from vqkit.model import VQVAE, images_to_input
from vqkit.quantize import nearest_codes
from vqkit.training import run_epoch

CPU = torch.device("cpu")


def rates(settings: TrainConfig, steps: int) -> list[float]:
    """The learning rate used at each of ``steps`` optimiser steps."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=settings.lr)
    scheduler = make_scheduler(optimizer, settings, steps)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return seen


def test_constant_schedule_keeps_the_rate():
    assert rates(TrainConfig(lr=2e-3), 10) == [2e-3] * 10


def test_onecycle_peaks_at_lr_after_the_warmup_and_anneals_to_near_zero():
    settings = TrainConfig(lr=4e-3, lr_schedule="onecycle", warmup_fraction=0.25)
    seen = rates(settings, 104)
    peak_step = max(range(len(seen)), key=seen.__getitem__)
    assert peak_step == 25  # OneCycleLR's warm-up ends at step 0.25 × 104 - 1
    assert seen[peak_step] == pytest.approx(4e-3)
    assert seen[0] == pytest.approx(4e-3 / 25)  # OneCycleLR's default start: max_lr / 25
    assert seen[-1] < 1e-6


def test_cosine_warms_up_linearly_then_follows_a_half_cosine():
    settings = TrainConfig(lr=1e-2, lr_schedule="cosine", warmup_fraction=0.2)
    seen = rates(settings, 100)
    warmup = 20
    assert seen[0] == pytest.approx(1e-2 / warmup)
    assert seen[warmup] == pytest.approx(1e-2)
    for step in (30, 60, 90):
        expected = 0.5 * 1e-2 * (1 + math.cos(math.pi * (step - warmup) / (100 - warmup)))
        assert seen[step] == pytest.approx(expected, rel=1e-6)


def test_schedules_accept_runs_too_short_for_their_phases():
    settings = TrainConfig(lr=1e-3, lr_schedule="onecycle", warmup_fraction=0.25)
    assert all(rate > 0 for rate in rates(settings, 3))


@pytest.mark.parametrize(
    ("machine", "onednn", "avx512_bf16", "amx", "native"),
    [
        ("x86_64", True, False, False, False),  # AVX-512 without bf16: emulated, slow
        ("x86_64", True, True, False, True),
        ("AMD64", True, False, True, True),
        ("x86_64", False, True, True, False),
        ("aarch64", True, False, False, True),  # Arm: oneDNN's check is the instruction's
        ("aarch64", False, False, False, False),
    ],
)
def test_bf16_counts_as_native_on_a_cpu_only_with_its_instructions(
    monkeypatch, machine, onednn, avx512_bf16, amx, native
):
    monkeypatch.setattr(acceleration.platform, "machine", lambda: machine)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert bf16_is_fast(CPU) is native


def test_precision_auto_follows_the_hardware_and_unknown_names_are_refused():
    assert resolve_precision("auto", CPU) == ("bf16" if bf16_is_fast(CPU) else "fp32")
    assert resolve_precision("fp32", CPU) == "fp32"
    with pytest.raises(VqkitError, match="precision"):
        resolve_precision("fp8", CPU)
    with pytest.raises(VqkitError, match="precision"):
        TrainConfig(precision="half")
    with pytest.raises(VqkitError, match="schedule"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(VqkitError, match="warm-up"):
        TrainConfig(warmup_fraction=1.0)


def test_bf16_autocast_runs_convolutions_in_bf16_but_codes_stay_exact():
    torch.manual_seed(0)
    model = VQVAE(preset_config("efficient").model)
    images = torch.randint(0, 256, (16, 28, 28), dtype=torch.uint8)
    with autocast(CPU, "bf16"):
        z = model.encoder(images_to_input(images))
    assert z.dtype == torch.bfloat16
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    codebook = torch.randn(128, z.shape[1])
    with autocast(CPU, "bf16"):
        codes = nearest_codes(flat, codebook)
    # Brute force in float64 on the same (bf16-valued) vectors: distances were not rounded.
    brute = torch.cdist(flat.double(), codebook.double()).argmin(dim=1)
    assert torch.equal(codes, brute)


def test_bf16_training_step_loss_matches_fp32_within_bf16_rounding():
    images = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8)
    losses = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = VQVAE(preset_config("efficient").model)
        with autocast(CPU, precision):
            out = model(images)
            loss = F.mse_loss(out.reconstruction.float(), images_to_input(images)) + out.vq_loss
        losses[precision] = loss.item()
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=2e-2)


def test_channels_last_changes_layout_not_results_and_weights_save_plainly(tmp_path):
    torch.manual_seed(0)
    config = preset_config("efficient")
    plain = VQVAE(config.model).eval()
    fast = VQVAE(config.model).eval()
    fast.load_state_dict(plain.state_dict())
    config.train.channels_last = True
    stepper = prepare_model(fast, config.train)
    assert stepper is fast  # not compiled: the model itself
    # A layer with several input channels: with one, as in the first layer, a plain weight is
    # channels-last contiguous too, and the check could not fail.
    weight = fast.encoder.net[2].weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    images = torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(plain(images).reconstruction, fast(images).reconstruction, atol=1e-5)
    save_weights(tmp_path / "w.safetensors", fast)
    reloaded = VQVAE(config.model).eval()
    load_weights_into(reloaded, tmp_path / "w.safetensors", "weights file")
    for name, tensor in plain.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name


def test_run_epoch_with_schedule_steps_once_per_batch():
    torch.manual_seed(0)
    settings = TrainConfig(lr=1e-3, lr_schedule="cosine", warmup_fraction=0.5, batch_size=32)
    model = VQVAE(preset_config("efficient").model)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    scheduler = make_scheduler(optimizer, settings, total_steps=8)
    images = torch.randint(0, 256, (100, 28, 28), dtype=torch.uint8)  # 4 batches
    loss = run_epoch(
        model,
        optimizer,
        images,
        32,
        torch.Generator().manual_seed(0),
        scheduler=scheduler,
        precision="bf16",
    )
    assert math.isfinite(loss)
    assert scheduler.last_epoch == 4
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)  # end of the 4-step warm-up


def test_code_counts_equal_bincount():
    torch.manual_seed(0)
    model = VQVAE(preset_config("efficient").model)
    out = model(torch.randint(0, 256, (32, 28, 28), dtype=torch.uint8))
    expected = torch.bincount(out.codes.flatten(), minlength=model.num_codes)
    assert torch.equal(out.code_counts, expected)


def test_fast_preset_and_speed_flags_reach_the_config():
    args = parse_train_flags(
        *[
            "--preset",
            "fast",
            "--precision",
            "fp32",
            "--no-channels-last",
            "--lr-schedule",
            "cosine",
            "--warmup-fraction",
            "0.1",
            "--compile",
        ]
    )
    config = config_from_args(args)
    assert config.preset == "fast"
    assert (config.train.precision, config.train.channels_last) == ("fp32", False)
    assert (config.train.lr_schedule, config.train.warmup_fraction) == ("cosine", 0.1)
    assert config.train.compile is True
    assert config.train.batch_size == preset_config("fast").train.batch_size
    assert RunConfig.from_dict(config.to_dict()) == config


def test_compile_on_the_cpu_without_a_compiler_is_one_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    settings = TrainConfig(compile=True)
    with pytest.raises(VqkitError, match="needs a C\\+\\+ compiler"):
        require_compile_toolchain(settings, torch.device("cpu"))
    require_compile_toolchain(TrainConfig(compile=False), torch.device("cpu"))  # not needed
    monkeypatch.setenv("CXX", "sh")  # any program on PATH passes the check
    require_compile_toolchain(settings, torch.device("cpu"))

    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    run = tmp_path / "run"
    assert main(["train", "--compile", "--train-limit", "64", "--out", str(run), "--quiet"]) == 2
    assert "C++ compiler" in capsys.readouterr().err and not run.exists()


def parse_train_flags(*flags: str):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["train", *flags])


def test_compile_mode_implies_compile_and_is_recorded():
    config = config_from_args(parse_train_flags("--preset", "efficient", "--compile-mode",
                                                "reduce-overhead"))  # fmt: skip
    assert (config.train.compile, config.train.compile_mode) == (True, "reduce-overhead")
    assert RunConfig.from_dict(config.to_dict()) == config
    plain = config_from_args(parse_train_flags("--preset", "efficient", "--compile"))
    assert plain.train.compile_mode == "default"
    with pytest.raises(VqkitError, match="cannot go with --no-compile"):
        config_from_args(parse_train_flags("--no-compile", "--compile-mode", "default"))
    with pytest.raises(VqkitError, match="Unknown compile mode 'fastest'"):
        TrainConfig(compile=True, compile_mode="fastest")


def test_reduce_overhead_marks_each_step_and_learns_like_eager(monkeypatch):
    """On a CPU there are no CUDA graphs to replay, so compiled steps must match eager ones; each
    call of the step model starts a new CUDA-graph step (the GPU run is in bench/gpu.sh). The
    k-means init runs before the first compiled step, so the whole forward is one graph."""
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    config = preset_config("efficient")
    config.model.hidden_dim = 8
    config.model.quantizer.codebook_init = "kmeans"
    config.model.quantizer.codebook_update = "ema"
    images = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8)
    losses, codebooks = {}, {}
    torch._dynamo.utils.counters.clear()
    for mode in ("eager", "reduce-overhead"):
        torch.manual_seed(0)
        model = VQVAE(config.model)
        settings = TrainConfig(
            batch_size=16, compile=mode != "eager", compile_mode="reduce-overhead"
        )
        stepper = prepare_model(model, settings)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        losses[mode] = run_epoch(stepper, optimizer, images, 16, torch.Generator().manual_seed(0))
        codebooks[mode] = model.quantizer.codebook
    assert len(marks) == 4  # one per batch, compiled run only
    assert losses["reduce-overhead"] == pytest.approx(losses["eager"], rel=1e-4)
    assert torch.allclose(codebooks["reduce-overhead"], codebooks["eager"], atol=1e-4)
    stats = torch._dynamo.utils.counters
    assert not stats["graph_break"] and stats["stats"]["unique_graphs"] == 1


def test_initialize_is_the_k_means_init_of_the_first_training_forward():
    config = preset_config("best").model
    images = torch.randint(0, 256, (32, 28, 28), dtype=torch.uint8)
    torch.manual_seed(0)
    forward = VQVAE(config)
    ahead = VQVAE(config)
    ahead.load_state_dict(forward.state_dict())
    assert ahead.quantizer.needs_initialization()
    torch.manual_seed(1)
    forward(images)  # k-means inside the first training forward (then one EMA update)
    torch.manual_seed(1)
    ahead.initialize(images)
    assert not ahead.quantizer.needs_initialization()
    ahead.initialize(images)  # done once: a second call changes nothing
    initialized = ahead.quantizer.codebook.clone()
    ahead(images)  # the same forward, now without its k-means
    assert torch.equal(ahead.quantizer.codebook, forward.quantizer.codebook)
    assert not torch.equal(initialized, ahead.quantizer.codebook)  # the EMA step moved it


def test_a_compiled_step_tries_the_k_means_init_again_after_a_non_finite_batch():
    model = VQVAE(preset_config("best").model).train()
    step = CompiledStep(model, "default")
    step.compiled = model  # an eager stand-in: what is tested is when k-means runs
    images = torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8)
    last_bias = model.encoder.net[2].bias
    saved = last_bias.detach().clone()
    with torch.no_grad():
        last_bias.fill_(float("nan"))  # every encoder output non-finite
    step(images)
    assert model.quantizer.needs_initialization() and not step.initialized
    with torch.no_grad():
        last_bias.copy_(saved)
    step(images)
    assert not model.quantizer.needs_initialization() and step.initialized


def test_the_train_settings_called_idle_change_nothing_that_trains():
    """What the report leaves out (and train refuses as a flag) really does nothing: the rate
    schedule and the step the loop trains with are the same for any other value."""
    base = TrainConfig(lr=2e-3)
    assert base.idle_settings() == {"warmup_fraction", "compile_mode"}
    other = TrainConfig(lr=2e-3, warmup_fraction=0.1, compile_mode="max-autotune")
    assert rates(other, 10) == rates(base, 10) == [2e-3] * 10
    model = VQVAE(preset_config("efficient").model)
    assert prepare_model(model, other) is model  # not compiled, in any mode
    scheduled = TrainConfig(lr_schedule="cosine", compile=True)
    assert scheduled.idle_settings() == set()


@pytest.mark.parametrize(
    "flags", [[], ["--lr-schedule", "constant"]], ids=["the preset's constant rate", "given"]
)
def test_a_warmup_fraction_without_a_schedule_is_refused(flags):
    args = parse_train_flags("--preset", "efficient", *flags, "--warmup-fraction", "0.1")
    with pytest.raises(VqkitError, match="--warmup-fraction does nothing without --lr-schedule"):
        config_from_args(args)
