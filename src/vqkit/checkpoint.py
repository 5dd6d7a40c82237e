"""Run folders: self-describing, pickle-free storage of a trained model.

A run folder holds ``config.json`` (a RunConfig: everything to rebuild the model),
``model.safetensors`` (weights and buffers; safetensors cannot execute code on load),
``metrics.jsonl`` (one line per epoch) and figures.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from vqkit import runfiles
from vqkit.config import REGISTERED_QUANTIZERS, ModelConfig, RunConfig
from vqkit.errors import QuantizerLoadError, UnknownQuantizer, VqkitError, refused_file
from vqkit.fileio import (
    open_regular_file,
    parse_json,
    read_file_bytes,
    read_json,
    read_json_object,
    require_own_records,
    write_bytes_atomic,
    write_json_atomic,
)

if TYPE_CHECKING:  # model imports this module
    from vqkit.model import VQVAE


def run_path(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / name


def save_config(run_dir: str | Path, config: RunConfig) -> None:
    write_json_atomic(run_path(run_dir, runfiles.CONFIG), config.to_dict())


def require_run_folder(run_dir: Path) -> None:
    """One sentence when ``run_dir`` is missing or is a file."""
    if run_dir.is_dir():
        return
    if run_dir.exists():
        raise VqkitError(
            f"'{run_dir}' is a file, not a run folder; give a folder 'vqkit train' wrote."
        )
    raise VqkitError(f"The run folder '{run_dir}' does not exist.")


def require_files_where_files_go(run_dir: Path) -> None:
    """One sentence, before a writer (train, train-prior) writes anything, when one of the
    run's file names is taken by a folder, or a file it appends to is a symbolic link: that
    file's write would fail only after the others had moved on (an epoch's weights and metrics
    saved, its resumable state not)."""
    for name in runfiles.FILE_NAMES:
        path = run_path(run_dir, name)
        if name in runfiles.APPENDED:
            require_own_records(path)
        if name != runfiles.FIGURES_DIR and path.is_dir():
            raise VqkitError(
                f"'{path}' is a folder where the run keeps a file; move it out of the run "
                "folder, then run the command again."
            )


def run_folder(run_dir: str | os.PathLike) -> Path:
    """A run folder given from Python or the command line, as an existing folder's Path; one
    sentence for an empty name (which Path reads as the current folder) or a non-path."""
    if not isinstance(run_dir, str | os.PathLike):
        raise VqkitError(f"A run folder is a path (a str or pathlib.Path), not {run_dir!r}.")
    if not str(run_dir).strip():
        raise VqkitError("The run folder name is empty; give a folder 'vqkit train' wrote.")
    path = Path(run_dir)
    require_run_folder(path)
    return path


def load_config(run_dir: str | Path) -> RunConfig:
    run_dir = run_folder(run_dir)
    path = run_dir / runfiles.CONFIG
    if path.is_dir():
        raise VqkitError(f"'{path}' is a folder, not a run's configuration.")
    if not path.exists():  # every command names a folder without one the same way
        raise VqkitError(
            f"'{run_dir}' is not a run folder (it has no {runfiles.CONFIG}); "
            "give a folder written by 'vqkit train'."
        )
    return config_from_file(path, f"The run '{run_dir}' was trained with")


def config_from_file(path: Path, source: str = "") -> RunConfig:
    """The RunConfig in a JSON file. Its refusals name the file (their sentences name the flag
    that sets a value); ``source`` begins the sentence for a quantizer no code registers."""
    data = read_json_object(path, "run configuration")
    try:
        return RunConfig.from_dict(data)
    except QuantizerLoadError:
        raise
    except UnknownQuantizer as exc:  # the name came from the file, not from a flag
        raise UnknownQuantizer(
            f"{source or f'The configuration {str(path)!r} names'} the quantizer '{exc.name}', "
            "which no code here registers; import the code that registers it first (on the "
            "command line: 'vqkit --plugin FILE.py'), or install the package that offers it.",
            exc.name,
        ) from None
    except VqkitError as exc:
        raise refused_file(path, exc) from None


# Metadata of a prior's weights file: the SHA-256 of the VQ-VAE weights whose codes it learned,
# so that a prior shared without its resumable state can still be called stale.
PRIOR_LEARNED_FROM = "vqvae_weights_sha256"
# Largest safetensors header read for its metadata alone (the library's own limit is 100 MB).
HEADER_LIMIT = 100_000_000


def state_dict_bytes(module: torch.nn.Module, metadata: dict[str, str] | None = None) -> bytes:
    """A module's parameters and buffers as safetensors bytes (contiguous CPU copies)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    return save_safetensors(tensors, metadata)


