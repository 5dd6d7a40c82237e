"""Every user-facing failure is one sentence on stderr and exit status 2, never a traceback.

Each case drives the real command line (in-process through ``vqkit.cli.main``; a few through a
subprocess) and, where files exist, checks that nothing already saved was lost or damaged.
"""

from __future__ import annotations

import errno
import gzip
import json
import math
import os
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import fails_cleanly, refused_by_parser
from PIL import Image
from process_helpers import child_env, vqkit_command

from vqkit import fileio, runfiles, training
from vqkit.checkpoint import load_model, save_config
from vqkit.cli import codebook_cmd, evaluate_cmd, main
from vqkit.config import preset_config
from vqkit.errors import VqkitError

TINY = [
    "--preset", "efficient", "--train-limit", "256", "--test-limit", "64", "--batch-size", "32",
    "--hidden-dim", "16", "--embedding-dim", "8", "--num-embeddings", "16", "--quiet",
    "--device", "cpu",
]  # fmt: skip
IMAGES, LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"


def embedded(name: str) -> bytes:
    return resources.files("vqkit.data").joinpath("mnist", name + ".gz").read_bytes()


def data_dir_with(tmp_path: Path, images: bytes, images_name: str = IMAGES + ".gz") -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / images_name).write_bytes(images)
    (folder / (LABELS + ".gz")).write_bytes(embedded(LABELS))
    return folder


def idx_header(count: int) -> bytes:
    return b"\x00\x00\x08\x03" + count.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2


# --- datasets ----------------------------------------------------------------------------


