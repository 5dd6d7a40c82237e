"""train-prior survives Ctrl-C, SIGKILL and non-finite losses like train does.

A prior interrupted between epochs or mid-epoch (Ctrl-C, or a real SIGKILL of a real process)
and resumed must end with the very bytes of an uninterrupted one, with the same early-stopping
decisions and one metrics line per epoch. The code grids are the small run's real codes of the
first few hundred images, so every run here takes well under a second of training.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import fails_cleanly
from process_helpers import child_env, vqkit_command
from safetensors.torch import save_file

from vqkit import (
    prior_loop,
    prior_replacement,
    prior_training,
    runfiles,
    runs,
    score,
    train_state,
)
from vqkit.checkpoint import (
    PRIOR_LEARNED_FROM,
    prior_is_stale,
    read_tensors,
    safetensors_metadata,
)
from vqkit.classifier import ClassifierConfig
from vqkit.cli import main, train_prior_cmd
from vqkit.errors import VqkitError
from vqkit.fileio import read_jsonl
from vqkit.prior import PriorConfig, has_prior, incomplete_prior, unfinished_prior
from vqkit.prior_replacement import old_prior_set_aside
from vqkit.training import TrainingInterrupted

TRAIN_GRIDS, TEST_GRIDS, BATCH = 1024, 128, 32
STEPS_PER_EPOCH = TRAIN_GRIDS // BATCH
TINY = PriorConfig(
    channels=8, layers=2, epochs=5, patience=5, batch_size=BATCH, seed=3, deterministic=True
)
TINY_FLAGS = [
    "--channels", "8", "--layers", "2", "--epochs", "5", "--patience", "5", "--batch-size",
    str(BATCH), "--seed", "3", "--deterministic", "--quiet", "--device", "cpu",
]  # fmt: skip
WAIT_SECONDS = 120


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Tiny priors run fastest on one thread, and bitwise comparisons with a child process need
    the same thread count on both sides (the child gets OMP_NUM_THREADS=1). The previous count
    is restored: later test files compare numbers computed before and after this file ran."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def coded_run(small_run, tmp_path_factory) -> Path:
    """A copy of the small run whose code-grid cache holds the real codes of the first
    TRAIN_GRIDS training and TEST_GRIDS test images (what train-prior then trains on)."""
    run_dir = tmp_path_factory.mktemp("coded") / "run"
    shutil.copytree(small_run.run_dir, run_dir)
    real = prior_training.load_split
    sizes = {"train": TRAIN_GRIDS, "test": TEST_GRIDS}

    def first_images(dataset, split, data_dir=None):
        data = real(dataset, split, data_dir)
        count = sizes[split]
        return replace(data, images=data.images[:count], labels=data.labels[:count])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(prior_training, "load_split", first_images)
        grids = prior_training.code_grids(run_dir)
    assert grids["train"].codes.shape == (TRAIN_GRIDS, 7, 7)
    return run_dir


def test_a_missing_data_folder_is_refused_though_the_code_grids_are_cached(
    coded_run, tmp_path, capsys
):
    # The grids cached in the run answered without reading the data: a mistyped --data-dir
    # was never looked at, and a prior trained without a word.
    run_dir = copy_run(coded_run, tmp_path)
    missing = tmp_path / "no-such-folder"
    argv = ["train-prior", run_dir, "--epochs", "1", "--quiet", "--data-dir", missing]
    fails_cleanly(capsys, argv, f"The data folder '{missing}' does not exist;")
    assert not has_prior(run_dir)


def copy_run(source: Path, tmp_path: Path, name: str = "run") -> Path:
    target = tmp_path / name
    shutil.copytree(source, target)
    return target


@pytest.fixture(scope="module")
def unbroken(coded_run, tmp_path_factory) -> Path:
    """The reference: TINY trained without interruption."""
    run_dir = copy_run(coded_run, tmp_path_factory.mktemp("unbroken"))
    # Module fixtures are set up before the function-scoped one_thread: each sets it itself.
    with single_thread():
        prior_training.train_prior(run_dir, TINY, device="cpu", progress=False)
    return run_dir


def state_counters(run_dir: Path) -> dict:
    return json.loads((run_dir / runfiles.PRIOR_STATE_META).read_text())


def assert_same_prior(run_dir: Path, reference: Path) -> None:
    """Bitwise-identical best and last weights, the same decisions, one line per epoch."""
    best = (run_dir / runfiles.PRIOR_WEIGHTS).read_bytes()
    assert best == (reference / runfiles.PRIOR_WEIGHTS).read_bytes()
    ours = read_tensors(run_dir / runfiles.PRIOR_STATE, "state")
    theirs = read_tensors(reference / runfiles.PRIOR_STATE, "state")
    assert ours.keys() == theirs.keys()
    for name in ours:
        if name.startswith(("model/", "optimizer/")):
            assert torch.equal(ours[name], theirs[name]), name
    mine, ref = state_counters(run_dir), state_counters(reference)
    assert mine["global_step"] == ref["global_step"]
    for key in ("best_test_bits_per_code", "epochs_without_improvement", "finished"):
        assert mine["extra"][key] == ref["extra"][key], key
    metrics = read_jsonl(run_dir / runfiles.PRIOR_METRICS)
    ref_metrics = read_jsonl(reference / runfiles.PRIOR_METRICS)
    assert [m["epoch"] for m in metrics] == [m["epoch"] for m in ref_metrics]
    for a, b in zip(metrics, ref_metrics, strict=True):
        assert a["test_bits_per_code"] == b["test_bits_per_code"]
        assert a["train_bits_per_code"] == b["train_bits_per_code"]


def press_ctrl_c() -> None:
    """A real SIGINT to this process, as a terminal's Ctrl-C sends."""
    os.kill(os.getpid(), signal.SIGINT)


def scripted_nll(script: list[float], first_epoch: int = 1, ctrl_c_at: int | None = None):
    """A stand-in for evaluate_nll returning ``script[epoch - 1]``, pressing Ctrl-C while it
    evaluates epoch ``ctrl_c_at``."""
    epochs = iter(range(first_epoch, len(script) + 1))

    def nll(prior, data, batch_size):
        epoch = next(epochs)
        if epoch == ctrl_c_at:
            press_ctrl_c()
        return script[epoch - 1]

    return nll


