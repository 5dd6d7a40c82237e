"""Which weights made a figure: their digests, written into the PNG's text chunks.

A run folder's figures outlive its weights: ``train --resume`` or a new ``train-prior`` leaves
earlier sample, interpolation and codebook figures in place. Each figure vqkit writes from a run
carries the SHA-256 of the model weights (and of the prior, for prior samples) it came from, so
the report can mark the figures that no longer show the run's model.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vqkit.checkpoint import prior_digest, weights_digest

WEIGHTS_KEY = "vqkit-weights-sha256"
PRIOR_KEY = "vqkit-prior-sha256"


def stamp(run_dir: str | Path, *, prior: bool = False) -> dict[str, str]:
    """The text chunks for a figure made from the run's weights (and its prior, if ``prior``)."""
    text = {WEIGHTS_KEY: weights_digest(run_dir)}
    prior_sha = prior_digest(run_dir) if prior else None
    if prior_sha is not None:
        text[PRIOR_KEY] = prior_sha
    return text


def read_stamp(png: Path) -> dict[str, str]:
    """The provenance chunks of a PNG ({} for other files, unreadable ones, or older figures)."""
    try:
        with Image.open(png) as image:
            text = getattr(image, "text", {})  # PNG text chunks
            return {key: text[key] for key in (WEIGHTS_KEY, PRIOR_KEY) if key in text}
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError):
        return {}


def current_stamp(run_dir: str | Path) -> dict[str, str | None] | None:
    """The run's digests now ({WEIGHTS_KEY: ..., PRIOR_KEY: ... or None}); None when its
    weights cannot be read (then nothing can be called stale)."""
    try:
        return {WEIGHTS_KEY: weights_digest(run_dir), PRIOR_KEY: prior_digest(run_dir)}
    except OSError:
        return None


def differs(recorded: dict[str, str | None], current: dict[str, str | None]) -> bool:
    """Whether a record names other weights or another prior than ``current``; a digest the
    record lacks (or holds as None: no prior then) is not compared."""
    return any(value is not None and current.get(key) != value for key, value in recorded.items())


def is_stale(png: Path, current: dict[str, str | None]) -> bool:
    """Whether a figure's stamp names other weights than ``current``; an unstamped figure is
    not called stale: nothing to compare."""
    return differs(read_stamp(png), current)
