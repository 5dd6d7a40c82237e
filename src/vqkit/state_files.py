"""Where each kind of training keeps its resumable state, and how a user continues it, and how
far a saved state has got; read without PyTorch (``vqkit runs`` asks whether a state exists,
and how many epochs a prior stopped in its first epoch has done)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vqkit import distributed, runfiles
from vqkit.errors import VqkitError
from vqkit.fileio import parse_json
from vqkit.run_reading import readable_tensor_metadata, run_path

# Version 2 keeps a VQ-VAE's loss and its quantizer term (epoch/loss_sum of two); a version-1
# state, with the loss alone, still resumes. An older vqkit refuses version 2 as incompatible
# rather than calling the file damaged.
STATE_VERSION = 2
READABLE_STATE_VERSIONS = (1, 2)
METADATA_KEY = "vqkit_train_state"


@dataclass(frozen=True)
class StateFiles:
    """Where one kind of training keeps its resumable state, and how a user continues it."""

    tensors: str  # the safetensors file: tensors and counters together (authoritative)
    counters: str  # a readable JSON copy of the counters
    command: str  # the vqkit command that trains (and resumes) it
    what: str  # how error messages name the state file
    resume_template: str  # the command line that continues a run folder ``{run_dir}``

    def resume_command(
        self, run_dir: str | Path, context: distributed.Context | None = None
    ) -> str:
        """The command line that continues ``run_dir``; under torchrun (``context`` of several
        processes) as a torchrun command line with as many processes."""
        command = self.resume_template.format(run_dir=run_dir)
        return distributed.under_torchrun(command, context) if context is not None else command


VQVAE_FILES = StateFiles(
    runfiles.TRAIN_STATE,
    runfiles.TRAIN_STATE_META,
    "train",
    "resumable training state",
    "vqkit train --resume {run_dir}",
)
PRIOR_FILES = StateFiles(
    runfiles.PRIOR_STATE,
    runfiles.PRIOR_STATE_META,
    "train-prior",
    "resumable prior training state",
    "vqkit train-prior {run_dir} --resume",
)


def exists(run_dir: str | Path, files: StateFiles = VQVAE_FILES) -> bool:
    return run_path(run_dir, files.tensors).is_file()


@dataclass
class Position:
    """How far a run has got. ``step`` batches of epoch ``epochs_done + 1`` are already done."""

    epochs_done: int = 0
    step: int = 0  # batches of the epoch in progress already taken (0 at an epoch boundary)
    stepped: int = 0  # of those, how many updated the weights (the rest had non-finite losses)
    global_step: int = 0  # batches taken over the whole run
    skipped_nonfinite: int = 0  # batches skipped over the whole run for a non-finite loss
    world_size: int = 1  # processes the run trained with (the shard layout depends on it)


def require(run_dir: str | Path, files: StateFiles = VQVAE_FILES) -> Path:
    """The state file of ``run_dir``; a clear error when there is none to resume from."""
    path = run_path(run_dir, files.tensors)
    if not path.is_file():
        raise VqkitError(
            f"The run folder '{run_dir}' has no resumable state ({files.tensors}); it was not "
            f"started by this vqkit's {files.command} command or was stopped before its first "
            "save."
        )
    return path


def damaged(path: Path, files: StateFiles) -> str:
    return f"The {files.what} '{path}' is damaged or incomplete; start the run again."


def state_info(metadata: dict[str, Any], path: Path, files: StateFiles) -> dict[str, Any]:
    """The counters (and optimizer extras) a state file's metadata holds, its version checked."""
    try:
        info = parse_json(metadata[METADATA_KEY])
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise VqkitError(damaged(path, files)) from exc
    if not isinstance(info, dict):
        raise VqkitError(damaged(path, files))
    if info.get("version") not in READABLE_STATE_VERSIONS:
        raise VqkitError(
            f"The {files.what} '{path}' was written by an incompatible vqkit (state version "
            f"{info.get('version')!r}, this vqkit reads versions "
            f"{', '.join(map(str, READABLE_STATE_VERSIONS))})."
        )
    return info


def counters(
    info: dict[str, Any], path: Path, files: StateFiles
) -> tuple[Position, dict[str, Any]]:
    """The position and the caller's own counters in a state's ``info``."""
    try:
        position = Position(**{k: int(info[k]) for k in asdict(Position())})
    except (KeyError, ValueError, TypeError) as exc:
        raise VqkitError(damaged(path, files)) from exc
    extra = info.get("extra", {})
    if min(asdict(position).values()) < 0 or not isinstance(extra, dict):
        raise VqkitError(damaged(path, files))
    return position, extra


def saved_position(run_dir: str | Path, files: StateFiles = VQVAE_FILES) -> Position | None:
    """How far the saved state has got, or None when there is none or it cannot be read (a
    damaged state: a resume would fail on it, so no caller may count on it). Read without
    PyTorch, to the verdict of its loader (``vqkit runs`` reads a prior's first epoch so)."""
    if not exists(run_dir, files):
        return None
    path = run_path(run_dir, files.tensors)
    try:
        info = state_info(readable_tensor_metadata(path, files.what), path, files)
        return counters(info, path, files)[0]
    except VqkitError:
        return None