def test_ctrl_c_between_epochs_then_resume_keeps_the_early_stopping_decisions(
    coded_run, tmp_path, monkeypatch
):
    """A scripted test NLL makes epoch 1 the best and stops the run after epoch 3 (patience 2).
    Resuming after epoch 2 must remember both the best NLL and the stale count: forgetting the
    best would keep epoch 3's weights, forgetting the count would train a 4th epoch."""
    script = [3.0, 3.5, 3.2, 1.0, 1.0, 1.0]
    settings = replace(TINY, epochs=6, patience=2)
    reference = copy_run(coded_run, tmp_path, "reference")
    monkeypatch.setattr(prior_training, "evaluate_nll", scripted_nll(script))
    prior_training.train_prior(reference, settings, device="cpu", progress=False)
    assert [m["epoch"] for m in read_jsonl(reference / runfiles.PRIOR_METRICS)] == [1, 2, 3]
    assert state_counters(reference)["extra"]["finished"]
    # Stopped by its patience, at 3 of 6 epochs: finished, not to be resumed.
    assert unfinished_prior(reference) is None and "unfinished" not in prior_column(reference)

    run_dir = copy_run(coded_run, tmp_path)
    monkeypatch.setattr(prior_training, "evaluate_nll", scripted_nll(script, ctrl_c_at=2))
    with pytest.raises(TrainingInterrupted, match=f"vqkit train-prior {run_dir} --resume"):
        prior_training.train_prior(run_dir, settings, device="cpu", progress=False)
    saved = state_counters(run_dir)
    assert saved["epochs_done"] == 2 and saved["step"] == 0
    assert saved["extra"]["best_test_bits_per_code"] == 3.0
    assert saved["extra"]["epochs_without_improvement"] == 1
    assert not saved["extra"]["finished"]
    assert unfinished_prior(run_dir) == (2, 6)
    assert prior_column(run_dir).endswith(" (unfinished: 2/6 epochs)")

    monkeypatch.setattr(prior_training, "evaluate_nll", scripted_nll(script, first_epoch=3))
    prior_training.train_prior(run_dir, None, device="cpu", progress=False, resume=True)
    assert_same_prior(run_dir, reference)
    assert unfinished_prior(run_dir) is None and "unfinished" not in prior_column(run_dir)


@pytest.mark.parametrize(("epochs", "patience"), [(2, 5), (6, 2)])
def test_a_ctrl_c_in_the_last_epochs_evaluation_says_the_prior_is_finished(
    coded_run, tmp_path, monkeypatch, epochs, patience
):
    # Its last epoch (2 of 2, or the 3rd of 6 when patience 2 ends the run there): it said
    # "continue it with --resume", and the resume had nothing to train.
    run_dir = copy_run(coded_run, tmp_path)
    last = min(epochs, 3)
    monkeypatch.setattr(
        prior_training, "evaluate_nll", scripted_nll([3.0, 3.5, 3.2, 1.0, 1.0, 1.0], ctrl_c_at=last)
    )
    settings = replace(TINY, epochs=epochs, patience=patience)
    with pytest.raises(TrainingInterrupted) as stopped:
        prior_training.train_prior(run_dir, settings, device="cpu", progress=False)
    assert stopped.value.outcome == "the prior had already finished its training and is saved."
    assert state_counters(run_dir)["extra"]["finished"] and unfinished_prior(run_dir) is None


def prior_column(run_dir: Path) -> str:
    """The prior's cell of `vqkit runs` for the run."""
    return runs.run_row(run_dir)[runs.COLUMNS.index("prior bits/code")]


def test_a_better_test_nll_starts_the_patience_count_again(coded_run, tmp_path, monkeypatch):
    """Patience 2 and a scripted test NLL: epoch 2 is worse, epoch 3 the best so far, then two
    worse epochs. The improvement in epoch 3 resets the count, so the run stops after epoch 5
    (not 4) and keeps epoch 3's weights and NLL as the best."""
    script = [3.0, 3.5, 2.0, 2.5, 2.6, 1.0]
    run_dir = copy_run(coded_run, tmp_path)
    monkeypatch.setattr(prior_training, "evaluate_nll", scripted_nll(script))
    result = prior_training.train_prior(
        run_dir, replace(TINY, epochs=6, patience=2), device="cpu", progress=False
    )
    assert [m["epoch"] for m in read_jsonl(run_dir / runfiles.PRIOR_METRICS)] == [1, 2, 3, 4, 5]
    assert result.best["epoch"] == 3
    saved = state_counters(run_dir)["extra"]
    assert saved["best_test_bits_per_code"] == 2.0 and saved["epochs_without_improvement"] == 2


def test_train_bits_per_code_is_the_mean_nll_over_every_grid_of_the_epoch(coded_run, tmp_path):
    """In fp32, without dropout and at a learning rate of 1e-30 the weights never move, so
    each epoch's training figure must be the kept prior's NLL over the whole training set.
    Batches of 100 leave a last one of 24 grids: a mean of batch means, or a count carried over
    from epoch 1 into epoch 2, would both miss it."""
    run_dir = copy_run(coded_run, tmp_path)
    settings = replace(
        TINY, epochs=2, patience=2, batch_size=100, dropout=0.0, lr=1e-30, precision="fp32"
    )
    result = prior_training.train_prior(run_dir, settings, device="cpu", progress=False)
    train_set = prior_training.code_grids(run_dir)["train"]
    expected = prior_training.evaluate_nll(result.prior, train_set, batch_size=TRAIN_GRIDS)
    bits = [m["train_bits_per_code"] for m in read_jsonl(run_dir / runfiles.PRIOR_METRICS)]
    assert bits == pytest.approx([expected, expected], rel=1e-6)


def ctrl_c_on_step(monkeypatch, step: int) -> None:
    """Press Ctrl-C while the prior computes the loss of training step ``step`` (1-based)."""
    real = prior_loop.prior_loss
    steps = iter(range(1, 10**6))

    def loss(prior, codes, labels):
        if next(steps) == step:
            press_ctrl_c()
        return real(prior, codes, labels)

    monkeypatch.setattr(prior_loop, "prior_loss", loss)


def test_ctrl_c_mid_epoch_through_the_cli_saves_says_how_to_resume_and_matches(
    coded_run, unbroken, tmp_path, monkeypatch, capsys
):
    run_dir = copy_run(coded_run, tmp_path)
    ctrl_c_on_step(monkeypatch, STEPS_PER_EPOCH + 9)
    assert main(["train-prior", str(run_dir), *TINY_FLAGS]) == 130
    err = capsys.readouterr().err
    assert f"continue it with: vqkit train-prior {run_dir} --resume" in err
    assert "Traceback" not in err and err.count("\n") == 1
    saved = state_counters(run_dir)
    assert (saved["epochs_done"], saved["step"], saved["global_step"]) == (
        1,
        9,
        STEPS_PER_EPOCH + 9,
    )
    assert len(read_jsonl(run_dir / runfiles.PRIOR_METRICS)) == 1
    monkeypatch.undo()
    # Without --resume an unfinished prior is not thrown away.
    assert main(["train-prior", str(run_dir), *TINY_FLAGS]) == 2
    err = capsys.readouterr().err
    assert "unfinished prior" in err and "--resume" in err and "--restart" in err, err
    assert main(["train-prior", str(run_dir), "--resume", "--quiet", "--device", "cpu"]) == 0
    assert_same_prior(run_dir, unbroken)


