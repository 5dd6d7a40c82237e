"""Resumable training state: everything needed to continue a run exactly where it stopped.

``train_state.safetensors`` holds the tensors (model weights and buffers, Adam moments, the RNG
states of torch and of the batch permutation, the partial epoch's loss sum); its safetensors
metadata holds the counters as JSON, so tensors and counters are replaced together by one atomic
rename. ``train_state.json`` is a readable copy of the counters written right after. Nothing is
pickled: a state file can be loaded from an untrusted source without running code.

The PixelCNN prior keeps the same kind of state under other names (:data:`PRIOR_FILES`), with
its early-stopping counters in the ``extra`` entry of the counters.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors

from vqkit.checkpoint import load_tensors_into, read_tensors_and_metadata, run_path
from vqkit.errors import VqkitError
from vqkit.fileio import write_bytes_atomic, write_json_atomic
from vqkit.state_files import METADATA_KEY as METADATA_KEY
from vqkit.state_files import PRIOR_FILES as PRIOR_FILES
from vqkit.state_files import READABLE_STATE_VERSIONS as READABLE_STATE_VERSIONS
from vqkit.state_files import STATE_VERSION as STATE_VERSION
from vqkit.state_files import VQVAE_FILES as VQVAE_FILES
from vqkit.state_files import Position as Position
from vqkit.state_files import StateFiles as StateFiles
from vqkit.state_files import counters as _counters
from vqkit.state_files import damaged as _damaged
from vqkit.state_files import exists as exists
from vqkit.state_files import require as require
from vqkit.state_files import saved_position as saved_position
from vqkit.state_files import state_info
from vqkit.wording import counted

MODEL_PREFIX = "model/"
OPTIMIZER_PREFIX = "optimizer/"
TORCH_RNG = "rng/torch"
CUDA_RNG_PREFIX = "rng/cuda/"
ORDER_RNG = "rng/order"  # the batch-permutation generator at the start of the epoch in progress
# Summed training loss of the epoch in progress so far: (1,) for a prior; (2,) for a VQ-VAE,
# the loss and its quantizer term ((1,), the loss alone, in states saved before vqkit kept both)
LOSS_SUM = "epoch/loss_sum"


@dataclass
class Restored:
    """What :func:`restore` gives back besides the live objects it fills in."""

    position: Position
    extra: dict[str, Any] = field(default_factory=dict)  # the caller's own JSON counters
    loss_sum: torch.Tensor = field(default_factory=lambda: torch.zeros(1))  # epoch so far


def state_tensors(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    order_state: torch.Tensor,
    loss_sum: torch.Tensor,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten the live training objects into named CPU tensors plus JSON-able extras."""
    tensors = {MODEL_PREFIX + k: v for k, v in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    plain_state: dict[str, dict[str, Any]] = {}
    for index, entries in optimizer_state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{OPTIMIZER_PREFIX}{index}/{key}"] = value
            else:
                plain_state.setdefault(str(index), {})[key] = value
    tensors[TORCH_RNG] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"{CUDA_RNG_PREFIX}{index}"] = state
    tensors[ORDER_RNG] = order_state
    tensors[LOSS_SUM] = loss_sum.reshape(-1)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    extras = {"param_groups": optimizer_state["param_groups"], "optimizer_state": plain_state}
    return tensors, extras


