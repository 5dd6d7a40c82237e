"""code_usage.json's records checked without PyTorch (``vqkit runs`` and the report read them;
:mod:`vqkit.usage` makes and counts them)."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

from vqkit import runfiles
from vqkit.config import MAX_FSQ_CODES
from vqkit.run_reading import run_path, weights_digest

# Past this many codes the file lists only the used ones: an FSQ codebook of 2^24 codes wrote
# 117 MB of zeros (half a minute) where a few thousand codes were used.
DENSE_COUNTS_UP_TO = 65_536
# Counts read from a run's files are whole numbers below this: the report turns them into int64
# tensors and arrays (2**64 became a NumPy object array), and 2**62 leaves room for their sums.
MAX_COUNT = 2**62
# The largest codebook a sparse record read without a known size may name (its dense counts
# are made in memory): the largest FSQ grid vqkit trains.
MAX_SPARSE_CODES = MAX_FSQ_CODES


def _whole_counts(values: Any, positive: bool = False) -> bool:
    """Whether ``values`` is a list of whole numbers in [0, MAX_COUNT) (> 0 if ``positive``)."""
    low = 1 if positive else 0
    return isinstance(values, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and low <= v < MAX_COUNT for v in values
    )


def record_size(data: Any, num_codes: int | None = None) -> int | None:
    """The codebook size K of a code_usage.json record of either form; None when it is
    malformed or, with ``num_codes``, of another codebook size. (Without it, a sparse record
    may name up to MAX_SPARSE_CODES codes: a quantizer of one's own may count its codes
    otherwise than its settings' num_embeddings, which is all the report knows.)"""
    if not isinstance(data, dict):
        return None
    if "counts" in data:
        counts = data["counts"]
        if not _whole_counts(counts) or not counts or num_codes not in (None, len(counts)):
            return None
        return len(counts)
    codes, used, size = data.get("used_codes"), data.get("used_counts"), data.get("num_codes")
    if num_codes is None and type(size) is int and 1 <= size <= MAX_SPARSE_CODES:
        num_codes = size
    if num_codes is None or size != num_codes or not _whole_counts(codes):
        return None  # no codebook size (a record without num_codes, read for any size)
    if not _whole_counts(used, positive=True) or len(used) != len(codes):
        return None
    if codes and (codes[-1] >= num_codes or any(a >= b for a, b in pairwise(codes))):
        return None  # outside the codebook, or not ascending (a code listed twice)
    return num_codes


def counts_match_weights(run_dir: str | Path, data: dict, digest: str | None = None) -> bool:
    """Whether code_usage.json's ``data`` counted the weights of SHA-256 ``digest`` (default:
    the run's weights file now): by the digest it records, or (files written before the
    digest) by being newer than the weights file."""
    weights = run_path(run_dir, runfiles.WEIGHTS)
    if not weights.exists():
        return True  # nothing to compare with
    recorded = data.get("weights_sha256")
    if isinstance(recorded, str):
        return recorded == (digest or weights_digest(run_dir))
    counted = run_path(run_dir, runfiles.CODE_USAGE)
    return counted.exists() and counted.stat().st_mtime >= weights.stat().st_mtime
