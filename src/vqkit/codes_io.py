"""Code grids and images as files: pickle-free ``.npy`` arrays and PNG grids.

Codes are the product of a VQ-VAE: ``encode`` writes them, ``decode`` and other tools read them
back. Reading validates everything a damaged or foreign file could get wrong.
"""

from __future__ import annotations

import io
import math
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from vqkit import arguments, runfiles
from vqkit.devices import channels_last_on_cpu
from vqkit.errors import VqkitError
from vqkit.fileio import write_bytes_atomic
from vqkit.images import GRID_COLUMNS, save_grid
from vqkit.model import VQVAE

IMAGE_SUFFIXES = (".png", ".npy")
NPY_MAGIC = b"\x93NUMPY"


def npy_bytes(array: np.ndarray) -> bytes:
    """An array as the bytes of a ``.npy`` file, without pickling."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def save_npy(array: np.ndarray, path: str | Path) -> Path:
    """Write an array as ``.npy`` atomically and without pickling."""
    path = Path(path)
    write_bytes_atomic(path, npy_bytes(array))
    return path


def save_codes(codes: torch.Tensor | np.ndarray, path: str | Path) -> Path:
    """Code grids (N, h, w) of an integer type as an int64 ``.npy`` file."""
    arguments.path(path, "The codes file")
    require_suffix(path, (".npy",), "codes file")
    # Floats are refused (3.7 would be stored as code 3 without a word), as decode does.
    codes = arguments.integers(codes, "The code grids to save", arrays=True)
    return save_npy(codes.detach().cpu().numpy().astype(np.int64), path)


def _require_data_the_header_promises(handle: BinaryIO, path: Path) -> None:
    """Refuse a ``.npy`` file holding fewer or more bytes than its header's shape and type
    promise (np.load would first allocate what a damaged header claims: terabytes, perhaps)."""
    handle.seek(0)
    version = np.lib.format.read_magic(handle)
    readers = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }
    if version not in readers:
        return  # a newer format: np.load judges it
    shape, _, dtype = readers[version](handle)
    if dtype.hasobject:
        return  # refused by np.load as pickled objects, whatever its size
    promised, held = math.prod(shape) * dtype.itemsize, path.stat().st_size - handle.tell()
    if promised != held:
        raise VqkitError(
            f"The codes file '{path}' is damaged: its header promises {promised:,} bytes of "
            f"data, and it holds {held:,}."
        )


def _require_regular_file(path: Path) -> None:
    """Refuse a pipe or device (``<(cat codes.npy)``, a FIFO): the size checks below need a
    file they can measure, and opening a FIFO with no writer would wait forever."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # missing or unreadable: opening it says which
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise VqkitError(
            f"The codes file '{path}' is a pipe or device, not a file; save the codes to a "
            ".npy file and give that."
        )


