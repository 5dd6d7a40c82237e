"""Resumable training state: everything needed to continue a run exactly where it stopped.

``train_state.safetensors`` holds the tensors (model weights and buffers, Adam moments, the RNG
states of torch and of the batch permutation, the partial epoch's loss sum); its safetensors
metadata holds the counters as JSON, so tensors and counters are replaced together by one atomic
rename. ``train_state.json`` is a readable copy of the counters written right after. Nothing is
pickled: a state file can be loaded from an untrusted source without running code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors

from vqkit import runfiles
from vqkit.checkpoint import load_tensors_into, read_tensors_and_metadata, run_path
from vqkit.errors import VqkitError
from vqkit.fileio import write_bytes_atomic, write_json_atomic

STATE_VERSION = 1
METADATA_KEY = "vqkit_train_state"
MODEL_PREFIX = "model/"
OPTIMIZER_PREFIX = "optimizer/"
TORCH_RNG = "rng/torch"
CUDA_RNG_PREFIX = "rng/cuda/"
ORDER_RNG = "rng/order"  # the batch-permutation generator at the start of the epoch in progress
LOSS_SUM = "epoch/loss_sum"  # summed training loss of the epoch in progress so far


@dataclass
class Position:
    """How far a run has got. ``step`` batches of epoch ``epochs_done + 1`` are already done."""

    epochs_done: int = 0
    step: int = 0  # batches of the epoch in progress already taken (0 at an epoch boundary)
    stepped: int = 0  # of those, how many updated the weights (the rest had non-finite losses)
    global_step: int = 0  # batches taken over the whole run
    skipped_nonfinite: int = 0  # batches skipped over the whole run for a non-finite loss
    world_size: int = 1  # processes the run trained with (the shard layout depends on it)


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
    tensors[LOSS_SUM] = loss_sum.reshape(1)
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
) -> None:
    """Write the resumable state atomically (a kill at any instant keeps the previous one)."""
    tensors, extras = state_tensors(model, optimizer, order_state, loss_sum)
    # A learning-rate schedule's state is a few numbers (step count, last rates): JSON.
    extras["scheduler"] = scheduler.state_dict() if scheduler is not None else None
    counters = {"version": STATE_VERSION, **asdict(position)}
    metadata = {METADATA_KEY: json.dumps({**counters, **extras})}
    write_bytes_atomic(run_path(run_dir, runfiles.TRAIN_STATE), save_safetensors(tensors, metadata))
    write_json_atomic(run_path(run_dir, runfiles.TRAIN_STATE_META), counters)


def exists(run_dir: str | Path) -> bool:
    return run_path(run_dir, runfiles.TRAIN_STATE).is_file()


def load(
    run_dir: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    order_generator: torch.Generator,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> tuple[Position, torch.Tensor]:
    """Restore model, optimizer and RNG states in place; returns the position and loss sum."""
    path = run_path(run_dir, runfiles.TRAIN_STATE)
    what = "resumable training state"
    if not path.is_file():
        raise VqkitError(
            f"The run folder '{run_dir}' has no resumable state ({runfiles.TRAIN_STATE}); it was "
            "not started by this vqkit's train command or was stopped before its first save."
        )
    tensors, metadata = read_tensors_and_metadata(path, what)
    damaged = f"The {what} '{path}' is damaged or incomplete; start the run again."
    try:
        info = json.loads(metadata[METADATA_KEY])
        if info.get("version") != STATE_VERSION:
            raise VqkitError(
                f"The {what} '{path}' was written by an incompatible vqkit (state version "
                f"{info.get('version')!r}, this vqkit reads version {STATE_VERSION})."
            )
        position = Position(**{k: int(info[k]) for k in asdict(Position())})
        model_tensors = {
            k[len(MODEL_PREFIX) :]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)
        }
        load_tensors_into(model, model_tensors, path, what)
        _load_optimizer(optimizer, tensors, info, path)
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
        loss_sum = tensors[LOSS_SUM].reshape(())
    except VqkitError:
        raise
    except (KeyError, ValueError, TypeError, RuntimeError, json.JSONDecodeError) as exc:
        raise VqkitError(damaged) from exc
    if min(asdict(position).values()) < 0:
        raise VqkitError(damaged)
    return position, loss_sum


def _load_optimizer(
    optimizer: torch.optim.Optimizer,
    tensors: dict[str, torch.Tensor],
    info: dict[str, Any],
    path: Path,
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
        if value.dim() > 0 and value.shape != params[index].shape:
            raise ValueError(f"optimizer state '{name}' has the wrong shape")
        state.setdefault(index, {})[key] = value
    for index_text, entries in info["optimizer_state"].items():
        state.setdefault(int(index_text), {}).update(entries)
    groups = info["param_groups"]
    if len(groups) != len(optimizer.param_groups):
        raise ValueError("optimizer parameter groups differ")
    # JSON turned tuples (Adam's betas) into lists; give each setting its live type back.
    for saved, live in zip(groups, optimizer.param_groups, strict=True):
        for key, value in live.items():
            if isinstance(value, tuple) and isinstance(saved.get(key), list):
                saved[key] = tuple(saved[key])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
