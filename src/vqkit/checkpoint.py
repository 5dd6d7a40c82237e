"""Run folders: self-describing, pickle-free storage of a trained model.

A run folder holds ``config.json`` (a RunConfig: everything to rebuild the model),
``model.safetensors`` (weights and buffers; safetensors cannot execute code on load),
``metrics.jsonl`` (one line per epoch) and figures.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from vqkit import runfiles
from vqkit.config import REGISTERED_QUANTIZERS, ModelConfig
from vqkit.errors import VqkitError
from vqkit.fileio import write_bytes_atomic
from vqkit.run_reading import HEADER_LIMIT as HEADER_LIMIT
from vqkit.run_reading import PRIOR_LEARNED_FROM as PRIOR_LEARNED_FROM
from vqkit.run_reading import config_from_file as config_from_file
from vqkit.run_reading import load_config as load_config
from vqkit.run_reading import parse_tensor_file
from vqkit.run_reading import prior_digest as prior_digest
from vqkit.run_reading import prior_is_stale as prior_is_stale
from vqkit.run_reading import prior_learned_from as prior_learned_from
from vqkit.run_reading import require_files_where_files_go as require_files_where_files_go
from vqkit.run_reading import require_run_folder as require_run_folder
from vqkit.run_reading import run_folder as run_folder
from vqkit.run_reading import run_path as run_path
from vqkit.run_reading import safetensors_metadata as safetensors_metadata
from vqkit.run_reading import save_config as save_config
from vqkit.run_reading import weights_digest as weights_digest

if TYPE_CHECKING:  # model imports this module
    from vqkit.model import VQVAE


def state_dict_bytes(module: torch.nn.Module, metadata: dict[str, str] | None = None) -> bytes:
    """A module's parameters and buffers as safetensors bytes (contiguous CPU copies)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    return save_safetensors(tensors, metadata)


def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state as safetensors bytes: what its weights file would hash to
    (a compiled module's: the wrapped one's, as training saves it)."""
    module = getattr(module, "_orig_mod", module)
    return hashlib.sha256(state_dict_bytes(module)).hexdigest()


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
    return parse_tensor_file(path, what, load_safetensors)


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
    from vqkit.devices import built_for_saved_weights, resolve_device
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
    model = built_for_saved_weights(lambda: VQVAE(config.model))
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
