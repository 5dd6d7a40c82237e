"""A new prior replaces a run's old one only once it has saved weights and a state of its own.

``vqkit train-prior RUN`` on a run that already has a prior trains a new one. Deleting the old
files first would lose a finished prior to any failure before the new one can be sampled (a
non-finite loss in the first epoch, a full disk, Ctrl-C). So the old files are moved aside
under a suffix; when the new training stops before the end of its first epoch has saved its
first weights and state, whatever it wrote is removed and the old files go back; after that
they are deleted.

A process killed outright (SIGKILL, power loss) runs no clean-up: the next ``train-prior``
(or ``settle_interrupted_replacement``) finishes it by the files it finds, to the same rule: the
old prior comes back unless the new one had saved its weights and state.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from vqkit import runfiles
from vqkit.errors import NonFiniteLoss, VqkitError
from vqkit.run_reading import run_path
from vqkit.state_files import PRIOR_FILES, exists

PRIOR_FILE_NAMES = (
    PRIOR_FILES.tensors,
    PRIOR_FILES.counters,
    runfiles.PRIOR_WEIGHTS,
    runfiles.PRIOR_METRICS,
    runfiles.PRIOR_CONFIG,
)
ASIDE_SUFFIX = ".replaced"


def _aside(run_dir: str | Path, name: str) -> Path:
    original = run_path(run_dir, name)
    return original.with_name(original.name + ASIDE_SUFFIX)


def _new_prior_saved(run_dir: str | Path) -> bool:
    """Whether the new prior stands on its own: its weights and its state, both files of it
    (the first epoch's end writes them; the old files are aside, so these are the new prior's).
    The state's readable copy is written last, and `vqkit runs` reads it."""
    state = PRIOR_FILES
    names = (runfiles.PRIOR_WEIGHTS, state.tensors, state.counters)
    return all(run_path(run_dir, name).is_file() for name in names)


def interrupted_replacement(run_dir: str | Path) -> bool:
    """Whether a replacement was killed outright (SIGKILL, power loss: no clean-up ran) before
    the new prior had weights: old files still lie aside and the run holds no new state with
    weights (the new prior saves both at the end of its first epoch; a killed move aside, which
    moves the state first, has left no new state either)."""
    aside = any(_aside(run_dir, name).exists() for name in PRIOR_FILE_NAMES)
    return aside and not _new_prior_saved(run_dir)


def settle_interrupted_replacement(run_dir: str | Path) -> None:
    """Finish what a replacement killed outright left behind; call it holding the run's lock.
    The old prior's files go back in place when the new prior had not saved its weights and
    state yet, and are deleted when it had, as the clean-up would have done."""
    moved = [(run_path(run_dir, name), _aside(run_dir, name)) for name in PRIOR_FILE_NAMES]
    moved = [(original, aside) for original, aside in moved if aside.exists()]
    if interrupted_replacement(run_dir):
        if exists(run_dir, PRIOR_FILES):
            # A new state: the new prior had started, so every old file was aside and every
            # prior file in place is the new one's (a kill during the moves leaves none).
            for name in PRIOR_FILE_NAMES:
                run_path(run_dir, name).unlink(missing_ok=True)
        _put_back(moved)
    else:
        for _, aside in moved:
            aside.unlink(missing_ok=True)


def _move(source: Path, target: Path) -> None:
    try:
        os.replace(source, target)
    except OSError as exc:
        raise VqkitError(
            f"Cannot replace the prior in '{source.parent}': moving '{source.name}' failed "
            f"({exc.strerror})."
        ) from exc


def _put_back(moved: list[tuple[Path, Path]]) -> None:
    for original, aside in reversed(moved):
        _move(aside, original)


def _remove_unresumable_start(run_dir: str | Path) -> None:
    """Remove what a run's first prior wrote before it stopped, when that is neither weights nor
    a state to resume (a second Ctrl-C, or a crash, before its first save): its settings alone
    would leave the run with an "incomplete" prior that only --restart clears."""
    if exists(run_dir, PRIOR_FILES) or run_path(run_dir, runfiles.PRIOR_WEIGHTS).exists():
        return
    for name in PRIOR_FILE_NAMES:
        run_path(run_dir, name).unlink(missing_ok=True)


@contextlib.contextmanager
def old_prior_set_aside(run_dir: str | Path) -> Iterator[None]:
    """Inside: the run's prior files are out of the way. After: the new prior's files once it
    has saved weights and state, else (it raised before, or while, its first epoch's end saved
    them) the old prior's, as they were, the rule settle_interrupted_replacement keeps after a
    kill; a TrainingInterrupted raised through it then says so instead of how to resume. With no
    earlier prior, a new one that raised before saving weights or a state leaves no files."""
    moved: list[tuple[Path, Path]] = []
    try:
        for name in PRIOR_FILE_NAMES:
            original, aside = run_path(run_dir, name), _aside(run_dir, name)
            if original.exists():
                _move(original, aside)
                moved.append((original, aside))
    except VqkitError:
        _put_back(moved)
        raise
    # The old files are deleted only once the new prior stands; a clean-up cut short (a
    # second Ctrl-C, a failed move) leaves them aside for settle_interrupted_replacement.
    new_prior_stands = False
    try:
        yield
        new_prior_stands = True
    except BaseException as exc:
        if not moved:  # the run's first prior
            _remove_unresumable_start(run_dir)
            raise
        # Weights without a state (a full disk as the first epoch's state was written) would
        # be a prior that can be sampled but neither resumed nor called unfinished.
        if _new_prior_saved(run_dir):
            new_prior_stands = True
            raise
        for name in PRIOR_FILE_NAMES:  # all the new prior's: every old file was moved aside
            run_path(run_dir, name).unlink(missing_ok=True)
        _put_back(moved)
        kept = (
            "the new prior had not finished its first epoch, so the earlier prior is kept as it was"
        )
        if isinstance(exc, NonFiniteLoss):  # its advice (resume the new state) no longer holds
            raise VqkitError(
                f"{exc.cause}; {kept}: start again with a lower --lr, or --skip-nonfinite N to "
                "skip a few bad steps."
            ) from exc
        if hasattr(exc, "instead"):  # a stop (Ctrl-C, SIGTERM) that saved a state
            exc.instead(f"{kept} (vqkit train-prior {run_dir} --restart trains a new one)")
        elif isinstance(exc, VqkitError):  # a full disk, say: its sentence, and what stands
            raise VqkitError(f"{str(exc).rstrip('.')}; {kept}.") from exc
        raise
    finally:
        if new_prior_stands:
            for _, aside in moved:
                aside.unlink(missing_ok=True)