def test_truncated_gzip(tmp_path, capsys):
    whole = embedded(IMAGES)
    folder = data_dir_with(tmp_path, whole[: len(whole) // 2])
    fails_cleanly(capsys, ["train", *TINY, "--data-dir", str(folder)], "truncated gzip")


def test_wrong_magic(tmp_path, capsys):
    folder = data_dir_with(tmp_path, gzip.compress(b"\x08\x01" + idx_header(1)[2:] + bytes(784)))
    fails_cleanly(capsys, ["train", *TINY, "--data-dir", str(folder)], "bad magic")


def test_wrong_counts(tmp_path, capsys):
    folder = data_dir_with(tmp_path, gzip.compress(idx_header(60000) + bytes(784 * 10)))
    fails_cleanly(capsys, ["train", *TINY, "--data-dir", str(folder)], "too short")


def test_checksum_mismatch(tmp_path, capsys):
    content = bytearray(gzip.decompress(embedded(IMAGES)))
    content[5000] ^= 0xFF  # one pixel changed: header and counts still fine
    folder = data_dir_with(tmp_path, bytes(content), images_name=IMAGES)
    fails_cleanly(capsys, ["train", *TINY, "--data-dir", str(folder)], "checksum")


def test_data_dir_without_the_dataset(tmp_path, capsys):
    fails_cleanly(capsys, ["train", *TINY, "--data-dir", str(tmp_path)], "has no mnist train")


# --- run folders and checkpoints -----------------------------------------------------------


def edit_config(run_dir: Path, edit) -> None:
    path = run_dir / runfiles.CONFIG
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_missing_run_folder_or_a_file_given_as_one(tmp_path, capsys):
    fails_cleanly(capsys, ["evaluate", str(tmp_path / "nope")], "does not exist")
    (tmp_path / "a-file").write_text("x")
    for command in ("evaluate", "report"):
        fails_cleanly(capsys, [command, str(tmp_path / "a-file")], "is a file, not a run folder")


def test_a_path_holding_a_newline_stays_on_the_refusals_one_line(tmp_path, capsys):
    # Printed raw, the name's newline split the sentence in two. A narrow no-break space (in
    # macOS screenshot names) is no control character: it stays, so the path can be copied.
    odd = tmp_path / "first\nsecond\tthird\u202fAM"
    err = fails_cleanly(capsys, ["evaluate", str(odd)], "does not exist")
    assert "first\\nsecond\\tthird\u202fAM" in err, err


def test_incomplete_run_folder_without_weights(run_copy, capsys):
    (run_copy / runfiles.WEIGHTS).unlink()
    fails_cleanly(capsys, ["evaluate", str(run_copy)], "model weights", "does not exist")


def test_incompatible_version(run_copy, capsys):
    edit_config(run_copy, lambda d: d.update(version=99))
    fails_cleanly(capsys, ["evaluate", str(run_copy)], "incompatible")


def test_config_with_unknown_fields(run_copy, capsys):
    edit_config(run_copy, lambda d: d["model"].update(dropout=0.1))
    fails_cleanly(capsys, ["evaluate", str(run_copy)], "unknown fields: dropout")


def test_a_bad_value_in_config_json_is_blamed_on_the_file(run_copy, capsys):
    # The range check's sentence names the flag that sets the value; here the file holds it.
    edit_config(run_copy, lambda d: d["model"]["quantizer"].update(beta=-1))
    fails_cleanly(
        capsys, ["evaluate", str(run_copy)],
        f"'{run_copy / runfiles.CONFIG}' cannot be used: the commitment weight beta must be",
    )  # fmt: skip
    # The same file given to train --config, as a file of its own.
    settings = run_copy / "settings.json"
    settings.write_bytes((run_copy / runfiles.CONFIG).read_bytes())
    fails_cleanly(
        capsys, ["train", "--config", str(settings)],
        f"'{settings}' cannot be used: the commitment weight beta must be",
    )  # fmt: skip


def test_config_that_is_not_json(run_copy, capsys):
    (run_copy / runfiles.CONFIG).write_text("{not json")
    fails_cleanly(capsys, ["reconstruct", str(run_copy), "--out", "x.png"], "not JSON")


def test_checkpoint_shapes_do_not_fit_config(run_copy, capsys):
    edit_config(run_copy, lambda d: d["model"].update(hidden_dim=32))
    fails_cleanly(capsys, ["evaluate", str(run_copy)], "does not fit its configuration", "shape")


def test_a_config_edited_to_huge_sizes_is_refused_before_the_model_is_built(
    run_copy, capsys, monkeypatch
):
    """hidden_dim 4096, 100 residual blocks, embedding_dim 4096: valid sizes, 34 billion
    parameters. An 850-byte config.json made every loading command allocate 128 GiB before the
    weights could say they differ; the sizes are now checked on a model on the meta device."""
    from vqkit.model import VQVAE

    built_on = []
    real_init = VQVAE.__init__

    def recording_init(self, *args, **kwargs):
        built_on.append(torch.empty(0).device.type)  # the device new tensors go to
        if built_on[-1] != "meta":  # 128 GiB: stop here rather than let the machine swap
            raise AssertionError("the model was built in memory")
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(VQVAE, "__init__", recording_init)
    edit_config(
        run_copy,
        lambda d: (
            d["model"].update(hidden_dim=4096, residual_blocks=100),
            d["model"]["quantizer"].update(embedding_dim=4096),
        ),
    )
    fails_cleanly(capsys, ["evaluate", str(run_copy)], "does not fit its configuration")
    assert built_on == ["meta"]


def test_resume_without_a_saved_state(run_copy, capsys):
    (run_copy / runfiles.TRAIN_STATE).unlink()
    fails_cleanly(capsys, ["train", "--resume", str(run_copy)], "no resumable state")


def refused_before_anything_is_written(run_copy, capsys, command, sentence) -> None:
    """``command`` (with ``{run}`` for the run folder) fails in ``sentence``, every file of the
    run byte for byte as it was."""
    before = {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()}
    argv = [part.replace("{run}", str(run_copy)) for part in command]
    fails_cleanly(capsys, argv, sentence)
    assert {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()} == before


@pytest.mark.parametrize(
    ("command", "name"),
    [
        (["train", "--resume", "{run}", "--epochs", "2"], runfiles.TRAIN_STATE_META),
        (["train", "--resume", "{run}", "--epochs", "2"], runfiles.METRICS),
        (["train-prior", "{run}", "--epochs", "1"], runfiles.PRIOR_STATE_META),
        (["train-prior", "{run}", "--epochs", "1"], runfiles.CODES_META),
    ],
)
def test_a_folder_in_place_of_a_run_file_is_refused_before_anything_is_written(
    run_copy, capsys, command, name
):
    """A resume with train_state.json made a folder wrote the epoch's weights and metrics,
    then failed on the state: the run's files no longer agreed."""
    path = run_copy / name
    path.unlink(missing_ok=True)
    path.mkdir()
    sentence = f"'{path}' is a folder where the run keeps a file"
    refused_before_anything_is_written(run_copy, capsys, command, sentence)


@pytest.mark.parametrize(
    ("command", "name"),
    [
        (["train", "--resume", "{run}", "--epochs", "2"], runfiles.METRICS),
        (["train", "--resume", "{run}", "--epochs", "2"], runfiles.ENVIRONMENT),
        (["train-prior", "{run}", "--epochs", "1"], runfiles.ENVIRONMENT),
        (["train-prior", "{run}", "--epochs", "1"], runfiles.PRIOR_METRICS),
    ],
)
def test_a_records_file_linked_elsewhere_is_refused_before_anything_is_written(
    run_copy, tmp_path, capsys, command, name
):
    """Appending rewrites a records file whole: a link in a received run folder had the
    content of the file it points to (a secret, say) copied into the run folder."""
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"not the run's to copy\n")
    path = run_copy / name
    path.unlink(missing_ok=True)
    path.symlink_to(secret)
    sentence = f"'{path}' is a symbolic link where the run keeps its own records"
    refused_before_anything_is_written(run_copy, capsys, command, sentence)
    assert path.is_symlink() and secret.read_bytes() == b"not the run's to copy\n"


def test_resume_with_conflicting_flags(run_copy, capsys):
    before = {p.name: p.read_bytes() for p in run_copy.iterdir()}
    fails_cleanly(
        capsys, ["train", "--resume", str(run_copy), "--lr", "0.5", "--hidden-dim", "8"],
        "cannot take --lr, --hidden-dim",
    )  # fmt: skip
    assert {p.name: p.read_bytes() for p in run_copy.iterdir()} == before


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_a_scheduled_run_cannot_be_lengthened_and_nothing_is_written(tmp_path, capsys, schedule):
    run_dir = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--lr-schedule", schedule,
                 "--out", str(run_dir)]) == 0  # fmt: skip
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    fails_cleanly(
        capsys, ["train", "--resume", str(run_dir), "--epochs", "2", "--quiet"],
        f"follows a {schedule} learning-rate schedule", "cannot be resumed with --epochs 2",
    )  # fmt: skip
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0  # its own length is fine


