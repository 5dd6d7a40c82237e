"""The same code on a CUDA GPU: exact codes, no host waits per step, resume, the whole CLI.

Skipped where torch sees no GPU (CI has none); run on a GPU machine with
``python -m pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from graph_helpers import train_eager_and_graphed

from vqkit import runfiles
from vqkit.acceleration import make_scheduler, prepare_model
from vqkit.config import TrainConfig, preset_config
from vqkit.cuda_graph import WARMUP_STEPS, GraphedTrainStep
from vqkit.data import load_split
from vqkit.distributed import Context
from vqkit.guards import NonFiniteGuard
from vqkit.model import VQVAE
from vqkit.quantize import nearest_codes
from vqkit.training import apply_step, compute_losses, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")

CUDA = torch.device("cuda")


def brute_force_codes(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Nearest rows by explicit (n, K, D) differences, in float64 on the CPU, 64 rows at a time."""
    codebook = codebook.double().cpu().unsqueeze(0)
    parts = [
        (rows.double().cpu().unsqueeze(1) - codebook).pow(2).sum(dim=2).argmin(dim=1)
        for rows in vectors.split(64)
    ]
    return torch.cat(parts)


@pytest.mark.parametrize("num_codes", [128, 16384])
def test_nearest_codes_on_the_gpu_match_brute_force(num_codes):
    generator = torch.Generator().manual_seed(num_codes)
    vectors = torch.randn(1000, 32, generator=generator)
    codebook = torch.randn(num_codes, 32, generator=generator)
    found = nearest_codes(vectors.to(CUDA), codebook.to(CUDA)).cpu()
    expected = brute_force_codes(vectors, codebook)
    # fp32 against float64: only exact near-ties may differ, and then by a negligible distance.
    mismatched = found != expected
    if mismatched.any():
        rows = vectors[mismatched].double()
        gap = (rows - codebook[found[mismatched]].double()).pow(2).sum(1) - (
            rows - codebook[expected[mismatched]].double()
        ).pow(2).sum(1)
        assert gap.abs().max() < 1e-3
    assert mismatched.float().mean() < 1e-3


@pytest.mark.parametrize("preset", ["efficient", "fast", "best", "default"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_steps_never_wait_for_the_gpu(preset, precision):
    """Steps run with CUDA's sync debugging set to error: any host synchronisation raises."""
    check_steps_never_wait(preset_config(preset), precision, warm_steps=1)


def test_replayed_steps_never_wait_for_the_gpu():
    """The same with CUDA-graph replay: compiled and recorded during the warm steps."""
    settings = preset_config("efficient")
    settings.train.compile, settings.train.compile_mode = True, "reduce-overhead"
    check_steps_never_wait(settings, "fp32", warm_steps=3)


def check_steps_never_wait(settings, precision: str, warm_steps: int) -> None:
    torch.manual_seed(0)
    model = VQVAE(settings.model).to(CUDA)
    step_model = prepare_model(model, settings.train)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.train.lr)
    scheduler = make_scheduler(optimizer, settings.train, total_steps=100)
    guard = NonFiniteGuard(0, CUDA, Context(), run_dir=None)
    assert not guard.eager
    images = load_split("mnist", "train").images[:2048].to(CUDA)
    batches = torch.randperm(2048, device=CUDA).split(settings.train.batch_size)
    loss_sum = torch.zeros((), device=CUDA)

    def step(index: int) -> None:
        nonlocal loss_sum
        reconstruction, quantizer = compute_losses(step_model, images[batches[index]], precision)
        guard.step_is_bad(index + 1, reconstruction, quantizer)
        loss_sum += apply_step(optimizer, reconstruction, quantizer, scheduler)

    # The first steps may initialise (k-means codebook, lazy CUDA state, compilation).
    for index in range(warm_steps):
        step(index)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for index in range(warm_steps, len(batches)):
            step(index)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    guard.check()
    assert torch.isfinite(loss_sum)


@pytest.mark.parametrize(
    ("preset", "precision"),
    [("efficient", "fp32"), ("efficient", "bf16"), ("fast", "bf16"), ("best", "fp32")],
)
def test_whole_step_graphs_never_wait_for_the_gpu(preset, precision):
    """Replayed whole steps (k-means, EMA and dead-code restarts included) with CUDA's sync
    debugging set to error, after the eager warm-up steps and the capture."""
    settings = preset_config(preset)
    torch.manual_seed(0)
    model = VQVAE(settings.model).to(CUDA)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.train.lr, fused=True)
    scheduler = make_scheduler(optimizer, settings.train, total_steps=100)
    graphed = GraphedTrainStep(
        model, optimizer, settings.train.batch_size, scheduler=scheduler, precision=precision
    )
    guard = NonFiniteGuard(0, CUDA, Context(), run_dir=None)
    images = load_split("mnist", "train").images[:2048].to(CUDA)
    batches = torch.randperm(2048, device=CUDA).split(settings.train.batch_size)
    loss_sum = torch.zeros((), device=CUDA)

    def step(index: int) -> None:
        nonlocal loss_sum
        reconstruction, quantizer, loss = graphed(images[batches[index]])
        guard.step_is_bad(index + 1, reconstruction, quantizer)
        loss_sum += loss

    for index in range(WARMUP_STEPS + 1):  # eager warm-up steps, then the capture
        step(index)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for index in range(WARMUP_STEPS + 1, len(batches)):
            step(index)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert graphed.captured
    guard.check()
    assert torch.isfinite(loss_sum)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
