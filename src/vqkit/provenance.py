"""Which weights made a figure: their digests, written into the PNG's text chunks.

A run folder's figures outlive its weights: ``train --resume`` or a new ``train-prior`` leaves
earlier sample, interpolation and codebook figures in place. Each figure vqkit writes from a run
carries the SHA-256 of the model weights (and of the prior, for prior samples) it came from, so
the report can mark the figures that no longer show the run's model.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, UnidentifiedImageError

from vqkit.fileio import read_file_bytes
from vqkit.run_reading import prior_digest, weights_digest

if TYPE_CHECKING:  # reading stamps needs no PyTorch (vqkit runs); making one has it loaded
    import torch

WEIGHTS_KEY = "vqkit-weights-sha256"
PRIOR_KEY = "vqkit-prior-sha256"
MADE_WITH_KEY = "vqkit-made-with"  # the command's settings, as JSON: seed, strategy, ...


def stamp(
    model: torch.nn.Module,
    *,
    prior_sha256: str | None = None,
    made_with: dict[str, Any] | None = None,
) -> dict[str, str]:
    """The text chunks for a figure that ``model``, the run's, made (with the prior whose
    weights file has SHA-256 ``prior_sha256``: SamplingContext.prior_sha256 after drawing);
    ``made_with`` adds the settings that, with those, decide its pixels (the seed above all).
    The digests are of what was used, not of the files now: a training that saves while the
    figure is drawn must not lend it the newer weights' name."""
    from vqkit.checkpoint import state_digest  # PyTorch's serialiser: loaded by now anyway

    text = {WEIGHTS_KEY: state_digest(model)}
    if prior_sha256 is not None:
        text[PRIOR_KEY] = prior_sha256
    if made_with is not None:
        text[MADE_WITH_KEY] = json.dumps(made_with, sort_keys=True)
    return text


def read_stamp(png: Path) -> dict[str, str]:
    """The provenance chunks of a PNG ({} for other files, unreadable ones, or older figures)."""
    text = _text_chunks(png)
    return {key: text[key] for key in (WEIGHTS_KEY, PRIOR_KEY) if key in text}


def made_with(png: Path) -> dict[str, Any]:
    """The settings a figure records it was made with ({} when it records none, or not as a
    JSON object)."""
    try:
        settings = json.loads(_text_chunks(png).get(MADE_WITH_KEY, "{}"))
    except ValueError:
        return {}
    return settings if isinstance(settings, dict) else {}


def _text_chunks(png: Path) -> dict[str, str]:
    try:
        with Image.open(io.BytesIO(read_file_bytes(png))) as image:  # never a pipe or device
            return dict(getattr(image, "text", {}))  # PNG text chunks
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError):
        return {}


def current_stamp(run_dir: str | Path) -> dict[str, str | None] | None:
    """The run's digests now ({WEIGHTS_KEY: ..., PRIOR_KEY: ... or None}); None when its
    weights cannot be read (then nothing can be called stale)."""
    try:
        return {WEIGHTS_KEY: weights_digest(run_dir), PRIOR_KEY: prior_digest(run_dir)}
    except OSError:
        return None


EARLIER_WEIGHTS = "earlier VQ-VAE weights"
EARLIER_PRIOR = "an earlier prior"
REMOVED_PRIOR = "a prior the run no longer holds"


def staleness(recorded: Mapping[str, str | None], current: Mapping[str, str | None]) -> str | None:
    """What a record was made from that the run no longer holds (EARLIER_WEIGHTS before a
    prior's reason: other weights make everything stale), or None when it is current. A digest
    the record lacks (or holds as None: no prior then) is not compared."""
    weights = recorded.get(WEIGHTS_KEY)
    if weights is not None and current.get(WEIGHTS_KEY) != weights:
        return EARLIER_WEIGHTS
    prior = recorded.get(PRIOR_KEY)
    if prior is not None and current.get(PRIOR_KEY) != prior:
        return REMOVED_PRIOR if current.get(PRIOR_KEY) is None else EARLIER_PRIOR
    return None


def figure_staleness(png: Path, current: dict[str, str | None]) -> str | None:
    """What a figure was made from that the run no longer holds (see :func:`staleness`); an
    unstamped figure is not called stale: nothing to compare."""
    return staleness(read_stamp(png), current)