def test_a_constant_rate_run_trains_longer_when_resumed(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(run_dir)]) == 0
    assert main(["train", "--resume", str(run_dir), "--epochs", "2", "--quiet"]) == 0
    assert json.loads((run_dir / runfiles.CONFIG).read_text())["train"]["epochs"] == 2
    assert len((run_dir / runfiles.METRICS).read_text().splitlines()) == 2
    # Fewer epochs than it trained: refused in a sentence, nothing written.
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    fails_cleanly(
        capsys, ["train", "--resume", str(run_dir), "--epochs", "1", "--quiet"],
        f"The run in '{run_dir}' has already trained 2 epochs, more than --epochs 1.",
    )  # fmt: skip
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_a_finished_run_whose_psnr_was_recorded_as_null_resumes(run_copy, capsys):
    # A perfect reconstruction's infinite PSNR is null in metrics.jsonl; the summary of a
    # finished run resumed formatted that null and crashed. The PSNR follows from the MSE.
    metrics = run_copy / runfiles.METRICS
    record = json.loads(metrics.read_text().splitlines()[-1])
    metrics.write_text(json.dumps({**record, "test_psnr": None}) + "\n")
    assert main(["train", "--resume", str(run_copy), "--quiet"]) == 0
    expected = 10 * math.log10(1 / record["test_mse"])
    assert f"test PSNR:       {expected:.2f} dB" in capsys.readouterr().out