def test_whole_step_graphs_learn_what_eager_steps_learn(schedule):
    """The same seeded run, eager and replayed (one-cycle: Adam runs eagerly after each replayed
    backward, with the schedule's rate and beta1; 2,112 images, so every epoch also ends on an
    eager 64-image batch, after which the graph's gradients must be handed back)."""
    settings = TrainConfig(lr=2e-3, lr_schedule=schedule)
    images = load_split("mnist", "train").images[:2112].to(CUDA)
    runs = train_eager_and_graphed(preset_config("efficient").model, settings, images, epochs=3)
    (losses, weights, _), (graphed_losses, graphed_weights, step) = runs[False], runs[True]
    assert step.captured
    # Same kernels in the same order; only atomic-add orders may differ between the runs.
    assert graphed_losses == pytest.approx(losses, rel=1e-3)
    for name, tensor in weights.items():
        torch.testing.assert_close(graphed_weights[name], tensor, rtol=1e-3, atol=1e-4, msg=name)


def test_deterministic_resume_on_the_gpu_is_bitwise_exact(tmp_path):
    config = preset_config("best")
    config.train.epochs = 2
    config.train.train_limit = 4096
    config.train.test_limit = 512
    config.train.deterministic = True
    whole = train(config, tmp_path / "whole", device="cuda", progress=False)
    config.train.epochs = 1
    train(config, tmp_path / "split", device="cuda", progress=False)
    config.train.epochs = 2
    resumed = train(config, tmp_path / "split", device="cuda", progress=False, resume=True)
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


def test_whole_step_training_on_the_gpu_leaves_the_callers_random_numbers_alone(tmp_path):
    # train seeds the CPU's and the GPU's generators; their state is put back when it ends,
    # after the whole-step graph's own use of the GPU generator.
    config = preset_config("efficient")
    config.train.epochs, config.train.train_limit, config.train.test_limit = 1, 2048, 256
    config.train.cuda_graph = True
    torch.manual_seed(99)
    expected = (torch.rand(3), torch.rand(3, device=CUDA).cpu())
    torch.manual_seed(99)
    train(config, tmp_path / "run", device="cuda", progress=False)
    assert torch.equal(torch.rand(3), expected[0])
    assert torch.equal(torch.rand(3, device=CUDA).cpu(), expected[1])


def vqkit_cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "vqkit", *args], check=True, timeout=600)


