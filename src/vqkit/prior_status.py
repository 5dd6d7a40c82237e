"""Whether a run's prior is whole, being trained, or stopped early: read without PyTorch, so
``vqkit runs`` can say so of every folder at once."""

from __future__ import annotations

from pathlib import Path

from vqkit import runfiles
from vqkit.errors import VqkitError
from vqkit.fileio import read_json_object
from vqkit.prior_replacement import interrupted_replacement
from vqkit.run_lock import writer_of
from vqkit.run_reading import run_path
from vqkit.state_files import PRIOR_FILES, exists, saved_position


def incomplete_prior(run_dir: str | Path) -> str | None:
    """Why a run holding some of a prior's files, or training its first prior, has no usable
    prior, as one sentence; None when it has a whole prior or none at all.

    ``train-prior`` writes its settings first and its weights after the first epoch, so a run
    stopped inside that epoch holds settings and a resumable state but no weights yet.
    """
    files = PRIOR_FILES
    config = run_path(run_dir, runfiles.PRIOR_CONFIG).exists()
    weights = run_path(run_dir, runfiles.PRIOR_WEIGHTS).exists()
    state = exists(run_dir, files)
    if interrupted_replacement(run_dir) and writer_of(run_dir) is None:
        return (
            f"A new prior for '{run_dir}' was cut off before its first epoch ended, with the "
            f"earlier prior set aside; put that back with vqkit train-prior {run_dir} --resume."
        )
    if config and weights:
        return None
    # A prior being trained has no weights until its first epoch ends (and a prior it replaces
    # is set aside meanwhile): say so, not that it stopped or that there is none.
    writer = writer_of(run_dir)
    # The demo holds its folder through every stage; it is training the prior once one of the
    # prior's files exists (its folder starts with none).
    in_demo = writer is not None and writer.startswith("demo,") and (config or weights or state)
    if writer is not None and (writer.startswith("train-prior") or in_demo):
        return (
            f"A prior is being trained in '{run_dir}' right now ({writer}); it can be sampled "
            "once its first epoch ends."
        )
    if not (config or weights or state):
        return None
    if config and not weights:
        position = saved_position(run_dir, files)
        if position is not None and position.epochs_done == 0:
            return (
                f"The prior training in '{run_dir}' stopped before its first epoch ended, so "
                f"it has no weights yet; continue it with {files.resume_command(run_dir)}."
            )
    missing = runfiles.PRIOR_WEIGHTS if config else runfiles.PRIOR_CONFIG
    return (
        f"The prior in '{run_dir}' is incomplete ({missing} is missing); train a new one with "
        f"vqkit train-prior {run_dir} --restart."
    )


def unfinished_prior(run_dir: str | Path) -> tuple[int, int] | None:
    """(epochs done, epochs planned) of a prior whose training stopped before it ended (a
    Ctrl-C, a crash, a non-finite loss: neither its epochs nor its patience ran out), from the
    counters its resumable state keeps beside it; None for a finished prior, for none, and
    when those counters cannot be read."""
    try:
        counters = read_json_object(run_path(run_dir, PRIOR_FILES.counters), "prior state")
        extra = counters["extra"]
        done, planned = int(counters["epochs_done"]), int(extra["config"]["epochs"])
        finished = extra["finished"]
    except (VqkitError, KeyError, TypeError, ValueError):
        return None
    return None if finished is not False else (done, planned)