def test_resuming_a_finished_run_says_so_and_records_no_session(run_copy, capsys):
    """Nothing is left to train: a note naming --epochs, exit 0, the weights and metrics
    untouched and no new training session in environment.jsonl (the report counts those)."""

    def files() -> dict[str, tuple[bytes, int]]:  # the modification times too: `vqkit runs`
        # calls a report older than any of the run's files outdated
        return {
            p.name: (p.read_bytes(), p.stat().st_mtime_ns)
            for p in run_copy.iterdir()
            if p.is_file()
        }

    before = files()
    assert runfiles.RECONSTRUCTIONS in before and runfiles.WEIGHTS in before
    assert main(["train", "--resume", str(run_copy), "--seed", "0", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "had already trained its 1 epoch, so nothing more was trained" in captured.err
    assert "--epochs N (more than 1)" in captured.err and "test MSE" in captured.out
    assert files() == before
    # Flags that only steer a training are not recorded when none follows.
    steer = ["--checkpoint-every", "5", "--skip-nonfinite", "2", "--epochs", "1"]
    assert main(["train", "--resume", str(run_copy), *steer, "--quiet"]) == 0
    assert files() == before


def test_training_into_an_existing_run_is_refused(run_copy, capsys):
    weights = (run_copy / runfiles.WEIGHTS).read_bytes()
    fails_cleanly(capsys, ["train", *TINY, "--out", str(run_copy)], "already holds", "--resume")
    assert (run_copy / runfiles.WEIGHTS).read_bytes() == weights


@pytest.mark.parametrize("leftover", [runfiles.METRICS, runfiles.PRIOR_WEIGHTS])
def test_training_into_a_folder_with_another_runs_files_is_refused(leftover, tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / leftover).write_bytes(b"old")
    fails_cleanly(capsys, ["train", *TINY, "--out", str(folder)], "files of another run", leftover)
    assert sorted(p.name for p in folder.iterdir()) == [leftover]
    # A config.json (a start stopped before its first step) is written over, and a report
    # made of that start goes with it.
    (folder / leftover).unlink()
    save_config(folder, preset_config("efficient"))
    (folder / runfiles.REPORT).write_text("<p>a report of the start, with nothing trained</p>")
    assert main(["train", *TINY, "--out", str(folder)]) == 0
    assert not (folder / runfiles.REPORT).exists()


@pytest.mark.parametrize("name", [runfiles.CONFIG, runfiles.REPORT, runfiles.ENVIRONMENT])
def test_a_projects_own_files_with_a_runs_names_are_not_taken_for_a_start(name, tmp_path, capsys):
    # Only beside the vqkit config.json a start writes first are these a start's leftovers; a
    # project's own config.json, report.html or log were written over or deleted.
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / name).write_text('{"name": "my-project"}')
    if name != runfiles.CONFIG:
        (folder / runfiles.CONFIG).write_text('{"name": "my-project"}')
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    fails_cleanly(capsys, ["train", *TINY, "--out", folder], "not a run's ('")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_temp_files_left_by_a_kill_do_not_block_a_new_run(tmp_path, capsys):
    # A process killed in mid-write leaves its atomic write's temp file (named as mkstemp
    # names it here); a new run takes the folder and removes them. A user's own file is kept.
    folder = tmp_path / "run"
    folder.mkdir()
    save_config(folder, preset_config("efficient"))
    left = []
    for name in (runfiles.CONFIG, runfiles.METRICS):
        fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        left.append(Path(temp).name)
    assert main(["train", *TINY, "--out", str(folder)]) == 0
    assert not [name for name in left if (folder / name).exists()]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / ".notes.abcd1234.tmp").write_text("mine")
    fails_cleanly(capsys, ["train", *TINY, "--out", mine], "not a run's ('.notes.abcd1234.tmp')")


