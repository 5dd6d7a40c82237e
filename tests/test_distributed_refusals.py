"""What a two-process torchrun job says when it refuses its settings or loses a process: a
refusal every process meets alike is one sentence per machine, not one per process, and when
one process dies the one left says so and how to resume (with torchrun)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from process_helpers import TORCHRUN, child_env, run_worker, vqkit_command

from vqkit import runfiles

CRASH_WORKER = Path(__file__).with_name("crash_worker.py")
SMALL = ["--preset", "efficient", "--test-limit", "64", "--epochs", "1"]


def torchrun_vqkit(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    command = [*TORCHRUN, "-m", "vqkit", *args, "--quiet", "--device", "cpu"]
    return subprocess.run(
        command, env=child_env(), capture_output=True, text=True, timeout=300, cwd=cwd
    )


@pytest.mark.parametrize(
    ("flags", "sentence"),
    [
        (
            ["--train-limit", "256", "--batch-size", "127"],
            "The batch size 127 must be a multiple of the 2 processes",
        ),
        (
            # One image for two processes: one of them had an empty batch, whose NaN loss was
            # reported as a non-finite loss, by both.
            ["--train-limit", "1", "--batch-size", "2"],
            "1 training image cannot be shared among 2 processes; train on more images or "
            "with fewer processes.",
        ),
        (  # rank 0 decides about the folder and tells the others
            ["--train-limit", "256", "--out", "a-file/run"],
            "Cannot create the folder 'a-file/run'",
        ),
    ],
)
def test_a_refusal_every_process_meets_after_joining_is_said_once(tmp_path, flags, sentence):
    (tmp_path / "a-file").write_text("not a folder")
    done = torchrun_vqkit(tmp_path, "train", *SMALL, *flags)
    assert done.returncode != 0
    assert done.stderr.count("vqkit: error: ") == 1, done.stderr[-3000:]
    assert sentence in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_a_new_torchrun_run_into_a_folder_holding_one_is_refused_once_with_a_torchrun_hint(
    tmp_path,
):
    flags = [*SMALL, "--train-limit", "64", "--batch-size", "32", "--out", "run"]
    done = subprocess.run(
        vqkit_command("train", *flags, "--quiet", "--device", "cpu"),
        env=child_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    weights = (tmp_path / "run" / runfiles.WEIGHTS).read_bytes()
    again = torchrun_vqkit(tmp_path, "train", *flags)
    assert again.returncode != 0
    sentence = (
        "vqkit: error: The folder 'run' already holds a run (finished or not); continue it with "
        "torchrun --nproc-per-node 2 -m vqkit train --resume run or choose another --out."
    )
    assert again.stderr.count("vqkit: error: ") == 1 and sentence in again.stderr, again.stderr
    assert (tmp_path / "run" / runfiles.WEIGHTS).read_bytes() == weights


def test_a_scheduled_run_resumed_at_an_epoch_end_with_other_processes_is_told_why(tmp_path):
    # 129 images in global batches of 16: 9 steps an epoch for one process, 8 for two (each
    # takes 64 images). A crash in epoch 2 leaves the state of epoch 1's end; with one process
    # the cosine schedule fitted to 16 steps would need 18. The refusal used to blame --epochs.
    flags = [
        "--preset", "efficient", "--train-limit", "129", "--test-limit", "64", "--epochs", "2",
        "--batch-size", "16", "--lr-schedule", "cosine",
    ]  # fmt: skip
    crashed = run_worker(tmp_path, CRASH_WORKER, "12", "train", *flags, "--out", "run")
    assert crashed.returncode != 0
    state = json.loads((tmp_path / "run" / runfiles.TRAIN_STATE_META).read_text())
    assert (state["epochs_done"], state["step"]) == (1, 0), crashed.stderr[-2000:]

    def resume_in_one_process(*flags: str) -> str:
        done = subprocess.run(
            vqkit_command("train", "--resume", "run", *flags, "--quiet", "--device", "cpu"),
            env=child_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 2
        return done.stderr

    assert (
        "follows a cosine learning-rate schedule fitted to 16 steps with 2 processes; with 1 "
        "process the same epochs take 18 steps (each process trains on an equal share of the "
        "images), so resume it with 2." in resume_in_one_process()
    )
    # Three epochs would not fit the schedule with two processes either: --epochs is to blame.
    assert "cannot be resumed with --epochs 3 on these images (27 steps" in resume_in_one_process(
        "--epochs", "3"
    )


@pytest.mark.parametrize("lost", ["0", "1"])
def test_the_process_left_when_another_dies_says_so_and_how_to_resume(tmp_path, lost):
    # Rank 0 holds the job's store: when it died, the other process waited for it while
    # leaving the group until torchrun's SIGTERM killed it, and nothing was said at all.
    flags = [*SMALL, "--train-limit", "512", "--batch-size", "64", "--checkpoint-every", "3"]
    done = run_worker(tmp_path, CRASH_WORKER, f"5@{lost}", "train", *flags, "--out", "run")
    assert done.returncode != 0
    sentence = (
        "vqkit: error: Another process of this torchrun job stopped or lost its connection "
        "(torchrun's report names it); the run's last saved state is kept, and torchrun "
        "--nproc-per-node 2 -m vqkit train --resume run continues it."
    )
    assert done.stderr.count(sentence) == 1, done.stderr[-3000:]
    state = json.loads((tmp_path / "run" / runfiles.TRAIN_STATE_META).read_text())
    assert (state["epochs_done"], state["step"]) == (0, 3)