def load_codes(path: str | Path, num_codes: int, grid_size: int) -> torch.Tensor:
    """Validated code grids (N, h, w) int64 from ``.npy``; a single (h, w) grid becomes N=1."""
    path = Path(arguments.path(path, "The codes file"))
    arguments.whole_number(num_codes, "The number of codes", 1)
    arguments.whole_number(grid_size, "The grid size", 1)
    _require_regular_file(path)
    try:
        with path.open("rb") as handle:
            # np.load would also accept .npz archives and (refused) pickles: check the magic.
            if handle.read(len(NPY_MAGIC)) != NPY_MAGIC:
                raise VqkitError(f"The codes file '{path}' is not a .npy file.")
            _require_data_the_header_promises(handle, path)
            handle.seek(0)
            array = np.load(handle, allow_pickle=False)
    except (FileNotFoundError, NotADirectoryError) as exc:  # no such file, or under a file
        raise VqkitError(f"The codes file '{path}' does not exist.") from exc
    except IsADirectoryError as exc:
        raise VqkitError(f"The codes file '{path}' is a folder, not a .npy file.") from exc
    except ValueError as exc:  # an object array needs pickle; or a damaged header
        kind = "holds pickled objects" if "pickle" in str(exc).lower() else "is damaged"
        raise VqkitError(f"The codes file '{path}' {kind}; it must hold an integer array.") from exc
    except (OSError, EOFError) as exc:
        raise VqkitError(f"The codes file '{path}' is damaged or cannot be read.") from exc
    if array.ndim == 2:
        array = array[None]
    expected = (grid_size, grid_size)
    if array.ndim != 3 or array.shape[1:] != expected or array.shape[0] == 0:
        raise VqkitError(
            f"The codes in '{path}' have shape {array.shape}; decode needs (N, {grid_size}, "
            f"{grid_size}) code grids with N >= 1."
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise VqkitError(
            f"The codes in '{path}' are of type {array.dtype}; codes must be integers."
        )
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= num_codes:
        bad = low if low < 0 else high
        raise VqkitError(
            f"The codes in '{path}' include {bad}, outside this model's codebook (0 to "
            f"{num_codes - 1})."
        )
    return torch.from_numpy(array.astype(np.int64))


def require_suffix(path: str | Path, suffixes: tuple[str, ...], what: str) -> None:
    """A clear error when an output path does not end in one of the allowed suffixes."""
    name = Path(path).name
    if name.lower() in suffixes:  # ".png" alone is a hidden file without a suffix to Python
        raise VqkitError(f"The {what} path '{path}' needs a file name before {name}.")
    if Path(path).suffix.lower() not in suffixes:
        allowed = " or ".join(suffixes)
        raise VqkitError(f"The {what} path '{path}' must end in {allowed}.")


def require_new_outputs(
    outputs: dict[str, str | Path | None],
    inputs: Sequence[str | Path] = (),
    run_dir: str | Path | None = None,
) -> None:
    """Refuse, before any work, an output path (by flag) that names one of the command's input
    files, the same file as another output, or a file the run folder keeps for itself."""
    input_files = {Path(p).resolve() for p in inputs if Path(p).is_file()}
    run_files = set()
    if run_dir is not None:
        run_files = {Path(run_dir).resolve() / name for name in runfiles.FILE_NAMES}
    named: dict[Path, str] = {}
    for flag, path in outputs.items():
        if path is None:
            continue
        resolved = Path(path).resolve()
        if resolved in input_files:
            raise VqkitError(
                f"The {flag} path '{path}' is also an input of this command; write to another "
                "file so the input is not overwritten."
            )
        if resolved in named:
            raise VqkitError(f"{named[resolved]} and {flag} name the same file '{path}'.")
        # This run's own files, and those of any other run folder (one holding config.json).
        in_a_run = (
            resolved.name in runfiles.FILE_NAMES and (resolved.parent / runfiles.CONFIG).is_file()
        )
        if resolved in run_files or in_a_run:
            raise VqkitError(
                f"The {flag} path '{path}' is a file the run folder '{resolved.parent}' keeps "
                "for itself; write to another file."
            )
        named[resolved] = flag


def write_images(
    images: torch.Tensor,
    path: str | Path,
    columns: int = GRID_COLUMNS,
    stamp: dict[str, str] | None = None,
) -> Path:
    """Images (N, [1,] H, W) in [0, 1]: a PNG grid (with ``stamp``'s provenance chunks), or
    an (N, H, W) float32 ``.npy`` array."""
    require_suffix(path, IMAGE_SUFFIXES, "output")
    if Path(path).suffix.lower() == ".png":
        return save_grid(images, path, columns=columns, stamp=stamp)
    array = images.detach().cpu().float()
    if array.dim() == 4:
        array = array[:, 0]
    return save_npy(array.clamp(0.0, 1.0).numpy().astype(np.float32), path)


def _require_model_and_batch(model: Any, batch_size: Any) -> int:
    """The checks both batched helpers share (a torch.compile'd model is checked inside);
    returns the batch size as an int (torch's split takes no NumPy integer)."""
    arguments.instance(
        getattr(model, "_orig_mod", model), VQVAE, "The model", "VQVAE.from_run(run)"
    )
    return arguments.whole_number(batch_size, "The batch size", 1)


@torch.no_grad()
def encode_images(model: VQVAE, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Code grids (N, h, w) int64 on the CPU of uint8 images (N, H, W), in batches."""
    batch_size = _require_model_and_batch(model, batch_size)
    arguments.instance(images, torch.Tensor, "The images", "a (N, 28, 28) uint8 tensor")
    device = next(model.parameters()).device
    with channels_last_on_cpu(model):
        return torch.cat([model.encode(part.to(device)).cpu() for part in images.split(batch_size)])


@torch.no_grad()
def decode_codes(model: VQVAE, codes: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Images (N, C, H, W) in [0, 1] on the CPU of code grids (N, h, w), in batches."""
    batch_size = _require_model_and_batch(model, batch_size)
    codes = arguments.integers(codes, "Code grids (N, h, w)", arrays=True)  # NumPy's too
    device = next(model.parameters()).device
    return torch.cat([model.decode(part.to(device)).cpu() for part in codes.split(batch_size)])
