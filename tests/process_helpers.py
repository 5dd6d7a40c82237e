"""Helpers for tests that start real vqkit processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import vqkit
from vqkit import runfiles

# How long a test waits for a real training process to save or to end.
WAIT_SECONDS = 120
# Every torchrun command of the tests: two processes on this machine.
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def child_env() -> dict[str, str]:
    """This checkout's vqkit first on the path of a child process, whatever is installed."""
    env = dict(os.environ)
    src = str(Path(vqkit.__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def vqkit_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "vqkit", *args]


def wait_for_mid_epoch_state(run_dir: Path, process: subprocess.Popen) -> dict:
    """Poll until the run has saved a state in the middle of an epoch."""
    meta = run_dir / runfiles.TRAIN_STATE_META
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, "training ended before a mid-epoch state was saved"
        if meta.exists():
            state = json.loads(meta.read_text())
            if state["step"] > 0:
                return state
        time.sleep(0.01)
    process.kill()
    raise AssertionError("no mid-epoch state appeared")


def torchrun_train(cwd: Path, *flags: str) -> None:
    command = [
        *TORCHRUN,
        "-m", "vqkit", "train", *flags, "--quiet", "--device", "cpu",
    ]  # fmt: skip
    done = subprocess.run(
        command, env=child_env(), capture_output=True, text=True, timeout=300, cwd=cwd
    )
    assert done.returncode == 0, done.stderr[-3000:]


def run_worker(cwd: Path, worker: Path, *args: str) -> subprocess.CompletedProcess:
    """Two processes of a test worker script under torchrun, quiet, on the CPU."""
    command = [*TORCHRUN, str(worker), *args, "--quiet", "--device", "cpu"]
    return subprocess.run(
        command, env=child_env(), capture_output=True, text=True, timeout=300, cwd=cwd
    )
