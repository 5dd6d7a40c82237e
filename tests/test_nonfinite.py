"""A NaN or infinite loss stops training with a clear sentence, or is skipped when allowed."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from vqkit import runfiles, training
from vqkit.checkpoint import read_tensors
from vqkit.cli import main
from vqkit.config import ModelConfig, QuantizerConfig
from vqkit.distributed import Context
from vqkit.errors import VqkitError
from vqkit.guards import NonFiniteGuard, StopRequest
from vqkit.model import VQVAE

TINY = [
    "--preset", "efficient", "--train-limit", "256", "--test-limit", "64", "--batch-size", "32",
    "--hidden-dim", "16", "--embedding-dim", "8", "--num-embeddings", "16", "--quiet",
    "--device", "cpu",
]  # fmt: skip
STEPS_PER_EPOCH = 256 // 32


def poison_steps(
    monkeypatch, bad_steps: set[int], term: str, clean: list | None = None
) -> list[int]:
    """Make the loss term ``term`` NaN on the given (1-based) steps; returns the steps seen.
    ``clean`` collects the (reconstruction, quantizer) losses of the other steps."""
    real = training.compute_losses
    seen: list[int] = []

    def poisoned(model, batch, precision="fp32"):
        reconstruction, quantizer = real(model, batch, precision)
        seen.append(len(seen) + 1)
        if clean is not None and seen[-1] not in bad_steps:
            clean.append((float(reconstruction), float(quantizer)))
        if seen[-1] in bad_steps:
            if term == "reconstruction":
                reconstruction = reconstruction * float("nan")
            else:
                quantizer = quantizer + float("inf")
        return reconstruction, quantizer

    monkeypatch.setattr(training, "compute_losses", poisoned)
    return seen


def test_nan_stops_with_step_and_term_and_keeps_last_good_state(monkeypatch, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(run_dir)]) == 0
    good_weights = (run_dir / runfiles.WEIGHTS).read_bytes()
    good_state = (run_dir / runfiles.TRAIN_STATE).read_bytes()
    capsys.readouterr()
    poison_steps(monkeypatch, {3}, "reconstruction")  # step 3 of the resumed epoch 2
    code = main(["train", "--resume", str(run_dir), "--epochs", "2", "--checkpoint-every", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "Traceback" not in err
    step = STEPS_PER_EPOCH + 3
    assert f"step {step}" in err and "reconstruction loss was not finite" in err, err
    # The periodic checkpoints after steps 1 and 2 of epoch 2 are good; nothing later was saved.
    state = json.loads((run_dir / runfiles.TRAIN_STATE_META).read_text())
    assert state["global_step"] == step - 1 and state["epochs_done"] == 1
    assert (run_dir / runfiles.WEIGHTS).read_bytes() == good_weights
    assert good_state != (run_dir / runfiles.TRAIN_STATE).read_bytes()
    for name, tensor in read_tensors(run_dir / runfiles.TRAIN_STATE, "state").items():
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all(), name
    assert len((run_dir / runfiles.METRICS).read_text().splitlines()) == 1


def test_skip_nonfinite_skips_bad_steps_without_updating(monkeypatch, tmp_path, capsys):
    clean: list[tuple[float, float]] = []
    seen = poison_steps(monkeypatch, {2, 5}, "quantizer", clean)
    run_dir = tmp_path / "run"
    code = main(["train", *TINY, "--epochs", "1", "--skip-nonfinite", "2", "--out", str(run_dir)])
    assert code == 0, capsys.readouterr().err
    assert len(seen) == STEPS_PER_EPOCH and len(clean) == STEPS_PER_EPOCH - 2
    record = json.loads((run_dir / runfiles.METRICS).read_text())
    assert record["skipped_nonfinite_steps"] == 2
    # The means over the applied steps only (equal batches of 32), not over all 8 steps.
    mse, vq = (sum(terms) / len(clean) for terms in zip(*clean, strict=True))
    assert record["train_reconstruction_mse"] == pytest.approx(mse, rel=1e-5)
    assert record["train_quantizer_loss"] == pytest.approx(vq, rel=1e-5)
    assert record["train_loss"] == pytest.approx(mse + vq, rel=1e-5)
    state = json.loads((run_dir / runfiles.TRAIN_STATE_META).read_text())
    assert state["skipped_nonfinite"] == 2
    # Adam counts the updates it applied: the two skipped steps were never applied.
    adam_steps = read_tensors(run_dir / runfiles.TRAIN_STATE, "state")["optimizer/0/step"]
    assert float(adam_steps) == STEPS_PER_EPOCH - 2


def test_too_many_bad_steps_stop_the_run(monkeypatch, tmp_path, capsys):
    poison_steps(monkeypatch, {2, 4}, "quantizer")
    code = main(["train", *TINY, "--epochs", "1", "--skip-nonfinite", "1", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "step 4" in err and "quantizer loss" in err and "--skip-nonfinite 1" in err, err


def test_lazy_guard_reports_the_first_bad_step_only_when_checked():
    """The GPU path: steps are only recorded on the device; check() names the first bad one."""
    guard = NonFiniteGuard(0, torch.device("cpu"), Context(), Path("run"), eager=False)
    finite, nan = torch.tensor(1.0), torch.tensor(float("nan"))
    assert not guard.step_is_bad(1, finite, finite)
    guard.check()  # nothing bad yet
    assert not guard.step_is_bad(2, finite, nan)  # recorded, not reported
    assert not guard.step_is_bad(3, nan, nan)
    with pytest.raises(Exception, match="step 2 because its quantizer loss was not finite"):
        guard.check()


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM])
def test_the_first_stop_signal_asks_to_stop_and_the_second_stops_at_once(first):
    # The loop saves before it honours the first Ctrl-C or SIGTERM; a user who presses Ctrl-C
    # again does not want to wait for that save. Outside the block both are Python's own again.
    before = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    stop = StopRequest()
    with stop.installed():
        assert not stop.agreed()
        os.kill(os.getpid(), first)
        assert stop.requested and stop.agreed() and stop.signal_number == first
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        assert stop.signal_number == first  # the message names the signal that asked to stop
    assert {number: signal.getsignal(number) for number in before} == before


@pytest.mark.parametrize(
    ("world_size", "again"), [(1, signal.SIGTERM), (2, signal.SIGTERM), (2, signal.SIGINT)]
)
def test_a_repeated_sigterm_or_any_repeat_under_torchrun_lets_the_save_finish(world_size, again):
    # A scheduler may signal every process of a job and torchrun pass its own signal on too:
    # the second copy must not turn the saving stop into an abrupt one.
    stop = StopRequest(Context(rank=0, world_size=world_size))
    try:
        with stop.installed():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), again)
            assert stop.requested and stop.signal_number == signal.SIGTERM
    finally:
        stop.release_signals()  # a job's stop holds them past the block


@pytest.mark.parametrize("world_size", [1, 2])
def test_a_jobs_stop_keeps_repeated_signals_requests_until_the_caller_releases_them(world_size):
    # After the loop a job's processes still leave the process group; a second Ctrl-C there
    # ended rank 0 in a bare KeyboardInterrupt, without the sentence that says how to resume.
    # A single process puts Python's handlers back at the block's end, as before.
    before = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    stop = StopRequest(Context(rank=0, world_size=world_size))
    try:
        with stop.installed():
            os.kill(os.getpid(), signal.SIGINT)
        now = {number: signal.getsignal(number) for number in before}
        assert (now != before) == (world_size > 1)
        if world_size > 1:
            os.kill(os.getpid(), signal.SIGINT)  # a KeyboardInterrupt with Python's handler
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.signal_number == signal.SIGINT
        stop.release_signals()
        assert {number: signal.getsignal(number) for number in before} == before
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)


@pytest.mark.parametrize(
    ("world_size", "failure", "held"),
    [
        (2, "Connection closed by peer", True),
        (2, "some other failure", False),
        (1, "Connection closed by peer", False),
    ],
)
def test_sigterm_stays_a_request_after_a_torchrun_job_lost_a_process(world_size, failure, held):
    # torchrun sends the process left SIGTERM a moment after another died: with the default
    # handler back when the loop's error left this block, it sometimes died before saying why.
    before = signal.getsignal(signal.SIGTERM)
    stop = StopRequest(Context(rank=0, world_size=world_size))
    try:
        with pytest.raises(RuntimeError), stop.installed():
            raise RuntimeError(failure)
        assert (signal.getsignal(signal.SIGTERM) != before) == held
        assert signal.getsignal(signal.SIGINT) == signal.default_int_handler
        if held:
            os.kill(os.getpid(), signal.SIGTERM)  # would end the test run with the default
            assert stop.requested
    finally:
        signal.signal(signal.SIGTERM, before)


TINY_TRAIN = [
    "--preset", "efficient", "--train-limit", "256", "--test-limit", "64", "--batch-size", "32",
    "--hidden-dim", "16", "--embedding-dim", "8", "--num-embeddings", "16", "--quiet",
    "--device", "cpu",
]  # fmt: skip


def test_skipped_steps_count_over_the_whole_run_across_a_resume(monkeypatch, tmp_path, capsys):
    # --skip-nonfinite N allows N bad steps per run (Position.skipped_nonfinite is "over the
    # whole run"): one skipped before a resume and one after make two, more than 1 allowed.
    real = training.compute_losses
    script = {"seen": 0, "bad": {2}}

    def poisoned(model, batch, precision="fp32"):
        reconstruction, quantizer = real(model, batch, precision)
        script["seen"] += 1
        if script["seen"] in script["bad"]:
            quantizer = quantizer + float("inf")
        return reconstruction, quantizer

    monkeypatch.setattr(training, "compute_losses", poisoned)
    run_dir = tmp_path / "run"
    flags = ["--skip-nonfinite", "1"]
    assert main(["train", *TINY_TRAIN, "--epochs", "1", *flags, "--out", str(run_dir)]) == 0
    first = json.loads((run_dir / runfiles.METRICS).read_text())
    assert first["skipped_nonfinite_steps"] == 1
    capsys.readouterr()
    script.update(seen=0, bad={3})
    code = main(["train", "--resume", str(run_dir), "--epochs", "2", *flags])
    err = capsys.readouterr().err
    assert code == 2 and "--skip-nonfinite 1" in err, err
    assert len((run_dir / runfiles.METRICS).read_text().splitlines()) == 1


def test_a_save_refuses_weights_or_buffers_gone_non_finite():
    # An EMA codebook is a buffer, no parameter: a NaN there must stop a save as well.
    guard = NonFiniteGuard(0, torch.device("cpu"), Context(), Path("nowhere"))
    model = VQVAE(ModelConfig(hidden_dim=8, quantizer=QuantizerConfig(8, 4, codebook_update="ema")))
    guard.check_weights(model, 5)  # finite: nothing to say
    with torch.no_grad():
        model.quantizer.ema_embed_sum[3, 1] = float("inf")
    with pytest.raises(VqkitError, match="non-finite by step 5; they were not saved"):
        guard.check_weights(model, 5)


def test_a_skipped_steps_finite_encoder_outputs_still_count_for_the_ema_codebook(
    monkeypatch, tmp_path, capsys
):
    # docs/reliability.md: the bad term came after the quantizer, so its statistics took in the
    # batch's valid encoder outputs; only the optimizer update is skipped.
    real = training.compute_losses
    sizes: list[torch.Tensor] = []  # EMA cluster sizes before each step
    counts: list[torch.Tensor] = []  # codes each step's forward chose

    def poisoned(model, batch, precision="fp32"):
        quantizer = model.quantizer
        sizes.append(quantizer.ema_cluster_size.clone())
        with torch.no_grad():
            counts.append(model.eval()(batch).code_counts.double())
        model.train()
        reconstruction, vq_loss = real(model, batch, precision)
        if len(sizes) == 2:
            reconstruction = reconstruction * float("nan")
        return reconstruction, vq_loss

    monkeypatch.setattr(training, "compute_losses", poisoned)
    flags = ["--codebook-update", "ema", "--ema-decay", "0.9", "--skip-nonfinite", "1"]
    code = main(["train", *TINY, "--epochs", "1", *flags, "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    # N <- gamma N + (1 - gamma) n for the skipped step 2 as for the applied ones.
    for before, chosen, after in zip(sizes[:3], counts[:3], sizes[1:4], strict=True):
        expected = 0.9 * before.double() + 0.1 * chosen
        assert torch.allclose(after.double(), expected, atol=1e-5)