def test_the_whole_pipeline_runs_on_the_gpu(tmp_path):
    """train (with a resume), train-prior, sample, score: each stage through the real CLI."""
    run = tmp_path / "run"
    small = ["--train-limit", "8192", "--test-limit", "1000", "--quiet", "--device", "cuda"]
    vqkit_cli("train", "--preset", "efficient", "--epochs", "1", "--out", str(run), *small)
    vqkit_cli("train", "--resume", str(run), "--epochs", "2", *small)
    metrics = [json.loads(line) for line in (run / runfiles.METRICS).read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    # The same two epochs on the CPU end at 0.0310 (0.0311 on an H100): learning, not a target.
    assert metrics[1]["test_mse"] < 0.7 * metrics[0]["test_mse"]
    vqkit_cli("train-prior", str(run), "--conditional", "--epochs", "1", *small)
    vqkit_cli("sample", str(run), "--strategy", "prior", "--digit", "3", "--n", "16",
              "--out", str(tmp_path / "prior.png"), "--device", "cuda")  # fmt: skip
    vqkit_cli("score", str(run), "--n", "1000", "--device", "cuda")
    scores = json.loads((run / runfiles.SCORES).read_text())
    assert scores


def test_a_gpu_model_encodes_and_decodes_cpu_tensors_as_the_cpu_model_does():
    model = VQVAE(preset_config("efficient").model).eval()
    pixels = load_split("mnist", "test").images[:64]
    codes = model.encode(pixels)
    on_gpu = VQVAE(preset_config("efficient").model).eval()
    on_gpu.load_state_dict(model.state_dict())
    on_gpu.to(CUDA)
    gpu_codes = on_gpu.encode(pixels)  # CPU pixels: moved to the model's device
    assert gpu_codes.device.type == "cuda"
    assert (gpu_codes.cpu() == codes).float().mean() > 0.99  # fp32 near-ties may differ
    decoded = on_gpu.decode(codes)  # CPU codes likewise
    assert decoded.device.type == "cuda"
    torch.testing.assert_close(decoded.cpu(), model.decode(codes), atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_training_on_the_gpu_learns_like_eager(tmp_path, mode):
    """Compiled (channels-last on CUDA, see acceleration.compiles_channels_last) and CUDA-graph
    replayed training through the CLI ends one epoch near the eager run's test MSE."""
    small = ["--preset", "efficient", "--epochs", "1", "--train-limit", "4096", "--test-limit",
             "1000", "--quiet", "--device", "cuda", "--precision", "bf16"]  # fmt: skip
    vqkit_cli("train", *small, "--out", str(tmp_path / "eager"))
    vqkit_cli("train", *small, "--compile-mode", mode, "--out", str(tmp_path / "compiled"))
    eager, compiled = (
        json.loads((tmp_path / name / runfiles.METRICS).read_text())["test_mse"]
        for name in ("eager", "compiled")
    )
    assert compiled == pytest.approx(eager, rel=0.25)


def test_whole_step_graphs_through_the_cli_train_resume_and_learn(tmp_path):
    small = ["--epochs", "1", "--train-limit", "4096", "--test-limit", "1000", "--quiet",
             "--device", "cuda"]  # fmt: skip
    vqkit_cli("train", "--preset", "best", *small, "--out", str(tmp_path / "eager"))
    run = tmp_path / "graphed"
    vqkit_cli("train", "--preset", "best", "--cuda-graph", *small, "--out", str(run))
    small[1] = "2"
    vqkit_cli("train", "--resume", str(run), *small)
    metrics = [json.loads(line) for line in (run / runfiles.METRICS).read_text().splitlines()]
    eager = json.loads((tmp_path / "eager" / runfiles.METRICS).read_text())
    assert metrics[0]["test_mse"] == pytest.approx(eager["test_mse"], rel=0.25)
    assert metrics[1]["test_mse"] < metrics[0]["test_mse"]
    assert json.loads((run / runfiles.CONFIG).read_text())["train"]["cuda_graph"] is True