def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state as safetensors bytes: what its weights file would hash to
    (a compiled module's: the wrapped one's, as training saves it)."""
    module = getattr(module, "_orig_mod", module)
    return hashlib.sha256(state_dict_bytes(module)).hexdigest()


def weights_digest(run_dir: str | Path) -> str:
    """SHA-256 of a run's model weights file: names the weights that code grids came from."""
    return hashlib.sha256(read_file_bytes(run_path(run_dir, runfiles.WEIGHTS))).hexdigest()


def require_run_model(model: torch.nn.Module, run_dir: str | Path) -> None:
    """Refuse a model other than the one saved in ``run_dir``: the folder's prior and cached
    code usage describe the codes of that model, so the settings must match and the weights
    must be exactly its ``model.safetensors`` (as ``VQVAE.from_run`` loads them)."""
    model = getattr(model, "_orig_mod", model)  # a compiled model: compare the wrapped one
    weights = run_path(run_dir, runfiles.WEIGHTS)
    if load_config(run_dir).model != model.config:
        differs = "their settings differ"
    elif not weights.is_file():
        raise VqkitError(
            why_no_weights_yet(run_dir) or f"'{run_dir}' holds no model weights ({weights.name})."
        )
    elif state_digest(model) != weights_digest(run_dir):
        differs = _cast_or_other_weights(model, weights)
    else:
        return
    raise VqkitError(
        f"The model is not the one trained in '{run_dir}' ({differs}); give "
        f"VQVAE.from_run('{run_dir}') or that model's own run folder."
    )


def _cast_or_other_weights(model: torch.nn.Module, weights: Path) -> str:
    """How the model's weights differ from the saved ones: another floating type (a model cast
    with .double() computes slightly other codes, and its counts would be cached as the run's),
    or other values."""
    saved = read_tensors(weights, "model weights")
    state = model.state_dict()

    def floating(tensors: Iterable[torch.Tensor]) -> set[str]:  # counters, flags: integers
        return {str(t.dtype).removeprefix("torch.") for t in tensors if t.is_floating_point()}

    kinds, kinds_saved = floating(state.values()), floating(saved.values())
    if kinds != kinds_saved:
        return (
            f"its weights are {' and '.join(sorted(kinds))}, the run's "
            f"{' and '.join(sorted(kinds_saved))}: cast it back, model.float() for float32"
        )
    return f"its weights are not the ones in {weights.name}"


def prior_digest(run_dir: str | Path) -> str | None:
    """SHA-256 of a run's prior weights file, or None when the run has no prior."""
    path = run_path(run_dir, runfiles.PRIOR_WEIGHTS)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def prior_learned_from(run_dir: str | Path) -> str | None:
    """SHA-256 of the VQ-VAE weights whose codes the run's prior learned: recorded in the
    prior's weights file, or (priors saved before it was) in its resumable state; None when
    neither says."""
    recorded = safetensors_metadata(run_path(run_dir, runfiles.PRIOR_WEIGHTS))
    if isinstance(recorded.get(PRIOR_LEARNED_FROM), str):
        return recorded[PRIOR_LEARNED_FROM]
    state = run_path(run_dir, runfiles.PRIOR_STATE_META)
    try:
        recorded_in_state = read_json(state, "prior state")["extra"]["weights_sha256"]
    except (VqkitError, KeyError, TypeError, OSError):
        return None
    return recorded_in_state if isinstance(recorded_in_state, str) else None


def prior_is_stale(run_dir: str | Path) -> bool:
    """Whether the run's prior learned the code grids of other VQ-VAE weights than the run's
    own (the model was resumed or retrained after train-prior); False when unknown."""
    trained_on = prior_learned_from(run_dir)
    if trained_on is None:
        return False  # no readable record of the weights: nothing to compare
    try:
        if trained_on == weights_digest(run_dir):
            return False
        # Damaged weights differ too; loading them says so, more truly than "stale" would.
        read_tensors(run_path(run_dir, runfiles.WEIGHTS), "model weights")
        return True
    except (VqkitError, OSError):
        return False  # no weights: nothing to compare


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata in a safetensors file's header, read without its tensors; empty
    when the file is missing, damaged or has none."""
    try:
        with open_regular_file(path) as file:
            length = int.from_bytes(file.read(8), "little")
            header = parse_json(file.read(length)) if 0 < length <= HEADER_LIMIT else {}
    except (OSError, ValueError):
        return {}
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def save_weights(
    path: str | Path, module: torch.nn.Module, metadata: dict[str, str] | None = None
) -> None:
    write_bytes_atomic(path, state_dict_bytes(module, metadata))


def read_tensors(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning every kind of damage into one clear sentence."""
    return read_tensors_and_metadata(path, what)[0]