def test_training_into_a_folder_of_ones_own_files_is_refused(tmp_path, capsys):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    fails_cleanly(capsys, ["train", *TINY, "--out", folder], "not a run's ('notes.txt')")
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    fails_cleanly(capsys, ["train", "--resume", folder / "notes.txt"], "is a file, not a run")


# --- flags ---------------------------------------------------------------------------------

BAD_FLAGS = [
    (["--lr", "0"], "learning rate"),
    (["--lr", "-0.001"], "learning rate"),
    (["--lr", "nan"], "learning rate"),
    (["--beta", "-0.5"], "beta"),
    (["--beta", "inf"], "beta"),
    (["--hidden-dim", "0"], "hidden width"),
    (["--embedding-dim", "-2"], "embedding dimension"),
    (["--num-embeddings", "1"], "at least 2 codes"),
    (["--checkpoint-every", "0"], "--checkpoint-every"),
    (["--skip-nonfinite", "-1"], "--skip-nonfinite"),
    (["--lr-schedule", "onecycle", "--warmup-fraction", "2"], "(--warmup-fraction)"),
    (["--residual-blocks", "-1"], "(--residual-blocks)"),
]


@pytest.mark.parametrize(("flags", "fragment"), BAD_FLAGS, ids=lambda v: " ".join(v))
def test_out_of_range_flags(flags, fragment, tmp_path, capsys):
    fails_cleanly(capsys, ["train", *TINY, *flags, "--out", str(tmp_path / "run")], fragment)
    assert not (tmp_path / "run").exists()


# Counts are refused while the command line is read, in the words train-prior uses too.
COUNT_FLAGS = ["--epochs", "--batch-size", "--eval-batch-size", "--train-limit", "--test-limit"]


@pytest.mark.parametrize("flag", COUNT_FLAGS)
@pytest.mark.parametrize("value", ["0", "-3"])
def test_counts_below_one_are_refused_by_the_parser(flag, value, tmp_path, capsys):
    argv = ["train", *TINY, flag, value, "--out", tmp_path / "run"]
    refused_by_parser(capsys, argv, f"argument {flag}: must be a whole number >= 1, not {value}")
    assert not (tmp_path / "run").exists()


def test_train_and_train_prior_word_a_zero_test_limit_alike(tmp_path, capsys):
    def reason(err: str) -> str:  # the sentence between the command's name and its help hint
        return err.split(" error: ", 1)[1].split(" (see ", 1)[0]

    train_err = refused_by_parser(capsys, ["train", "--test-limit", "0"], "--test-limit")
    prior_err = refused_by_parser(capsys, ["train-prior", tmp_path, "--test-limit", "0"], "--test")
    assert reason(train_err) == reason(prior_err)


# --- output folder and disk ----------------------------------------------------------------


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    fails_cleanly(capsys, ["train", *TINY, "--out", str(blocker / "run")], str(blocker))
    assert blocker.read_text() == "not a folder"


