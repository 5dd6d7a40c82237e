"""A short real training run on a slice of MNIST learns, and writes a complete run folder."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from PIL import Image
from safetensors.torch import save as save_safetensors

from vqkit import distributed, runfiles, train_state, training
from vqkit.checkpoint import load_config, read_tensors_and_metadata
from vqkit.cli import main
from vqkit.config import preset_config
from vqkit.data import load_split
from vqkit.environment import read_records
from vqkit.errors import VqkitError
from vqkit.metrics import evaluate_reconstruction
from vqkit.model import VQVAE
from vqkit.run_folder import STATE_NAMES
from vqkit.step import compute_losses
from vqkit.training import epoch_batches, steps_per_epoch, train


def test_training_lowers_test_mse_well_below_an_untrained_model(small_run):
    config = small_run.model.config
    test = load_split("mnist", "test").images[:500]
    untrained = evaluate_reconstruction(VQVAE(config).eval(), test)
    trained = small_run.final
    assert trained["test_mse"] < 0.3 * untrained["test_mse"]
    # The saved weights reproduce the logged figure (the metric itself: tests/test_metrics.py).
    again = evaluate_reconstruction(VQVAE.from_run(small_run.run_dir), test)
    assert again["test_mse"] == trained["test_mse"]


def test_run_folder_holds_config_weights_metrics_and_figure(small_run):
    run = small_run.run_dir
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["quantizer"]["num_embeddings"] == 128
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    for key in (
        "train_loss",
        "test_mse",
        "test_psnr",
        "perplexity",
        "codes_used",
        "epoch_seconds",
        "images_per_second",
    ):
        assert key in record
    assert 1 <= record["codes_used"] <= 128
    assert 1.0 <= record["perplexity"] <= record["codes_used"]
    # 8 originals above 8 reconstructions: 2 rows of 28 px + 3 gaps of 2 px, doubled in size.
    with Image.open(run / "reconstructions.png") as figure:
        assert figure.size == (2 * (8 * 30 + 2), 2 * (2 * 30 + 2))
        assert figure.mode == "L"


def test_a_config_edited_in_place_is_checked_before_training(tmp_path):
    # Dataclass fields set from Python skip the constructors' checks: such a run used to train
    # and then fail to load ("The commitment weight beta must be ...").
    config = preset_config("efficient")
    config.model.quantizer.beta = -1.0
    with pytest.raises(VqkitError, match=r"beta must be a finite number >= 0 \(--beta\)"):
        train(config, tmp_path / "run", device="cpu", progress=False)
    config = preset_config("best")
    config.model.quantizer.quantizer = "fsq"  # with EMA, k-means and restarts: refused by the CLI
    with pytest.raises(VqkitError, match="do not apply to --quantizer fsq"):
        train(config, tmp_path / "run", device="cpu", progress=False)
    with pytest.raises(VqkitError, match="train\\(\\) takes a RunConfig .* not a dict"):
        train(preset_config("efficient").to_dict(), tmp_path / "run", device="cpu")
    assert not (tmp_path / "run").exists()


def test_each_epochs_train_loss_is_the_mean_loss_over_that_epochs_images(tmp_path):
    # At a learning rate of 1e-30 no weight moves (the preset's codebook learns by gradient,
    # not EMA), so every epoch's train_loss must be the loss of the untrained model over all
    # its training images, taken here in one batch. A total carried over from epoch 1, a
    # skipped or repeated batch, or a wrong step count would each show in epoch 2's figure.
    config = preset_config("efficient")
    config.train.epochs, config.train.lr = 2, 1e-30
    config.train.train_limit, config.train.batch_size = 256, 64
    config.train.test_limit, config.train.seed = 64, 5
    result = train(config, tmp_path / "run", device="cpu", progress=False)
    torch.manual_seed(5)  # the seed train() builds its model from
    untrained = VQVAE(config.model).train()
    with torch.no_grad():
        reconstruction, quantizer = compute_losses(
            untrained, load_split("mnist", "train").images[:256]
        )
    expected = float(reconstruction + quantizer)
    assert [r["train_loss"] for r in result.history] == pytest.approx([expected] * 2, rel=1e-5)
    # Its two terms, each averaged the same way (the quantizer's: codebook + beta * commitment).
    for key, term in (
        ("train_reconstruction_mse", reconstruction),
        ("train_quantizer_loss", quantizer),
    ):
        assert [r[key] for r in result.history] == pytest.approx([float(term)] * 2, rel=1e-4)


def test_a_resume_with_other_learning_settings_is_refused_before_training(run_copy):
    # --epochs may grow on a resume; a new learning rate would go on learning something
    # else under the run's old name, so the API refuses it as the CLI does.
    config = load_config(run_copy)
    config.train.epochs, config.train.lr = 2, 1e-2
    before = (run_copy / "metrics.jsonl").read_bytes()
    refusal = r"other settings \(train\.lr is 0\.003 there, 0\.01 here\)"
    with pytest.raises(VqkitError, match=refusal):
        train(config, run_copy, device="cpu", progress=False, resume=True)
    assert (run_copy / "metrics.jsonl").read_bytes() == before


def test_a_config_json_edited_after_the_state_was_saved_is_refused_on_resume(run_copy, capsys):
    # The state's own rate would win over an edited one, which config.json would then record
    # as used; other edits would go on training a run neither file describes.
    path = run_copy / runfiles.CONFIG
    original = path.read_bytes()
    data = json.loads(original)
    data["train"]["lr"], data["model"]["quantizer"]["beta"] = 0.5, 0.9
    path.write_text(json.dumps(data))
    edited = path.read_bytes()
    state = (run_copy / runfiles.TRAIN_STATE).read_bytes()
    argv = ["train", "--resume", str(run_copy), "--epochs", "3", "--quiet", "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "was saved with other settings than its config.json holds now" in err, err
    assert "model.quantizer.beta is 0.25 there, 0.9 here; train.lr is 0.003 there, 0.5" in err
    assert path.read_bytes() == edited and (run_copy / runfiles.TRAIN_STATE).read_bytes() == state
    path.write_bytes(original)  # put back: the resume goes on
    assert main(argv) == 0


def test_a_state_stopped_past_its_epochs_last_step_is_refused_as_damage(run_copy):
    # Such a count would end the epoch at once, recording it as trained with nothing learned.
    state = run_copy / runfiles.TRAIN_STATE
    tensors, metadata = read_tensors_and_metadata(state, "state")
    info = json.loads(metadata[train_state.METADATA_KEY])
    config = load_config(run_copy)
    config.train.epochs += 1
    steps = training.steps_per_epoch(config.train.train_limit, config.train.batch_size, 1)
    info["step"] = steps  # one past the last step a mid-epoch state can stop at
    state.write_bytes(save_safetensors(tensors, {train_state.METADATA_KEY: json.dumps(info)}))
    kept = {name: (run_copy / name).read_bytes() for name in (runfiles.CONFIG, runfiles.METRICS)}
    with pytest.raises(VqkitError, match="is damaged or incomplete"):
        train(config, run_copy, device="cpu", progress=False, resume=True)
    assert {name: (run_copy / name).read_bytes() for name in kept} == kept
    info["step"] = steps - 1  # the last step it can stop at: resumed
    state.write_bytes(save_safetensors(tensors, {train_state.METADATA_KEY: json.dumps(info)}))
    train(config, run_copy, device="cpu", progress=False, resume=True)


def test_a_new_run_in_a_folder_left_by_a_start_that_never_saved_logs_only_its_own_session(
    tmp_path,
):
    # A start stopped before its first save leaves config.json and environment.jsonl; the new
    # run may reuse the folder, but the old session is not one of its sessions.
    config = preset_config("efficient")
    config.train.epochs, config.train.train_limit, config.train.test_limit = 1, 64, 16
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(config.to_dict()))
    (run_dir / "environment.jsonl").write_text(json.dumps({"command": "train", "old": 1}) + "\n")
    train(config, run_dir, device="cpu", progress=False)
    lines = (run_dir / "environment.jsonl").read_text().splitlines()
    assert len(lines) == 1 and '"old"' not in lines[0] and read_records(run_dir)


def stopped_at_its_first_step(config, run_dir, monkeypatch) -> None:
    """A new run cut off after saving its starting state, before its first step (a kill)."""

    def cut_off(*args, **kwargs):
        raise RuntimeError("cut off")

    with monkeypatch.context() as patch:
        patch.setattr(training, "compute_losses", cut_off)
        with pytest.raises(RuntimeError, match="cut off"):
            train(config, run_dir, device="cpu", progress=False)
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == sorted([*STATE_NAMES, "config.json", "environment.jsonl"]), names


def tiny_config(hidden_dim: int = 64):
    config = preset_config("efficient")
    config.train.epochs, config.train.train_limit, config.train.test_limit = 1, 64, 16
    config.model.hidden_dim = hidden_dim
    return config


def test_a_run_cut_off_before_its_first_step_resumes_into_the_unbroken_run(tmp_path, monkeypatch):
    # Its starting state is what an unbroken run starts from: the resumed weights are the same.
    stopped_at_its_first_step(tiny_config(), tmp_path / "cut", monkeypatch)
    resumed = train(tiny_config(), tmp_path / "cut", device="cpu", progress=False, resume=True)
    unbroken = train(tiny_config(), tmp_path / "whole", device="cpu", progress=False)
    for name, tensor in unbroken.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name


def test_a_run_cut_off_before_its_first_step_may_be_written_over(tmp_path, monkeypatch):
    # Nothing was learned there, so a new run (other settings) may take the folder, as it may
    # a lone config.json; the old starting state goes with it.
    run_dir = tmp_path / "run"
    stopped_at_its_first_step(tiny_config(), run_dir, monkeypatch)
    train(tiny_config(hidden_dim=16), run_dir, device="cpu", progress=False)
    assert load_config(run_dir).model.hidden_dim == 16
    resumed = train(tiny_config(hidden_dim=16), run_dir, device="cpu", progress=False, resume=True)
    assert resumed.epochs_trained == 0  # the new run's own finished state


def test_each_epoch_draws_a_fresh_permutation_from_the_order_generator():
    # Epoch k's batches are the k-th torch.randperm draw of the seeded generator, split into
    # batches: a new order every epoch, not the first one repeated.
    generator = torch.Generator().manual_seed(7)
    reference = torch.Generator().manual_seed(7)
    orders = []
    for _ in range(3):
        batches = epoch_batches(10, 4, generator, distributed.Context())
        assert [len(b) for b in batches] == [4, 4, 2]
        order = torch.cat(batches)
        assert torch.equal(order, torch.randperm(10, generator=reference))
        orders.append(order.tolist())
    assert orders[0] != orders[1] != orders[2]


@pytest.mark.parametrize(
    ("count", "batch_size", "world_size", "expected"),
    # Counted by hand: 10 images in 4s are 4+4+2; 11 over 2 ranks are 5 each (one sits out),
    # in 2s per rank 2+2+1; 13 over 3 ranks are 4 each, in 2s 2+2.
    [(10, 4, 1, 3), (12, 4, 1, 3), (1, 4, 1, 1), (11, 4, 2, 3), (13, 6, 3, 2), (12, 4, 2, 3)],
)
def test_steps_per_epoch_counts_the_last_partial_batch(count, batch_size, world_size, expected):
    # The schedule's length and the resume check both rest on this count: it must be the
    # number of batches each rank really takes, a partial last batch included.
    assert steps_per_epoch(count, batch_size, world_size) == expected
    for rank in range(world_size):
        context = distributed.Context(rank=rank, world_size=world_size)
        generator = torch.Generator().manual_seed(0)
        assert len(epoch_batches(count, batch_size, generator, context)) == expected


def test_a_ctrl_c_in_the_last_epochs_evaluation_ends_a_finished_run(tmp_path, monkeypatch):
    # It said "continue it with: vqkit train --resume", a resume that had nothing to train
    # (and left the comparison figure unwritten); now the figure is written, then the stop
    # says the run is finished.
    real, evaluated = training.evaluate_reconstruction, []

    def ctrl_c_in_epoch_2(*args, **kwargs):
        evaluated.append(1)
        if len(evaluated) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "evaluate_reconstruction", ctrl_c_in_epoch_2)
    config = preset_config("efficient")
    config.train.epochs, config.train.train_limit, config.train.test_limit = 2, 64, 16
    with pytest.raises(training.TrainingInterrupted) as stopped:
        train(config, tmp_path / "run", device="cpu", progress=False)
    assert stopped.value.outcome == "the run had already finished its 2 epochs and is saved."
    state = json.loads((tmp_path / "run" / runfiles.TRAIN_STATE_META).read_text())
    assert state["epochs_done"] == 2 and (tmp_path / "run" / runfiles.RECONSTRUCTIONS).is_file()


def test_a_second_ctrl_c_stops_at_once_and_names_the_last_saved_state(tmp_path, monkeypatch):
    # It ended in a bare "vqkit: interrupted." though the state saved before (here the starting
    # one, at step 0) resumes.
    real_step = training._Run.train_step

    def pressed_twice(self, batch, global_step):
        if global_step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # a request: the loop would save at this step
            os.kill(os.getpid(), signal.SIGINT)  # the user does not want to wait
        return real_step(self, batch, global_step)

    monkeypatch.setattr(training._Run, "train_step", pressed_twice)
    config = preset_config("efficient")
    config.train.epochs, config.train.train_limit, config.train.test_limit = 1, 640, 16
    run_dir = tmp_path / "run"
    with pytest.raises(training.TrainingInterrupted) as stopped:
        train(config, run_dir, device="cpu", progress=False)
    expected = (
        f"stopped at once; its last saved state continues with: vqkit train --resume {run_dir}"
    )
    assert stopped.value.outcome == expected
    assert json.loads((run_dir / runfiles.TRAIN_STATE_META).read_text())["step"] == 0
