"""A run folder's files as read without PyTorch: the folder, its settings, its files' digests,
and whether a safetensors file holds readable tensors.

``vqkit runs`` reads run folders through these alone, so it answers in a fraction of a second
instead of first spending PyTorch's import (about two seconds on a laptop CPU).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from safetensors import SafetensorError, deserialize

from vqkit import runfiles
from vqkit.config import RunConfig
from vqkit.errors import (
    InvalidValue,
    QuantizerLoadError,
    UnknownQuantizer,
    VqkitError,
    refused_file,
)
from vqkit.fileio import (
    open_regular_file,
    parse_json,
    read_file_bytes,
    read_json,
    read_json_object,
    require_own_records,
    write_json_atomic,
)


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
        raise InvalidValue(f"A run folder is a path (a str or pathlib.Path), not {run_dir!r}.")
    if not str(run_dir).strip():
        raise InvalidValue("The run folder name is empty; give a folder 'vqkit train' wrote.")
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


def weights_digest(run_dir: str | Path) -> str:
    """SHA-256 of a run's model weights file: names the weights that code grids came from."""
    return hashlib.sha256(read_file_bytes(run_path(run_dir, runfiles.WEIGHTS))).hexdigest()


def prior_digest(run_dir: str | Path) -> str | None:
    """SHA-256 of a run's prior weights file, or None when the run has no prior."""
    path = run_path(run_dir, runfiles.PRIOR_WEIGHTS)
    return hashlib.sha256(read_file_bytes(path)).hexdigest() if path.is_file() else None


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
        require_readable_tensors(run_path(run_dir, runfiles.WEIGHTS), "model weights")
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


# What a safetensors loader gives back (PyTorch's tensors, or the library's own views).
Parsed = TypeVar("Parsed")
# safetensors' names of the element types PyTorch reads (safetensors.torch maps each one); a
# weights file of another type is damaged for vqkit, as loading it would fail. safetensors maps
# U16, U32 and U64 since 0.6.1 (vqkit's floor: before, its parser took them and its loader did
# not); C64 since 0.7 and the FNUZ float8s since 0.8, which an older parser refuses outright,
# so `deserialize` below refuses them with it.
TORCH_DTYPES = frozenset(
    "F64 F32 F16 BF16 C64 I64 I32 I16 I8 U64 U32 U16 U8 BOOL "
    "F8_E4M3 F8_E4M3FNUZ F8_E5M2 F8_E5M2FNUZ".split()
)
# On a big-endian machine safetensors.torch byte-swaps each tensor through NumPy, which has no
# bfloat16 or float8 type: there a file holding one fails to load (even a tensor of no elements).
NO_NUMPY_DTYPES = frozenset("BF16 F8_E4M3 F8_E4M3FNUZ F8_E5M2 F8_E5M2FNUZ".split())
# Every error the library raises for damage (malformed header, offsets past the end, ...).
SAFETENSORS_DAMAGE = (SafetensorError, ValueError, RuntimeError, OverflowError, KeyError, TypeError)


def tensor_file_bytes(path: Path, what: str) -> bytes:
    """A safetensors file's bytes; one sentence when it is missing or cannot be read."""
    try:
        return read_file_bytes(path)
    except (FileNotFoundError, NotADirectoryError) as exc:  # no such file, or under a file
        raise VqkitError(f"The {what} '{path}' does not exist.") from exc
    except OSError as exc:
        raise VqkitError(f"The {what} '{path}' cannot be read: {exc.strerror}.") from exc


def damaged_tensors(path: Path, what: str) -> VqkitError:
    return VqkitError(f"The {what} '{path}' is damaged or not a safetensors file.")


def header_metadata(data: bytes, path: Path, what: str) -> dict[str, Any]:
    """The string metadata of safetensors bytes whose header the library has validated
    (8-byte little-endian length, then JSON); empty when there is none."""
    header_length = int.from_bytes(data[:8], "little")
    try:
        metadata = parse_json(data[8 : 8 + header_length]).get("__metadata__") or {}
    except SAFETENSORS_DAMAGE as exc:
        raise damaged_tensors(path, what) from exc
    if not isinstance(metadata, dict):
        raise damaged_tensors(path, what)
    return metadata


def parse_tensor_file(
    path: str | Path, what: str, parse: Callable[[bytes], Parsed]
) -> tuple[Parsed, dict[str, Any]]:
    """``parse`` (a safetensors loader) of a file's bytes, and the file's string metadata;
    one sentence for a file missing, unreadable, or damaged in any way the library finds."""
    path = Path(path)
    data = tensor_file_bytes(path, what)
    try:
        parsed = parse(data)
    except SAFETENSORS_DAMAGE as exc:
        raise damaged_tensors(path, what) from exc
    return parsed, header_metadata(data, path, what)


def require_readable_tensors(path: str | Path, what: str) -> None:
    """One sentence, as loading the file would give (``checkpoint.read_tensors``), when it is
    missing, unreadable or damaged; checked without building a tensor."""
    readable_tensor_metadata(path, what)


def readable_tensor_metadata(path: str | Path, what: str) -> dict[str, Any]:
    """The string metadata of a safetensors file whose tensors PyTorch would read, as
    ``checkpoint.read_tensors_and_metadata`` gives it, with the same sentence for a file it
    refuses; checked without building a tensor."""
    views, metadata = parse_tensor_file(path, what, deserialize)
    loadable = TORCH_DTYPES - NO_NUMPY_DTYPES if sys.byteorder == "big" else TORCH_DTYPES
    if any(view["dtype"] not in loadable for _, view in views):
        raise damaged_tensors(Path(path), what)
    return metadata
