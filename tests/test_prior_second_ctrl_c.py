"""A second Ctrl-C stops train_prior at once, naming the saved state that resumes it."""

from __future__ import annotations

import json
import os
import signal

import pytest

from vqkit import runfiles
from vqkit.prior import PriorConfig
from vqkit.prior_loop import PriorLoop
from vqkit.prior_replacement import PRIOR_FILE_NAMES
from vqkit.prior_status import incomplete_prior
from vqkit.prior_training import train_prior
from vqkit.training import TrainingInterrupted

# 4 steps an epoch: the second Ctrl-C comes in epoch 2, after epoch 1's state was saved.
TWO_EPOCHS = PriorConfig(
    channels=8, layers=2, epochs=2, batch_size=64, train_limit=256, test_limit=64
)
PRESSED_AT_STEP = 6


def test_a_second_ctrl_c_stops_the_prior_at_once_and_names_the_last_saved_state(
    gridded_copy, monkeypatch
):
    # It ended in a bare KeyboardInterrupt (and `vqkit: interrupted.`), which says neither that
    # anything was saved nor how to go on, though epoch 1's state resumes.
    real_step = PriorLoop.step

    def pressed_twice(self, index):
        if self.position.global_step + 1 == PRESSED_AT_STEP:
            os.kill(os.getpid(), signal.SIGINT)  # a request: the loop would save at this step
            os.kill(os.getpid(), signal.SIGINT)  # the user does not want to wait
        return real_step(self, index)

    monkeypatch.setattr(PriorLoop, "step", pressed_twice)
    with pytest.raises(TrainingInterrupted) as stopped:
        train_prior(gridded_copy, TWO_EPOCHS, device="cpu", progress=False)
    resume = f"vqkit train-prior {gridded_copy} --resume"
    expected = f"stopped at once; its last saved state continues with: {resume}"
    assert stopped.value.outcome == expected
    saved = json.loads((gridded_copy / runfiles.PRIOR_STATE_META).read_text())
    assert (saved["epochs_done"], saved["step"]) == (1, 0)
    monkeypatch.undo()
    resumed = train_prior(gridded_copy, device="cpu", progress=False, resume=True)
    assert resumed.epochs_trained == 1


def test_a_first_prior_stopped_at_once_before_any_save_leaves_no_prior_files(
    gridded_copy, monkeypatch
):
    # Its settings file stayed behind: `vqkit runs` called the prior incomplete and sampling
    # asked for --restart, though nothing of it could be resumed or sampled.
    def pressed_twice(self, index):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(PriorLoop, "step", pressed_twice)
    with pytest.raises(KeyboardInterrupt):
        train_prior(gridded_copy, TWO_EPOCHS, device="cpu", progress=False)
    assert not [name for name in PRIOR_FILE_NAMES if (gridded_copy / name).exists()]
    assert incomplete_prior(gridded_copy) is None