def read_tensors_and_metadata(
    path: str | Path, what: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of a safetensors file and its string metadata (empty when it has none)."""
    path = Path(path)
    try:
        data = read_file_bytes(path)
    except (FileNotFoundError, NotADirectoryError) as exc:  # no such file, or under a file
        raise VqkitError(f"The {what} '{path}' does not exist.") from exc
    except OSError as exc:
        raise VqkitError(f"The {what} '{path}' cannot be read: {exc.strerror}.") from exc
    damaged = f"The {what} '{path}' is damaged or not a safetensors file."
    try:
        tensors = load_safetensors(data)
        # The loader has validated the header: 8-byte little-endian length, then JSON.
        header_length = int.from_bytes(data[:8], "little")
        metadata = parse_json(data[8 : 8 + header_length]).get("__metadata__") or {}
    except (SafetensorError, ValueError, RuntimeError, OverflowError, KeyError, TypeError) as exc:
        raise VqkitError(damaged) from exc
    if not isinstance(metadata, dict):
        raise VqkitError(damaged)
    return tensors, metadata


def load_weights_into(module: torch.nn.Module, path: str | Path, what: str) -> None:
    """Copy stored tensors into ``module``, checking names and shapes against its config."""
    load_tensors_into(module, read_tensors(path, what), path, what)


def load_tensors_into(
    module: torch.nn.Module, tensors: dict[str, torch.Tensor], path: str | Path, what: str
) -> None:
    """Copy ``tensors`` into ``module`` after checking names, shapes and dtypes."""
    require_tensors_fit(module.state_dict(), tensors, path, what)
    module.load_state_dict(tensors)


def require_tensors_fit(
    expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], path: str | Path, what: str
) -> None:
    """One sentence when ``tensors`` differ from a module's ``expected`` state in their names,
    shapes or dtypes (``expected`` may be a meta-device module's: only shapes are read)."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise VqkitError(f"The {what} '{path}' does not fit its configuration ({detail}).")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise VqkitError(
                f"The {what} '{path}' does not fit its configuration: '{name}' has shape "
                f"{tuple(tensor.shape)}, the configuration needs {tuple(expected[name].shape)}."
            )
        if tensor.dtype != expected[name].dtype:
            raise VqkitError(
                f"The {what} '{path}' is damaged: '{name}' is stored as {tensor.dtype}, "
                f"the model needs {expected[name].dtype}."
            )


def load_model(run_dir: str | Path, device: str | torch.device = "cpu") -> VQVAE:
    """Rebuild the model of a run folder from its config and weights, in eval mode."""
    from vqkit.devices import resolve_device
    from vqkit.model import VQVAE

    target = resolve_device(device)  # 'auto' as everywhere else, and one sentence for a bad name
    config = load_config(run_dir)
    weights = run_path(run_dir, runfiles.WEIGHTS)
    if not weights.exists():
        reason = why_no_weights_yet(run_dir)
        if reason is not None:
            raise VqkitError(reason)
    what = "model weights file"
    tensors = read_tensors(weights, what)
    # The sizes are checked on a model built on the meta device, which allocates nothing: a
    # config.json edited to large but valid sizes made an 850-byte file allocate 128 GiB
    # before the weights could say they differ.
    expected = _meta_state(config.model)
    if expected is not None:
        parts = {name.split(".", 1)[0] for name in expected}
        mine = {name: t for name, t in tensors.items() if name.split(".", 1)[0] in parts}
        require_tensors_fit(expected, mine, weights, what)
    model = VQVAE(config.model)
    load_tensors_into(model, tensors, weights, what)
    return model.to(target).eval()


def _meta_state(config: ModelConfig) -> dict[str, torch.Tensor] | None:
    """The state of a VQVAE of ``config`` built on the meta device (shapes and dtypes, no
    memory), or None when it cannot be built there. With a quantizer of one's own, only the
    encoder's and decoder's: its code is built once, for real, as before, since what it made
    while built on the meta device could outlive that build (a tensor it caches, say) and
    leave the real model with tensors that hold no data."""
    from vqkit.model import VQVAE, Decoder, Encoder

    try:
        with torch.device("meta"):
            if config.quantizer.quantizer not in REGISTERED_QUANTIZERS:
                return VQVAE(config).state_dict()
            parts = {"encoder": Encoder(config), "decoder": Decoder(config)}
    except Exception:
        return None
    return {f"{part}.{name}": t for part, m in parts.items() for name, t in m.state_dict().items()}


def why_no_weights_yet(run_dir: str | Path) -> str | None:
    """One sentence for a run whose first epoch has not ended, so it has no weights file yet:
    being trained now, or stopped inside that epoch (resumable); None otherwise."""
    from vqkit import train_state
    from vqkit.run_lock import writer_of

    writer = writer_of(run_dir)
    if writer is not None and writer.startswith("train,"):
        return (
            f"A model is being trained in '{run_dir}' right now ({writer}); it can be used "
            "once its first epoch ends."
        )
    position = train_state.saved_position(run_dir)
    if position is None or position.epochs_done > 0:
        return None
    return (
        f"The training in '{run_dir}' stopped before its first epoch ended, so it has no "
        f"weights yet; continue it with {train_state.VQVAE_FILES.resume_command(run_dir)}."
    )
