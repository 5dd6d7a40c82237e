"""Kill and interrupt real training processes, resume them, and compare with an unbroken run.

With --deterministic, a run that is SIGKILLed (or Ctrl-C'd) mid-epoch and resumed must end with
the very same bytes of weights as one that never stopped.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from process_helpers import WAIT_SECONDS, child_env, vqkit_command, wait_for_mid_epoch_state

from vqkit import runfiles
from vqkit.checkpoint import read_tensors

# A small model and enough steps per epoch (2000 / 16 = 125) that a kill lands mid-epoch.
TRAIN_FLAGS = [
    "--preset", "efficient", "--epochs", "2", "--train-limit", "2000", "--test-limit", "200",
    "--batch-size", "16", "--hidden-dim", "32", "--embedding-dim", "16", "--num-embeddings", "32",
    "--checkpoint-every", "10", "--deterministic", "--quiet", "--seed", "7",
]  # fmt: skip


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return read_tensors(run_dir / runfiles.WEIGHTS, "weights")


@pytest.fixture(scope="module")
def unbroken_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("unbroken") / "run"
    done = subprocess.run(
        vqkit_command("train", *TRAIN_FLAGS, "--out", str(run_dir)),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS,
    )
    assert done.returncode == 0, done.stderr
    return run_dir


def stop_then_resume(
    run_dir: Path, sig: int, before_resume: Callable[[], None] = lambda: None
) -> tuple[subprocess.CompletedProcess, dict, str]:
    process = subprocess.Popen(
        vqkit_command("train", *TRAIN_FLAGS, "--out", str(run_dir)),
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_mid_epoch_state(run_dir, process)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=WAIT_SECONDS)
    expected = -signal.SIGKILL if sig == signal.SIGKILL else 128 + sig  # 130, 143: as a shell's
    assert process.returncode == expected, stderr
    stopped_at = json.loads((run_dir / runfiles.TRAIN_STATE_META).read_text())
    before_resume()
    resumed = subprocess.run(
        vqkit_command("train", "--resume", str(run_dir), "--quiet"),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS,
    )
    return resumed, stopped_at, stderr


def assert_same_run(run_dir: Path, reference: Path) -> None:
    ours, theirs = final_weights(run_dir), final_weights(reference)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    assert (run_dir / runfiles.WEIGHTS).read_bytes() == (reference / runfiles.WEIGHTS).read_bytes()
    # One metrics line per epoch, none duplicated by the resume, same training losses.
    ours_metrics = [json.loads(x) for x in (run_dir / runfiles.METRICS).read_text().splitlines()]
    ref_metrics = [json.loads(x) for x in (reference / runfiles.METRICS).read_text().splitlines()]
    assert [m["epoch"] for m in ours_metrics] == [1, 2]
    for mine, ref in zip(ours_metrics, ref_metrics, strict=True):
        assert mine["test_mse"] == ref["test_mse"]
        for term in ("train_loss", "train_reconstruction_mse", "train_quantizer_loss"):
            assert mine[term] == pytest.approx(ref[term], rel=1e-6), term


def say_the_first_epoch_did_not_end(run_dir: Path) -> None:
    """Before any weights exist, the commands that need them name the way on: --resume."""
    assert not (run_dir / runfiles.WEIGHTS).exists()
    for command in (
        ["evaluate"],
        ["sample", "--strategy", "used", "--out", str(run_dir / "s.png")],
    ):
        done = subprocess.run(
            vqkit_command(command[0], str(run_dir), *command[1:]),
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=WAIT_SECONDS,
        )
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert "stopped before its first epoch ended, so it has no weights yet" in done.stderr
        assert f"continue it with vqkit train --resume {run_dir}." in done.stderr


def test_sigkill_mid_epoch_then_resume_gives_identical_weights(unbroken_run, tmp_path):
    run_dir = tmp_path / "run"
    resumed, stopped_at, _ = stop_then_resume(
        run_dir, signal.SIGKILL, lambda: say_the_first_epoch_did_not_end(run_dir)
    )
    assert stopped_at["epochs_done"] == 0 and 0 < stopped_at["step"] < 125
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(run_dir, unbroken_run)
    assert not list(run_dir.glob(".*.tmp")), "a temp file of an interrupted write was left"
    # The resumed epoch's rate counts the images this session trained, not the whole epoch.
    first = json.loads((run_dir / runfiles.METRICS).read_text().splitlines()[0])
    rest = (125 - stopped_at["step"]) * 16
    assert first["images_per_second"] * first["epoch_seconds"] == pytest.approx(rest)


@pytest.mark.parametrize(
    ("sig", "how"), [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "stopped by SIGTERM")]
)
def test_ctrl_c_or_sigterm_saves_prints_how_to_resume_and_resume_matches(
    unbroken_run, tmp_path, sig, how
):
    # SIGTERM is what schedulers, `docker stop` and `kill` send before they kill.
    run_dir = tmp_path / "run"
    resumed, stopped_at, stderr = stop_then_resume(run_dir, sig)
    assert f"vqkit: {how}; the run is saved, continue it with: vqkit train --resume {run_dir}" in (
        stderr
    )
    assert "Traceback" not in stderr
    assert stopped_at["epochs_done"] == 0 and 0 < stopped_at["step"] < 125
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(run_dir, unbroken_run)