def test_unwritable_reconstruct_output(run_copy, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    fails_cleanly(capsys, ["reconstruct", str(run_copy), "--out", str(blocker / "r.png")])


def fsync_failing_while(full: dict):
    """An os.fsync that fails as on a full disk (ENOSPC) while ``full["now"]`` is true."""
    real_fsync = os.fsync

    def fsync(fd):
        if full["now"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    return fsync


def test_full_disk_keeps_everything_saved_and_resumes(monkeypatch, tmp_path, capsys):
    """The disk fills up after epoch 1 was saved: epoch 2's first write fails cleanly."""
    full = {"now": False}
    real_fsync, real_save = os.fsync, training.train_state.save

    def save_then_fill(*args, **kwargs):
        real_save(*args, **kwargs)
        full["now"] = args[1].epochs_done >= 1  # not the state a new run saves at its start

    monkeypatch.setattr(fileio.os, "fsync", fsync_failing_while(full))
    monkeypatch.setattr(training.train_state, "save", save_then_fill)
    run_dir = tmp_path / "run"
    fails_cleanly(
        capsys, ["train", *TINY, "--epochs", "2", "--out", str(run_dir)], "the disk is full"
    )
    saved = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    assert sorted(saved) == sorted(
        [runfiles.CONFIG, runfiles.ENVIRONMENT, runfiles.WEIGHTS, runfiles.METRICS,
         runfiles.TRAIN_STATE, runfiles.TRAIN_STATE_META]
    ), "a temp file was left or a file is missing"  # fmt: skip
    load_model(run_dir)  # epoch 1's weights are intact
    assert json.loads(saved[runfiles.TRAIN_STATE_META])["epochs_done"] == 1
    # With space again, the run continues from epoch 1 and finishes.
    monkeypatch.setattr(fileio.os, "fsync", real_fsync)
    monkeypatch.setattr(training.train_state, "save", real_save)
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    lines = (run_dir / runfiles.METRICS).read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_full_disk_at_the_first_epochs_save_leaves_a_resumable_run(monkeypatch, tmp_path, capsys):
    """The disk fills up as epoch 1 ends (its weights and metrics written, its state not): the
    run must still resume, not be left with weights that no command continues or replaces."""
    real_save_weights = training.save_weights
    full = {"now": False}

    def weights_then_metrics_then_full(*args, **kwargs):
        real_save_weights(*args, **kwargs)
        real_append = training.append_jsonl

        def append_then_fill(*a, **k):
            real_append(*a, **k)
            full["now"] = True

        monkeypatch.setattr(training, "append_jsonl", append_then_fill)

    monkeypatch.setattr(fileio.os, "fsync", fsync_failing_while(full))
    monkeypatch.setattr(training, "save_weights", weights_then_metrics_then_full)
    run_dir = tmp_path / "run"
    fails_cleanly(
        capsys, ["train", *TINY, "--epochs", "2", "--out", str(run_dir)], "the disk is full"
    )
    assert (run_dir / runfiles.WEIGHTS).exists() and (run_dir / runfiles.TRAIN_STATE).exists()
    monkeypatch.undo()
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    lines = (run_dir / runfiles.METRICS).read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


# --- through a real process -----------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "no/such/run"],
        ["train", "--lr", "0"],
        ["train", "--resume", "no/such/run"],
    ],
    ids=["missing-run", "zero-learning-rate", "resume-missing"],
)
def test_failures_in_a_real_process(argv, tmp_path):
    done = subprocess.run(
        vqkit_command(*argv),
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    err = done.stderr.strip()
    assert done.returncode == 2
    assert err.startswith("vqkit: error: ") and "\n" not in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []  # a failed command leaves nothing behind


# --- PNG inputs -------------------------------------------------------------------------------


def write_png(path: Path, size: tuple[int, int], mode: str = "L", fmt: str = "PNG") -> Path:
    depth = {"L": 255, "RGB": (255, 0, 0), "I;16": 65535}[mode]
    Image.new(mode, size, depth).save(path, format=fmt)
    return path


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: write_png(p, (32, 32)), "32×32"),
        (lambda p: write_png(p, (28, 14)), "28×14"),
        (lambda p: write_png(p, (32, 32), mode="I;16"), "32×32"),  # 16-bit gray is read
        (lambda p: write_png(p, (28, 28), fmt="JPEG"), "not a PNG"),
        (lambda p: p.write_bytes(write_png(p, (28, 28)).read_bytes()[:-30]), "truncated"),
        (lambda p: p.write_bytes(b"hello"), "not an image"),
    ],
    ids=["32x32", "28x14", "16-bit-32x32", "jpeg", "truncated", "text"],
)
def test_png_inputs_that_are_not_28x28_grayscale(run_copy, tmp_path, capsys, make, fragment):
    png = tmp_path / "input.png"
    make(png)
    out = tmp_path / "codes.npy"
    fails_cleanly(capsys, ["encode", str(run_copy), str(png), "--out", str(out)], fragment)
    assert not out.exists()