def save(
    run_dir: str | Path,
    position: Position,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    order_state: torch.Tensor,
    loss_sum: torch.Tensor,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    *,
    files: StateFiles = VQVAE_FILES,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the resumable state atomically (a kill at any instant keeps the previous one).

    ``extra`` holds the caller's own JSON counters; :func:`restore` gives them back.
    """
    tensors, extras = state_tensors(model, optimizer, order_state, loss_sum)
    # A learning-rate schedule's state is a few numbers (step count, last rates): JSON.
    extras["scheduler"] = scheduler.state_dict() if scheduler is not None else None
    counters = {"version": STATE_VERSION, **asdict(position)}
    if extra is not None:
        counters["extra"] = extra
    metadata = {METADATA_KEY: json.dumps({**counters, **extras})}
    write_bytes_atomic(run_path(run_dir, files.tensors), save_safetensors(tensors, metadata))
    write_json_atomic(run_path(run_dir, files.counters), counters)


def load(
    run_dir: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    order_generator: torch.Generator,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> tuple[Position, torch.Tensor]:
    """Restore a VQ-VAE run's state in place (see :func:`restore`): position and loss sums
    (the loss and its quantizer term; the loss alone from a state saved before both were)."""
    restored = restore(run_dir, model, optimizer, order_generator, scheduler, sums=2)
    return restored.position, restored.loss_sum


def restore(
    run_dir: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    order_generator: torch.Generator,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    files: StateFiles = VQVAE_FILES,
    sums: int = 1,
) -> Restored:
    """Restore model, optimizer and RNG states in place from the state ``files`` name; its
    loss sums, ``sums`` of them or (from an older state) one, come back flat."""
    path, tensors, info = _read(run_dir, files)
    what = files.what
    try:
        model_tensors = {
            k[len(MODEL_PREFIX) :]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)
        }
        load_tensors_into(model, model_tensors, path, what)
        _load_optimizer(optimizer, tensors, info)
        torch.set_rng_state(tensors[TORCH_RNG])
        cuda_states = [v for k, v in sorted(tensors.items()) if k.startswith(CUDA_RNG_PREFIX)]
        if cuda_states and torch.cuda.is_available():
            if len(cuda_states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda_states)
        order_generator.set_state(tensors[ORDER_RNG])
        if scheduler is not None:
            if not info.get("scheduler"):
                raise VqkitError(
                    f"The {what} '{path}' has no learning-rate schedule state; resume it with "
                    "the schedule it was trained with."
                )
            scheduler.load_state_dict(info["scheduler"])
        loss_sum = tensors[LOSS_SUM].reshape(-1)
        if loss_sum.numel() not in (1, sums):
            raise ValueError("loss sums of another shape")
    except VqkitError:
        raise
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as exc:
        raise VqkitError(_damaged(path, files)) from exc
    return Restored(*_counters(info, path, files), loss_sum=loss_sum)


def peek(run_dir: str | Path, files: StateFiles = VQVAE_FILES) -> tuple[Position, dict[str, Any]]:
    """The position and the caller's counters of a saved state, restoring nothing."""
    path, _, info = _read(run_dir, files)
    position, extra = _counters(info, path, files)
    return position, extra


def require_step_in_epoch(
    run_dir: str | Path, step: int, steps: int, files: StateFiles = VQVAE_FILES
) -> None:
    """Refuse a state that stopped at a step its epoch does not have: a state is saved before
    an epoch's last step only, so any other count is damage (it would end the epoch at once,
    having trained nothing)."""
    if 0 < steps <= step:
        raise VqkitError(_damaged(run_path(run_dir, files.tensors), files))


def require_epochs_not_below(trained: str, run_dir: str | Path, done: int, epochs: int) -> None:
    """Refuse to resume ``trained`` ("run", "prior") with fewer ``epochs`` than it has done:
    it would stop at once, its last epochs unaccounted for by the settings it records."""
    if epochs < done:
        raise VqkitError(
            f"The {trained} in '{run_dir}' has already trained {counted(done, 'epoch')}, more "
            f"than --epochs {epochs}."
        )


def _read(
    run_dir: str | Path, files: StateFiles
) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]]:
    """The state file's path, tensors and counters, after checking its version."""
    path = require(run_dir, files)
    tensors, metadata = read_tensors_and_metadata(path, files.what)
    info = state_info(metadata, path, files)
    return path, tensors, info


def _load_optimizer(
    optimizer: torch.optim.Optimizer,
    tensors: dict[str, torch.Tensor],
    info: dict[str, Any],
) -> None:
    """Rebuild the optimizer's state dict from flat tensors, checking every moment's shape."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith(OPTIMIZER_PREFIX):
            continue
        index_text, key = name[len(OPTIMIZER_PREFIX) :].split("/", 1)
        index = int(index_text)
        if not 0 <= index < len(params):
            raise ValueError(f"optimizer state for unknown parameter {index}")
        if value.dim() > 0:
            if value.shape != params[index].shape:
                raise ValueError(f"optimizer state '{name}' has the wrong shape")
            # Saved tensors are contiguous; a moment must take its parameter's memory layout
            # again (channels-last weights), because the fused Adam kernel pairs parameter
            # and moment elements by their place in memory, not by index.
            value = torch.empty_like(params[index], dtype=value.dtype).copy_(value)
        state.setdefault(index, {})[key] = value
    for index_text, entries in info["optimizer_state"].items():
        state.setdefault(int(index_text), {}).update(entries)
    groups = info["param_groups"]
    if len(groups) != len(optimizer.param_groups):
        raise ValueError("optimizer parameter groups differ")
    # JSON turned tuples (Adam's betas) into lists; give each setting its live type back, and
    # refuse a setting of another kind (the optimizer would fail at its first step instead).
    for saved, live in zip(groups, optimizer.param_groups, strict=True):
        for key, value in live.items():
            if key == "params":
                continue
            if key in KERNEL_CHOICES:  # how this vqkit steps, not a setting of the run
                saved[key] = value
                continue
            if isinstance(value, tuple) and isinstance(saved.get(key), list):
                saved[key] = tuple(saved[key])
            if key not in saved:  # a flag newer than the state: the optimizer sets its default
                if isinstance(value, bool) or value is None:
                    continue
                raise ValueError(f"optimizer setting '{key}' is missing")
            if not _same_kind(saved[key], value):
                raise ValueError(f"optimizer setting '{key}' is {saved[key]!r}")
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# Adam's choices of kernel: the live optimizer's are kept. A state saved before VQ-VAE training
# used the fused kernel holds "fused": null, which the fused optimizer resumes as it is.
KERNEL_CHOICES = frozenset({"fused", "foreach"})


def _same_kind(saved: Any, live: Any) -> bool:
    """Whether a saved optimizer setting can stand in for the live one: a number for a number,
    a flag for a flag, a tuple of as many numbers for a tuple (an option the optimizer leaves
    unset, None, takes any saved value)."""
    if live is None:
        return True
    if isinstance(live, bool):
        return isinstance(saved, bool)
    if isinstance(live, (int, float)):
        return isinstance(saved, (int, float)) and not isinstance(saved, bool)
    if isinstance(live, tuple):
        return (
            isinstance(saved, tuple)
            and len(saved) == len(live)
            and all(_same_kind(s, v) for s, v in zip(saved, live, strict=True))
        )
    return type(saved) is type(live)