def test_sigkill_mid_epoch_then_resume_gives_identical_prior(coded_run, unbroken, tmp_path):
    """A real process, killed with SIGKILL right after a periodic mid-epoch save."""
    run_dir = copy_run(coded_run, tmp_path)
    env = {**child_env(), "OMP_NUM_THREADS": "1"}
    argv = ["train-prior", str(run_dir), *TINY_FLAGS, "--checkpoint-every", "5"]
    process = subprocess.Popen(
        vqkit_command(*argv), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    meta = run_dir / runfiles.PRIOR_STATE_META
    deadline = time.monotonic() + WAIT_SECONDS
    while not (meta.exists() and state_counters(run_dir)["step"] > 0):
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "no mid-epoch state appeared"
        time.sleep(0.005)
    process.kill()
    process.communicate(timeout=WAIT_SECONDS)
    assert process.returncode == -signal.SIGKILL
    stopped = state_counters(run_dir)
    assert not stopped["extra"]["finished"] and stopped["global_step"] % 5 == 0
    assert main(["train-prior", str(run_dir), "--resume", "--quiet", "--device", "cpu"]) == 0
    assert_same_prior(run_dir, unbroken)
    assert not list(run_dir.glob(".*.tmp")), "a temp file of an interrupted write was left"


def poison_steps(monkeypatch, bad_steps: set[int], clean: list | None = None) -> list[int]:
    """Make the prior's loss NaN on the given (1-based) steps; returns the steps seen.
    ``clean`` collects (loss in nats per code, grids in the batch) of the other steps."""
    real = prior_loop.prior_loss
    seen: list[int] = []

    def poisoned(prior, codes, labels):
        loss = real(prior, codes, labels)
        seen.append(len(seen) + 1)
        if clean is not None and seen[-1] not in bad_steps:
            clean.append((float(loss), codes.shape[0]))
        return loss * float("nan") if seen[-1] in bad_steps else loss

    monkeypatch.setattr(prior_loop, "prior_loss", poisoned)
    return seen


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_state(
    coded_run, tmp_path, monkeypatch, capsys
):
    run_dir = copy_run(coded_run, tmp_path)
    bad = STEPS_PER_EPOCH + 3  # the third step of epoch 2
    poison_steps(monkeypatch, {bad})
    code = main(["train-prior", str(run_dir), *TINY_FLAGS, "--checkpoint-every", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "Traceback" not in err, err
    assert f"Training stopped at step {bad} because its prior loss was not finite" in err
    assert f"vqkit train-prior {run_dir} --resume --skip-nonfinite N" in err
    # The saves after steps 1 and 2 of epoch 2 are good; nothing after the bad step was saved.
    saved = state_counters(run_dir)
    assert saved["global_step"] == bad - 1 and saved["epochs_done"] == 1
    for name, tensor in read_tensors(run_dir / runfiles.PRIOR_STATE, "state").items():
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all(), name
    assert len(read_jsonl(run_dir / runfiles.PRIOR_METRICS)) == 1
    # Resuming with room for one bad step skips it and finishes the run.
    poison_steps(monkeypatch, {3})
    argv = ["train-prior", str(run_dir), "--resume", "--skip-nonfinite", "1", "--epochs", "2"]
    assert main([*argv, "--checkpoint-every", "100", "--quiet", "--device", "cpu"]) == 0
    records = read_jsonl(run_dir / runfiles.PRIOR_METRICS)
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[-1]["skipped_nonfinite_steps"] == 1


def nan_after_epochs(monkeypatch, good_epochs: int) -> None:
    """The test NLL is NaN after the first ``good_epochs`` epochs: weights gone non-finite while
    every training loss stayed finite (the guard sees only the losses)."""
    real, calls = prior_training.evaluate_nll, []

    def evaluate(prior, data, batch_size):
        calls.append(1)
        return real(prior, data, batch_size) if len(calls) <= good_epochs else float("nan")

    monkeypatch.setattr(prior_training, "evaluate_nll", evaluate)


def test_a_non_finite_test_nll_stops_and_keeps_the_last_good_epoch(
    coded_run, tmp_path, monkeypatch, capsys
):
    run_dir = copy_run(coded_run, tmp_path)
    nan_after_epochs(monkeypatch, good_epochs=1)
    code = main(["train-prior", str(run_dir), *TINY_FLAGS])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "Traceback" not in err, err
    assert "The prior's weights became non-finite in epoch 2 (test NLL nan" in err, err
    # Epoch 1's weights, metrics line and state stand; the NaN epoch left nothing behind.
    assert len(read_jsonl(run_dir / runfiles.PRIOR_METRICS)) == 1
    assert state_counters(run_dir)["epochs_done"] == 1
    weights = read_tensors(run_dir / runfiles.PRIOR_WEIGHTS, "weights")
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


def test_weights_gone_non_finite_under_finite_losses_are_never_saved(
    coded_run, tmp_path, monkeypatch, capsys
):
    # The embedding row of a code no training grid holds is read by no loss: NaN there leaves
    # every loss finite. The next --checkpoint-every save refuses it; the state on disk is the
    # one saved before, with finite weights.
    run_dir = copy_run(coded_run, tmp_path)
    real, seen = prior_loop.prior_loss, []
    bad = STEPS_PER_EPOCH + 3
    unused = 127  # the last of the small run's 128 codes, which its few grids never hold

    def poisoned(prior, codes, labels):
        seen.append(codes)
        if len(seen) == bad:
            with torch.no_grad():
                prior.embedding.weight[unused] = float("nan")
        return real(prior, codes, labels)

    monkeypatch.setattr(prior_loop, "prior_loss", poisoned)
    code = main(["train-prior", str(run_dir), *TINY_FLAGS, "--checkpoint-every", "1"])
    err = capsys.readouterr().err.strip()
    assert not any(bool((codes == unused).any()) for codes in seen)  # no loss read the row
    assert code == 2 and err.count("\n") == 0, err
    assert f"The weights became non-finite by step {bad}; they were not saved" in err, err
    assert state_counters(run_dir)["global_step"] == bad - 1
    for name, tensor in read_tensors(run_dir / runfiles.PRIOR_STATE, "state").items():
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all(), name


def test_skip_nonfinite_skips_bad_steps_without_updating(coded_run, tmp_path, monkeypatch, capsys):
    run_dir = copy_run(coded_run, tmp_path)
    clean: list[tuple[float, int]] = []
    seen = poison_steps(monkeypatch, {2, 5}, clean)
    argv = ["train-prior", str(run_dir), *TINY_FLAGS, "--epochs", "1", "--skip-nonfinite", "2"]
    assert main(argv) == 0
    assert len(seen) == STEPS_PER_EPOCH and len(clean) == STEPS_PER_EPOCH - 2
    (record,) = read_jsonl(run_dir / runfiles.PRIOR_METRICS)
    assert record["skipped_nonfinite_steps"] == 2
    # The mean over the grids of the applied steps only, in bits.
    nats = sum(loss * grids for loss, grids in clean) / sum(grids for _, grids in clean)
    assert record["train_bits_per_code"] == pytest.approx(nats / math.log(2), rel=1e-6)
    assert state_counters(run_dir)["skipped_nonfinite"] == 2
    # AdamW counts the updates it applied: the two skipped steps were never applied.
    adam_steps = read_tensors(run_dir / runfiles.PRIOR_STATE, "state")["optimizer/0/step"]
    assert float(adam_steps) == STEPS_PER_EPOCH - 2
    # Too many bad steps stop the run, naming the step, the term and the limit.
    poison_steps(monkeypatch, {2, 4})
    capsys.readouterr()
    assert main([*argv[:-1], "1"]) == 2
    err = capsys.readouterr().err
    assert "step 4" in err and "prior loss" in err and "--skip-nonfinite 1" in err, err


@pytest.fixture(scope="module")
def finished_prior(coded_run, tmp_path_factory) -> Path:
    """A copy of the coded run with a finished 2-epoch prior."""
    run_dir = copy_run(coded_run, tmp_path_factory.mktemp("finished"))
    with single_thread():
        prior_training.train_prior(run_dir, replace(TINY, epochs=2), device="cpu", progress=False)
    return run_dir


def break_prior_config(run_dir: Path) -> None:
    path = run_dir / runfiles.PRIOR_CONFIG
    path.write_text(json.dumps({**json.loads(path.read_text()), "channels": 4}))


def change_vqvae_weights(run_dir: Path) -> None:
    path = run_dir / runfiles.WEIGHTS
    tensors = read_tensors(path, "weights")
    first = next(iter(tensors))
    tensors[first] = tensors[first] + 1
    save_file(tensors, str(path))


def test_a_prior_shared_without_its_state_is_still_known_stale(finished_prior, tmp_path, capsys):
    # Its weights file names the VQ-VAE weights it learned; only the state used to.
    run_dir = copy_run(finished_prior, tmp_path)
    learned = safetensors_metadata(run_dir / runfiles.PRIOR_WEIGHTS)[PRIOR_LEARNED_FROM]
    assert learned == hashlib.sha256((run_dir / runfiles.WEIGHTS).read_bytes()).hexdigest()
    for name in (runfiles.PRIOR_STATE, runfiles.PRIOR_STATE_META):
        (run_dir / name).unlink()
    assert not prior_is_stale(run_dir)
    change_vqvae_weights(run_dir)
    assert prior_is_stale(run_dir)
    argv = ["sample", str(run_dir), "--strategy", "prior", "--n", "4"]
    assert main([*argv, "--out", str(tmp_path / "s.png"), "--device", "cpu"]) == 2
    assert "trained on the codes of earlier VQ-VAE weights" in capsys.readouterr().err


def test_a_prior_saved_before_its_weights_named_their_source_is_judged_by_its_state(
    finished_prior, tmp_path
):
    run_dir = copy_run(finished_prior, tmp_path)
    path = run_dir / runfiles.PRIOR_WEIGHTS
    save_file(read_tensors(path, "prior weights"), str(path))  # as written before: no metadata
    assert safetensors_metadata(path) == {}
    assert not prior_is_stale(run_dir)
    change_vqvae_weights(run_dir)
    assert prior_is_stale(run_dir)
    (run_dir / runfiles.PRIOR_STATE_META).unlink()
    assert not prior_is_stale(run_dir)  # nothing left to say what it learned: unknown


BAD_RESUMES = {
    "no prior at all": (None, [], "has no prior training to resume; start one with"),
    "a prior without its state": (
        lambda run: (run / runfiles.PRIOR_STATE).unlink(),
        [],
        "has no resumable state (prior_state.safetensors)",
    ),
    "missing folder": ("missing", [], "does not exist"),
    "flag that changes learning": (None, ["--channels", "16"], "cannot take --channels"),
    "resume and restart": (None, ["--restart"], "cannot take --restart"),
    "fewer epochs than done": (None, ["--epochs", "1"], "already trained 2 epochs"),
    "config not fitting the state": (break_prior_config, [], "channels is 8 there, 4 here"),
    "VQ-VAE retrained": (change_vqvae_weights, [], "VQ-VAE weights"),
}


@pytest.mark.parametrize("case", BAD_RESUMES)
def test_bad_resume_is_one_sentence_and_exit_2(case, coded_run, finished_prior, tmp_path, capsys):
    change, flags, message = BAD_RESUMES[case]
    run_dir = copy_run(coded_run if case == "no prior at all" else finished_prior, tmp_path)
    if change == "missing":
        run_dir = tmp_path / "nowhere"
    elif change is not None:
        change(run_dir)
    before = folder_bytes(run_dir)
    argv = ["train-prior", str(run_dir), "--resume", *flags, "--quiet", "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith("vqkit: error: ") and err.endswith(".")
    assert folder_bytes(run_dir) == before, "a refused resume changed the run folder"


def folder_bytes(run_dir: Path) -> dict[str, bytes]:
    files = run_dir.iterdir() if run_dir.exists() else []
    return {p.name: p.read_bytes() for p in files if p.is_file()}


def test_a_prior_stopped_by_its_patience_resumes_as_finished(coded_run, tmp_path, monkeypatch):
    """Stopped by patience 1 after epoch 2 of 4, the prior has no epochs left: a resume trains
    none and records no new session, leaving every file as it was."""
    run_dir = copy_run(coded_run, tmp_path)
    monkeypatch.setattr(prior_training, "evaluate_nll", scripted_nll([2.0, 3.0, 1.0, 1.0]))
    settings = replace(TINY, epochs=4, patience=1)
    prior_training.train_prior(run_dir, settings, device="cpu", progress=False)
    before = folder_bytes(run_dir)
    result = prior_training.train_prior(run_dir, None, device="cpu", progress=False, resume=True)
    assert result.epochs_trained == 0
    assert folder_bytes(run_dir) == before


def test_finished_prior_resumes_for_longer_or_is_replaced(finished_prior, tmp_path, capsys):
    run_dir = copy_run(finished_prior, tmp_path)
    argv = ["train-prior", str(run_dir), "--quiet", "--device", "cpu"]
    assert main([*argv, "--resume", "--epochs", "3"]) == 0
    assert [r["epoch"] for r in read_jsonl(run_dir / runfiles.PRIOR_METRICS)] == [1, 2, 3]
    assert main([*argv, *TINY_FLAGS[:4], "--epochs", "1"]) == 0  # a new prior, from scratch
    assert [r["epoch"] for r in read_jsonl(run_dir / runfiles.PRIOR_METRICS)] == [1]
    assert state_counters(run_dir)["epochs_done"] == 1


@pytest.mark.parametrize("failed", ["tensors", "counters"])
def test_a_full_disk_as_a_new_priors_first_state_is_written_keeps_the_earlier_prior(
    finished_prior, tmp_path, capsys, monkeypatch, failed
):
    # The first epoch's weights were written, its state (or the state's readable copy, written
    # last) not: the new prior had weights, so the earlier one was deleted, and what stood
    # could be sampled but neither resumed nor called unfinished by `vqkit runs`. A kill at
    # that moment already gave the earlier prior back.
    run_dir = copy_run(finished_prior, tmp_path)
    names = prior_replacement.PRIOR_FILE_NAMES
    before = {name: data for name, data in folder_bytes(run_dir).items() if name in names}
    state = run_dir / getattr(train_state.PRIOR_FILES, failed)
    real_write = (
        train_state.write_bytes_atomic if failed == "tensors" else train_state.write_json_atomic
    )

    def full_disk(path, data):
        if Path(path) == state:
            raise VqkitError(f"Could not write '{state}': the disk is full.")
        real_write(path, data)

    writer = "write_bytes_atomic" if failed == "tensors" else "write_json_atomic"
    monkeypatch.setattr(train_state, writer, full_disk)
    fails_cleanly(
        capsys,
        ["train-prior", str(run_dir), *TINY_FLAGS[:4], "--epochs", "1", "--quiet"],
        f"Could not write '{state}': the disk is full; the new prior had not finished its "
        "first epoch, so the earlier prior is kept as it was.",
    )
    after = folder_bytes(run_dir)
    assert {name: data for name, data in after.items() if name in names} == before
    assert not any(name.endswith(prior_replacement.ASIDE_SUFFIX) for name in after)


def test_resuming_a_finished_prior_says_so_and_changes_nothing(finished_prior, tmp_path, capsys):
    """No epoch left: a note naming --epochs, exit 0, and no file changed (no new session in
    environment.jsonl, which the report counts)."""
    run_dir = copy_run(finished_prior, tmp_path)
    before = folder_bytes(run_dir)
    assert main(["train-prior", str(run_dir), "--resume", "--quiet", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "had already trained its 2 epochs, so nothing more was trained" in captured.err
    assert "give --epochs N (more than 2)" in captured.err and "best test NLL" in captured.out
    assert folder_bytes(run_dir) == before
    # Flags that only steer a training are not recorded when none follows (the report would
    # show them as the prior's settings, and a later resume would go by them).
    argv = ["train-prior", str(run_dir), "--resume", "--quiet", "--device", "cpu"]
    assert main([*argv, "--checkpoint-every", "5", "--patience", "9", "--epochs", "2"]) == 0
    assert folder_bytes(run_dir) == before


def test_a_prior_stopped_by_its_patience_names_patience(capsys):
    train_prior_cmd.say_prior_was_finished("runs/a", PriorConfig(epochs=8, patience=1), 3)
    err = capsys.readouterr().err
    assert "stopped early (1 epoch without a better test NLL)" in err
    assert "give --patience N (more than 1)" in err


def test_a_new_prior_failing_before_its_first_save_leaves_the_old_one(
    finished_prior, tmp_path, monkeypatch, capsys
):
    # A non-finite loss in the new prior's first epoch, before it saved anything: the finished
    # prior's weights, metrics, config and state are all still there, byte for byte; the
    # session log only gained the failed session's line.
    run_dir = copy_run(finished_prior, tmp_path)
    before = folder_bytes(run_dir)
    log_before = before.pop(runfiles.ENVIRONMENT)
    poison_steps(monkeypatch, {2})
    code = main(["train-prior", str(run_dir), *TINY_FLAGS[:4], "--layers", "3", "--epochs", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not finite" in err and err.count("\n") == 0, err
    after = folder_bytes(run_dir)
    log_after = after.pop(runfiles.ENVIRONMENT)
    assert after == before
    assert (
        log_after.startswith(log_before) and log_after.count(b"\n") == log_before.count(b"\n") + 1
    )
    # Once the new prior has saved its first state, it is the run's prior.
    monkeypatch.undo()
    argv = ["train-prior", str(run_dir), *TINY_FLAGS[:4], "--layers", "3", "--epochs", "1"]
    assert main([*argv, "--quiet", "--device", "cpu"]) == 0
    assert json.loads((run_dir / runfiles.PRIOR_CONFIG).read_text())["layers"] == 3
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".replaced")]


def test_a_new_prior_whose_first_test_nll_is_not_finite_leaves_the_old_one(
    finished_prior, tmp_path, monkeypatch, capsys
):
    run_dir = copy_run(finished_prior, tmp_path)
    before = folder_bytes(run_dir)
    before.pop(runfiles.ENVIRONMENT)
    nan_after_epochs(monkeypatch, good_epochs=0)
    code = main(["train-prior", str(run_dir), *TINY_FLAGS[:4], "--layers", "3", "--epochs", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "became non-finite in epoch 1" in err and err.count("\n") == 0, err
    after = folder_bytes(run_dir)
    after.pop(runfiles.ENVIRONMENT)
    assert after == before


@pytest.mark.parametrize("periodic", [False, True], ids=["stop-save", "periodic-save-too"])
def test_a_new_prior_stopped_in_its_first_epoch_gives_the_old_one_back(
    finished_prior, tmp_path, monkeypatch, capsys, periodic
):
    # Ctrl-C saves a resumable state, and --checkpoint-every 1 saves one at every step, but the
    # new prior has no weights yet: it is dropped and the finished prior stays the run's, byte
    # for byte (the session log only gained the stopped session's line).
    run_dir = copy_run(finished_prior, tmp_path)
    before = folder_bytes(run_dir)
    log_before = before.pop(runfiles.ENVIRONMENT)
    real, steps = prior_loop.prior_loss, []

    def ctrl_c_at_step_2(prior, codes, labels):
        steps.append(1)
        if len(steps) == 2:
            press_ctrl_c()
        return real(prior, codes, labels)

    monkeypatch.setattr(prior_loop, "prior_loss", ctrl_c_at_step_2)
    argv = ["train-prior", str(run_dir), *TINY_FLAGS[:4], "--layers", "3", "--epochs", "1"]
    argv += ["--checkpoint-every", "1"] if periodic else []
    assert main([*argv, "--quiet", "--device", "cpu"]) == 128 + signal.SIGINT
    err = capsys.readouterr().err.strip()
    assert err == (
        "vqkit: interrupted; the new prior had not finished its first epoch, so the earlier "
        f"prior is kept as it was (vqkit train-prior {run_dir} --restart trains a new one)"
    )
    after = folder_bytes(run_dir)
    assert after.pop(runfiles.ENVIRONMENT).startswith(log_before)
    assert after == before


def test_a_new_prior_failing_after_a_periodic_save_says_the_old_one_is_kept(
    finished_prior, tmp_path, monkeypatch, capsys
):
    # The guard's usual advice (resume the last good state) would resume the earlier prior:
    # the new prior's state is removed with it, so the sentence says what happened instead.
    run_dir = copy_run(finished_prior, tmp_path)
    before = folder_bytes(run_dir)
    before.pop(runfiles.ENVIRONMENT)
    poison_steps(monkeypatch, {3})
    argv = ["train-prior", str(run_dir), *TINY_FLAGS[:4], "--layers", "3", "--epochs", "1"]
    assert main([*argv, "--checkpoint-every", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Training stopped at step 3 because its prior loss was not finite" in err, err
    assert "the new prior had not finished its first epoch, so the earlier prior is kept" in err
    assert "--resume" not in err and err.count("\n") == 0
    after = folder_bytes(run_dir)
    after.pop(runfiles.ENVIRONMENT)
    assert after == before


def test_a_new_prior_stopped_after_its_first_save_stays_the_runs_prior(
    finished_prior, tmp_path, monkeypatch
):
    # Ctrl-C in the new prior's second epoch: it has saved a state of its own, so that state,
    # not the old finished prior, is what the run holds and what --resume continues.
    run_dir = copy_run(finished_prior, tmp_path)
    monkeypatch.setattr(prior_training, "evaluate_nll", scripted_nll([3.0, 2.0, 1.0], ctrl_c_at=2))
    settings = replace(TINY, layers=3, epochs=3)
    with pytest.raises(TrainingInterrupted):
        prior_training.train_prior(run_dir, settings, device="cpu", progress=False)
    saved = state_counters(run_dir)
    assert saved["epochs_done"] == 2 and not saved["extra"]["finished"]
    assert saved["extra"]["config"]["layers"] == 3
    assert json.loads((run_dir / runfiles.PRIOR_CONFIG).read_text())["layers"] == 3
    assert [r["epoch"] for r in read_jsonl(run_dir / runfiles.PRIOR_METRICS)] == [1, 2]
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".replaced")]


def test_a_prior_that_cannot_be_moved_aside_stays_whole(
    finished_prior, tmp_path, monkeypatch, capsys
):
    # The third file refuses to move (as in a read-only folder, which root here ignores): the
    # two already moved go back, and the command says so in one sentence.
    run_dir = copy_run(finished_prior, tmp_path)
    before = folder_bytes(run_dir)
    real_replace, moves = os.replace, []

    def failing_replace(source, target):
        moves.append(source)
        if len(moves) == 3:
            raise PermissionError(13, "Permission denied")
        real_replace(source, target)

    monkeypatch.setattr(prior_replacement.os, "replace", failing_replace)
    code = main(["train-prior", str(run_dir), *TINY_FLAGS[:4], "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Cannot replace the prior" in err and err.count("\n") == 0, err
    assert "Permission denied" in err
    assert folder_bytes(run_dir) == before


def test_a_prior_of_earlier_vqvae_weights_is_not_sampled(
    finished_prior, tmp_path, capsys, monkeypatch
):
    run_dir = copy_run(finished_prior, tmp_path)
    argv = ["sample", str(run_dir), "--strategy", "prior", "--n", "4"]
    argv += ["--out", str(tmp_path / "s.png"), "--device", "cpu"]
    assert main(argv) == 0
    change_vqvae_weights(run_dir)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "trained on the codes of earlier VQ-VAE weights" in err and err.count("\n") == 0
    assert f"vqkit train-prior {run_dir} --restart" in err

    # Scoring refuses it before any work (the classifier, real rows and other strategies).
    def too_late(*args, **kwargs):
        raise AssertionError("the stale prior should have been refused first")

    monkeypatch.setattr(score, "load_or_train_classifier", too_late)
    assert main(["score", str(run_dir), "--n", "4", "--device", "cpu"]) == 2
    assert "trained on the codes of earlier VQ-VAE weights" in capsys.readouterr().err
    # The listing and the report still show its numbers, marked as stale.
    assert main(["runs", str(run_dir)]) == 0
    assert " (stale)" in capsys.readouterr().out
    assert main(["report", str(run_dir)]) == 0
    html = (run_dir / runfiles.REPORT).read_text()
    assert "Stale: this prior learned the codes of earlier VQ-VAE weights" in html


def test_a_bad_value_in_prior_config_json_is_blamed_on_the_file_before_any_work(
    finished_prior, tmp_path, capsys, monkeypatch
):
    run_dir = copy_run(finished_prior, tmp_path)
    path = run_dir / runfiles.PRIOR_CONFIG
    path.write_text(json.dumps({**json.loads(path.read_text()), "lr": -1}))
    expected = f"'{path}' cannot be used: the learning rate must be a finite number > 0"
    argv = ["sample", str(run_dir), "--strategy", "prior", "--n", "4"]
    assert main([*argv, "--out", str(tmp_path / "s.png"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and err.count("\n") == 0, err

    def too_late(*args, **kwargs):
        raise AssertionError("the damaged prior settings should have been refused first")

    monkeypatch.setattr(score, "load_or_train_classifier", too_late)
    assert main(["score", str(run_dir), "--n", "4", "--device", "cpu"]) == 2
    assert expected in capsys.readouterr().err


def prior_sample_error(run_dir: Path, tmp_path: Path, capsys) -> str:
    argv = ["sample", str(run_dir), "--strategy", "prior", "--n", "4"]
    assert main([*argv, "--out", str(tmp_path / "s.png"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_a_prior_stopped_in_its_first_epoch_is_named_by_sample_score_and_report(
    coded_run, tmp_path, monkeypatch, capsys
):
    """Ctrl-C before the first epoch ends leaves the prior's settings and state but no
    weights: sampling says to resume, and score and the report say why there is no prior row
    instead of leaving it out as if the run never had a prior."""
    run_dir = copy_run(coded_run, tmp_path)
    ctrl_c_on_step(monkeypatch, 9)
    assert main(["train-prior", str(run_dir), *TINY_FLAGS]) == 130
    monkeypatch.undo()
    assert not (run_dir / runfiles.PRIOR_WEIGHTS).exists()
    assert (run_dir / runfiles.PRIOR_CONFIG).exists()
    capsys.readouterr()
    resume = f"vqkit train-prior {run_dir} --resume"
    err = prior_sample_error(run_dir, tmp_path, capsys)
    assert "stopped before its first epoch ended" in err and resume in err, err

    monkeypatch.setenv("VQKIT_CACHE", str(tmp_path / "cache"))
    tiny_classifier = ClassifierConfig(
        channels=(4, 8), features=16, epochs=1, batch_size=32, train_limit=500
    )
    monkeypatch.setattr(score, "ClassifierConfig", lambda dataset, num_classes: tiny_classifier)
    assert main(["score", str(run_dir), "--n", "4", "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert f"No prior rows: The prior training in '{run_dir}' stopped" in table
    stored = json.loads((run_dir / runfiles.SCORES).read_text())
    assert resume in stored["prior_left_out"]
    assert not any(row["name"].startswith("prior") for row in stored["rows"])

    assert main(["report", str(run_dir)]) == 0
    html = (run_dir / runfiles.REPORT).read_text()
    assert 'id="prior"' in html and "stopped before its first epoch ended" in html
    assert main(["runs", str(run_dir)]) == 0
    assert "(incomplete)" in capsys.readouterr().out

    # Resuming gives a whole prior, which sample then uses.
    assert main(["train-prior", str(run_dir), "--resume", "--quiet", "--device", "cpu"]) == 0
    argv = ["sample", str(run_dir), "--strategy", "prior", "--n", "4", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "s.png")]) == 0


@pytest.mark.parametrize("lost", [runfiles.PRIOR_WEIGHTS, runfiles.PRIOR_CONFIG])
def test_a_prior_missing_one_of_its_files_says_which_and_is_replaced(
    lost, finished_prior, tmp_path, capsys
):
    run_dir = copy_run(finished_prior, tmp_path)
    (run_dir / lost).unlink()
    err = prior_sample_error(run_dir, tmp_path, capsys)
    assert f"is incomplete ({lost} is missing)" in err, err
    assert f"vqkit train-prior {run_dir} --restart" in err
    assert main(["report", str(run_dir)]) == 0  # its numbers stay, with the same sentence
    html = (run_dir / runfiles.REPORT).read_text()
    assert "bits per code" in html and f"({lost} is missing)" in html
    if lost == runfiles.PRIOR_WEIGHTS:  # resuming cannot bring back weights of past epochs
        assert main(["train-prior", str(run_dir), "--resume", "--quiet", "--device", "cpu"]) == 2
        assert f"is incomplete ({lost} is missing)" in capsys.readouterr().err
    argv = ["train-prior", str(run_dir), *TINY_FLAGS, "--epochs", "1", "--restart"]
    assert main(argv) == 0
    assert has_prior(run_dir) and incomplete_prior(run_dir) is None


def test_code_nll_is_the_cross_entropy_of_each_code():
    """The deterministic-friendly NLL (log_softmax + gather) equals torch's cross-entropy."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 4, 4, generator=generator, dtype=torch.float64)
    codes = torch.randint(0, 5, (3, 4, 4), generator=generator)
    expected = torch.nn.functional.cross_entropy(logits, codes, reduction="none")
    torch.testing.assert_close(prior_loop.code_nll(logits, codes), expected)
    by_hand = -torch.log(torch.softmax(logits[1, :, 2, 3], 0)[codes[1, 2, 3]])
    torch.testing.assert_close(prior_loop.code_nll(logits, codes)[1, 2, 3], by_hand)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_deterministic_prior_resume_on_the_gpu_is_bitwise_exact(coded_run, tmp_path):
    """On CUDA, --deterministic must run (no kernel without a deterministic version) and a
    prior trained 1 epoch then resumed to 2 must equal one trained 2 epochs straight."""
    settings = replace(TINY, epochs=2)
    whole = copy_run(coded_run, tmp_path, "whole")
    prior_training.train_prior(whole, settings, device="cuda", progress=False)
    split = copy_run(coded_run, tmp_path, "split")
    prior_training.train_prior(split, replace(settings, epochs=1), device="cuda", progress=False)
    prior_training.train_prior(split, settings, device="cuda", progress=False, resume=True)
    assert_same_prior(split, whole)


# --- a replacement killed outright (SIGKILL, power loss): no clean-up ran ------------------


def set_aside(run_dir: Path, names) -> None:
    """What old_prior_set_aside has done by the time a kill lands: these files moved aside."""
    for name in names:
        os.replace(run_dir / name, run_dir / (name + prior_replacement.ASIDE_SUFFIX))


def test_a_replacement_killed_before_its_first_save_gives_the_old_prior_back(
    finished_prior, tmp_path, capsys
):
    # Killed after the new prior wrote its settings, before its first state: sampling names
    # what happened and the way back, and that way (--resume) restores every file byte for byte.
    run_dir = copy_run(finished_prior, tmp_path)
    before = folder_bytes(run_dir)
    set_aside(run_dir, prior_replacement.PRIOR_FILE_NAMES)
    config = json.loads(before[runfiles.PRIOR_CONFIG])
    (run_dir / runfiles.PRIOR_CONFIG).write_text(json.dumps({**config, "layers": 3}))
    capsys.readouterr()
    err = prior_sample_error(run_dir, tmp_path, capsys)
    assert "cut off before its first epoch ended" in err, err
    assert f"vqkit train-prior {run_dir} --resume" in err, err
    assert main(["train-prior", str(run_dir), "--resume", "--quiet", "--device", "cpu"]) == 0
    assert folder_bytes(run_dir) == before


def test_a_replacement_killed_while_setting_the_old_prior_aside_loses_nothing(
    finished_prior, tmp_path
):
    run_dir = copy_run(finished_prior, tmp_path)
    before = folder_bytes(run_dir)
    set_aside(run_dir, prior_replacement.PRIOR_FILE_NAMES[:1])  # the state's tensors only
    assert main(["train-prior", str(run_dir), "--resume", "--quiet", "--device", "cpu"]) == 0
    assert folder_bytes(run_dir) == before


def test_a_replacement_killed_after_a_periodic_save_gives_the_old_prior_back(
    finished_prior, tmp_path
):
    # Killed inside the new prior's first epoch after --checkpoint-every saved a state: it has
    # no weights, so the earlier prior comes back (the new state and settings removed).
    run_dir = copy_run(finished_prior, tmp_path)
    before = folder_bytes(run_dir)
    set_aside(run_dir, prior_replacement.PRIOR_FILE_NAMES)
    new_files = (runfiles.PRIOR_CONFIG, *prior_replacement.PRIOR_FILE_NAMES[:2])  # config, state
    for name in new_files:  # what the new prior had written
        (run_dir / name).write_bytes(before[name][::-1])
    assert "cut off before its first epoch ended" in str(incomplete_prior(run_dir))
    prior_replacement.settle_interrupted_replacement(run_dir)
    assert folder_bytes(run_dir) == before


def test_old_files_left_beside_a_new_saved_prior_are_deleted(finished_prior, tmp_path):
    # Killed after the new prior's first save, before the clean-up: the new prior stands (it
    # has a state of its own) and the old files are what the clean-up would have deleted.
    run_dir = copy_run(finished_prior, tmp_path)
    before = folder_bytes(run_dir)
    for name in prior_replacement.PRIOR_FILE_NAMES:
        shutil.copy(run_dir / name, run_dir / (name + prior_replacement.ASIDE_SUFFIX))
    assert incomplete_prior(run_dir) is None
    prior_replacement.settle_interrupted_replacement(run_dir)
    assert folder_bytes(run_dir) == before


def test_a_records_file_set_aside_as_a_link_is_refused_before_the_resume_writes(
    finished_prior, tmp_path
):
    # A received folder may hold its prior's files aside, as a killed replacement leaves them,
    # the records among them a link. train_prior put them back after the writers' check, so
    # the link was refused only by the first epoch's append, after that epoch's training and
    # its session line. (The command line settles the folder before that check already.)
    run_dir = copy_run(finished_prior, tmp_path)
    secret = tmp_path / "secret.jsonl"
    secret.write_bytes((run_dir / runfiles.PRIOR_METRICS).read_bytes())
    kept = secret.read_bytes()
    set_aside(run_dir, prior_replacement.PRIOR_FILE_NAMES)
    aside = run_dir / (runfiles.PRIOR_METRICS + prior_replacement.ASIDE_SUFFIX)
    aside.unlink()
    aside.symlink_to(secret)
    before = folder_bytes(run_dir)
    path = run_dir / runfiles.PRIOR_METRICS
    with pytest.raises(VqkitError, match="is a symbolic link where the run keeps its own records"):
        prior_training.train_prior(
            run_dir, replace(TINY, epochs=3), device="cpu", progress=False, resume=True
        )
    after = folder_bytes(run_dir)
    assert path.is_symlink() and secret.read_bytes() == kept
    # Only the old prior put back in place; no session began, no epoch was saved.
    assert {name.removesuffix(prior_replacement.ASIDE_SUFFIX) for name in before} == set(after)
    for name, data in after.items():
        assert data == before.get(name, before.get(name + prior_replacement.ASIDE_SUFFIX)), name


def test_settings_files_that_are_not_objects_are_named(finished_prior, tmp_path, capsys):
    run_dir = copy_run(finished_prior, tmp_path)
    (run_dir / runfiles.PRIOR_CONFIG).write_text("[1, 2]")
    err = prior_sample_error(run_dir, tmp_path, capsys)
    assert f"{run_dir / runfiles.PRIOR_CONFIG}' does not hold a JSON object" in err, err
    (run_dir / runfiles.CONFIG).write_text('"efficient"')
    err = prior_sample_error(run_dir, tmp_path, capsys)
    assert f"{run_dir / runfiles.CONFIG}' does not hold a JSON object" in err, err


def test_a_test_nll_equal_to_the_best_is_no_improvement(coded_run, tmp_path, monkeypatch):
    # Patience 2, scripted NLL: epoch 2 is the best; epochs 3 and 4 only equal it, which is not
    # an improvement, so the run stops after epoch 4 and keeps epoch 2's weights.
    script = [3.0, 2.0, 2.0, 2.0, 1.0, 1.0]
    run_dir = copy_run(coded_run, tmp_path)
    best_weights = {}

    real_save = prior_loop.save_weights

    def recording_save(path, model, metadata=None):
        best_weights["epoch"] = len(read_jsonl(run_dir / runfiles.PRIOR_METRICS))
        return real_save(path, model, metadata)

    monkeypatch.setattr(prior_loop, "save_weights", recording_save)
    monkeypatch.setattr(prior_training, "evaluate_nll", scripted_nll(script))
    result = prior_training.train_prior(
        run_dir, replace(TINY, epochs=6, patience=2), device="cpu", progress=False
    )
    assert [m["epoch"] for m in read_jsonl(run_dir / runfiles.PRIOR_METRICS)] == [1, 2, 3, 4]
    assert result.best["epoch"] == 2
    assert best_weights["epoch"] == 2  # the weights file was last written after epoch 2


def test_a_failed_replacement_leaves_exactly_the_old_priors_files(tmp_path):
    # The old prior here has weights and settings but no state or metrics (a prior shared
    # without its state). A new prior that saved a state but no weights yet, then failed,
    # must leave the folder as it was: its state beside the old weights would resume as if it
    # belonged to them.
    old = {runfiles.PRIOR_WEIGHTS: b"old weights", runfiles.PRIOR_CONFIG: b'{"old": 1}'}
    for name, data in old.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(RuntimeError, match="first epoch"):
        with old_prior_set_aside(tmp_path):
            for name in (
                train_state.PRIOR_FILES.tensors,
                train_state.PRIOR_FILES.counters,
                runfiles.PRIOR_CONFIG,
                runfiles.PRIOR_METRICS,
            ):
                (tmp_path / name).write_bytes(b"new")
            raise RuntimeError("failed in the first epoch")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == old


def test_a_prior_beyond_the_new_bounds_resumes_but_is_not_restarted(
    finished_prior, tmp_path, monkeypatch
):
    # The bounds hold a new prior only: one saved before they existed still trains on. With
    # NumPy's True for resume (accepted as a switch): it reached the session log's JSON.
    run_dir = copy_run(finished_prior, tmp_path)
    monkeypatch.setattr("vqkit.config.MAX_PRIOR_LAYERS", 1)  # the saved prior has 2 layers
    with single_thread():
        more = replace(TINY, epochs=3)
        result = prior_training.train_prior(
            run_dir, more, device="cpu", progress=False, resume=np.True_
        )
    assert result.epochs_trained == 1
    with pytest.raises(VqkitError, match="layers must be 1 to 1 \\(--layers\\), not 2"):
        prior_training.train_prior(run_dir, more, device="cpu", progress=False, restart=True)
