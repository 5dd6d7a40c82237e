"""Where each kind of training keeps its resumable state, and how a user continues it; read
without PyTorch (``vqkit runs`` asks whether a state exists)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vqkit import distributed, runfiles
from vqkit.run_reading import run_path


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