def test_an_empty_image_reference_is_called_empty(run_copy, tmp_path, capsys):
    # Path("") reads as ".", which the message used to quote as the reference.
    out = tmp_path / "codes.npy"
    fails_cleanly(capsys, ["encode", run_copy, "", "--out", out], "An image reference is empty")
    assert not out.exists()


def test_a_convertible_rgb_png_is_accepted(run_copy, tmp_path, capsys):
    png = write_png(tmp_path / "rgb.png", (28, 28), mode="RGB")
    out = tmp_path / "codes.npy"
    assert main(["encode", str(run_copy), str(png), "--out", str(out)]) == 0, capsys.readouterr()
    assert np.load(out, allow_pickle=False).shape == (1, 7, 7)


def test_running_out_of_memory_is_one_sentence_and_other_errors_are_not_hidden(
    small_run, monkeypatch, capsys
):
    def allocation_fails(args):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 3221225472 bytes. Error code 12"
        )

    monkeypatch.setattr(evaluate_cmd, "run", allocation_fails)
    fails_cleanly(capsys, ["evaluate", str(small_run.run_dir)], "Out of memory (3.0 GiB at once)")
    # The sentence names only what the failing command can lower.
    monkeypatch.setattr(codebook_cmd, "run", allocation_fails)
    argv = ["codebook", str(small_run.run_dir), "--out", "unused"]
    err = fails_cleanly(capsys, argv, "fewer --images")
    assert "--batch-size" not in err

    def bug(args):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(evaluate_cmd, "run", bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(["evaluate", str(small_run.run_dir)])


@pytest.mark.parametrize(
    ("device", "fragment"),
    [
        ("cuda:abc", "Unknown device 'cuda:abc'; use auto, cpu, cuda or cuda:N."),
        ("cudax", "Unknown device 'cudax'"),
        ("cuda:3", "There is no GPU 3 (--device cuda:3); this machine has 1, numbered 0 to 0."),
    ],
)
def test_a_mistyped_or_missing_gpu_is_one_sentence(device, fragment, monkeypatch, tmp_path, capsys):
    # As on a one-GPU machine: these names used to reach torch and end in a traceback.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    fails_cleanly(
        capsys, ["train", *TINY[:-2], "--device", device, "--out", tmp_path / "r"], fragment
    )
    assert not (tmp_path / "r").exists()


def test_an_unknown_demo_preset_is_refused_by_the_parser_with_the_choices(tmp_path, capsys):
    argv = ["demo", "--preset", "turbo", "--out", tmp_path / "demo"]
    err = refused_by_parser(capsys, argv, "argument --preset: invalid choice: 'turbo'")
    assert "'best', 'default', 'efficient', 'fast'" in err
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize(("number", "said"), [(2, "interrupted"), (15, "stopped by SIGTERM")])
def test_a_training_stop_a_command_does_not_report_itself_keeps_its_signals_status(
    monkeypatch, capsys, tmp_path, number, said
):
    # The demo trains inside its own command: a SIGTERM that stopped its training (saved) said
    # "interrupted" and exited 130, as for Ctrl-C, instead of 143.
    def stopped(*args, **kwargs):
        raise training.TrainingInterrupted(tmp_path / "run", signal_number=number)

    monkeypatch.setattr("vqkit.demo.run_demo", stopped)  # demo_cmd imports it when it runs
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 128 + number
    assert capsys.readouterr().err == f"vqkit: {said}.\n"


def test_a_reader_that_leaves_early_ends_the_command_quietly(tmp_path):
    # `vqkit evaluate RUN | head -1` printed a BrokenPipeError traceback. The pipe's read end is
    # closed before the program starts writing (its start-up takes far longer than this).
    process = subprocess.Popen(
        vqkit_command("runs"),
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    process.stdout.close()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 141 and stderr == b""


def test_files_and_folders_this_user_may_not_read_get_a_sentence_not_a_traceback(
    run_copy, monkeypatch, capsys
):
    # Root ignores permissions, so the refusals an unreadable file or folder gives are raised
    # by hand where the system raises them: reading a file, and looking at a folder.
    real_open, real_stat = os.open, Path.stat

    def open_file(path, *args, **kwargs):
        if Path(path).name == runfiles.CONFIG:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_file)
    config = run_copy / runfiles.CONFIG
    fails_cleanly(capsys, ["evaluate", run_copy], f"'{config}' cannot be read: permission denied")
    monkeypatch.setattr(os, "open", real_open)

    def stat(path, *args, **kwargs):
        if path == run_copy:
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    for argv in (["evaluate", run_copy], ["train", "--resume", run_copy, "--quiet"]):
        fails_cleanly(capsys, argv, f"vqkit may not use '{run_copy}' (permission denied)")


def test_score_refuses_a_run_folder_it_cannot_write_before_any_work(run_copy, monkeypatch, capsys):
    # scores.json is written last, after minutes of sampling and classifying: a read-only
    # folder is refused first. (Root ignores permissions: the refusal is made by hand.)
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode: mode != os.W_OK and real_access(path, mode)
    )

    def work(*args, **kwargs):
        raise AssertionError("scoring began")

    monkeypatch.setattr("vqkit.score.load_model", work)
    fails_cleanly(capsys, ["score", run_copy, "--n", "20"], f"Cannot write into '{run_copy}'")
    assert not (run_copy / runfiles.SCORES).exists()


@pytest.mark.parametrize("failing", ["resumed_history", "record_environment"])
def test_a_resume_that_fails_reading_its_run_leaves_the_config_as_it_was(
    failing, run_copy, monkeypatch, capsys
):
    # An unreadable metrics.jsonl or environment.jsonl stopped the resume after config.json
    # had been rewritten with the new --epochs, which no training then followed.
    config = (run_copy / runfiles.CONFIG).read_bytes()

    def unreadable(*args, **kwargs):
        raise VqkitError("The records file cannot be read: Permission denied.")

    monkeypatch.setattr(training, failing, unreadable)
    argv = ["train", "--resume", run_copy, "--epochs", "2", "--quiet"]
    fails_cleanly(capsys, argv, "cannot be read")
    assert (run_copy / runfiles.CONFIG).read_bytes() == config


@pytest.mark.parametrize("stdout", ["full", "closed"])
def test_output_that_cannot_be_written_is_one_sentence_or_nothing(tmp_path, stdout):
    # `vqkit runs > /dev/full` and `vqkit runs >&-` ended in tracebacks (OSError, and an
    # AttributeError of the missing sys.stdout).
    if stdout == "full" and not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    with open("/dev/full" if stdout == "full" else os.devnull, "wb") as full:
        process = subprocess.Popen(
            vqkit_command("runs", str(tmp_path)),
            env=child_env(),
            stdout=full if stdout == "full" else None,
            stderr=subprocess.PIPE,
            preexec_fn=None if stdout == "full" else (lambda: os.close(1)),
        )
        _, stderr = process.communicate(timeout=60)
    if stdout == "full":
        said = b"vqkit: error: vqkit could not write its output: no space is left on the device.\n"
        assert (process.returncode, stderr) == (2, said)
    else:
        assert (process.returncode, stderr) == (0, b"")


def test_a_path_with_a_name_too_long_is_one_sentence(tmp_path, capsys):
    long = tmp_path / ("x" * 300)
    fails_cleanly(capsys, ["evaluate", long], f"The path '{long}' is too long: a name in it is")
