"""How often the encoder picks each code on a whole training set, cached in the run folder.

The counts drive the ``used`` sampling strategy and the codebook figures. They are computed
once over the full training split (not the ``train_limit`` subset a quick run trained on) and
stored as ``code_usage.json``: ``{"split": "train", "images": N, "counts": [K ints],
"weights_sha256": the weights counted}``, and for one's own data ``"images_sha256"``, the
training images counted. A codebook of more than ``DENSE_COUNTS_UP_TO`` codes keeps only its
used codes instead of ``"counts"``: ``"num_codes": K, "used_codes": [ascending indices],
"used_counts": [their counts, each > 0]``.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import torch

from vqkit import runfiles
from vqkit.checkpoint import (
    load_config,
    require_run_model,
    run_path,
    state_digest,
)
from vqkit.data import OWN_DATASET, load_split
from vqkit.devices import channels_last_on_cpu, evaluation_mode
from vqkit.environment import images_digest
from vqkit.errors import VqkitError
from vqkit.fileio import read_json, write_json_atomic
from vqkit.model import VQVAE
from vqkit.quantize import count_batch_codes
from vqkit.usage_record import DENSE_COUNTS_UP_TO as DENSE_COUNTS_UP_TO
from vqkit.usage_record import MAX_COUNT as MAX_COUNT
from vqkit.usage_record import MAX_SPARSE_CODES as MAX_SPARSE_CODES
from vqkit.usage_record import counts_match_weights as counts_match_weights
from vqkit.usage_record import record_size

_READ_ONLY = {errno.EACCES, errno.EPERM, errno.EROFS}

USAGE_SPLIT = "train"


@torch.no_grad()
def count_codes(model: VQVAE, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(K,) int64 counts of every code the encoder chooses for uint8 images (N, H, W)."""
    device = next(model.parameters()).device
    counts = torch.zeros(model.num_codes, dtype=torch.long, device=device)
    with channels_last_on_cpu(model):
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size].to(device, non_blocking=True)
            codes = model.encode(batch).flatten().long()  # a quantizer's own may give int32
            # Not bincount(minlength=K): that makes a K-long tensor per batch (2^24 for a large
            # FSQ codebook), where adding ones at the batch's codes costs only the batch.
            counts.scatter_add_(0, codes, torch.ones_like(codes))
    return counts.cpu()


def usage_record(counts: torch.Tensor) -> dict[str, Any]:
    """The counts as code_usage.json keeps them: every code's, or past ``DENSE_COUNTS_UP_TO``
    codes the codebook size and the used codes with their counts."""
    if counts.numel() <= DENSE_COUNTS_UP_TO:
        return {"counts": counts.tolist()}
    used = used_codes(counts)
    return {
        "num_codes": counts.numel(),
        "used_codes": used.tolist(),
        "used_counts": counts[used].tolist(),
    }


def record_counts(data: Any, num_codes: int | None = None) -> torch.Tensor | None:
    """The (K,) int64 counts of a code_usage.json record of either form; None when it is
    malformed or, with ``num_codes``, of another codebook size (see :func:`record_size`)."""
    size = record_size(data, num_codes)
    if size is None:
        return None
    if "counts" in data:
        return torch.tensor(data["counts"], dtype=torch.long)
    counts = torch.zeros(size, dtype=torch.long)
    counts[torch.tensor(data["used_codes"], dtype=torch.long)] = torch.tensor(
        data["used_counts"], dtype=torch.long
    )
    return counts


def _cached_counts(
    run_dir: str | Path, model: VQVAE, digest: str | None = None, images_sha256: str | None = None
) -> torch.Tensor | None:
    """The cached counts when the file is well formed, fits the model and counted its weights
    (SHA-256 ``digest``, the model's own when not given; not those before a --resume) and,
    when ``images_sha256`` is given (one's own data, readable now), those images."""
    path = run_path(run_dir, runfiles.CODE_USAGE)
    if not path.exists():
        return None
    try:
        data = read_json(path, "code usage file")
    except VqkitError:
        return None  # a damaged cache is simply recomputed
    digest = digest or state_digest(model)
    if not isinstance(data, dict) or not counts_match_weights(run_dir, data, digest):
        return None
    if images_sha256 is not None and data.get("images_sha256") != images_sha256:
        return None  # one's own data folder now holds other training images
    counts, images = record_counts(data, model.num_codes), data.get("images")
    cells = model.config.grid_size**2
    if (
        data.get("split") != USAGE_SPLIT
        or not isinstance(images, int)
        or counts is None
        or int(counts.sum()) != images * cells
    ):
        return None
    return counts


def code_usage(
    run_dir: str | Path,
    model: VQVAE | None = None,
    *,
    data_dir: str | Path | None = None,
    refresh: bool = False,
) -> torch.Tensor:
    """(K,) int64 code counts over the run's whole training split, cached in the run folder.

    Reads ``code_usage.json`` when it is valid and names the weights' SHA-256 (an older file
    without the digest: when it is newer than the weights file) and, for one's own data that
    can be read now, the training images' SHA-256; otherwise counts the training code grids
    train-prior cached for these weights (a named dataset's, unless ``refresh``), or encodes
    every training image (batched, no gradients) and writes the cache. A ``model`` given must
    be the run's own (the cache names the run's weights): another is refused.
    """
    config = load_config(run_dir)
    if model is None:
        model = VQVAE.from_run(run_dir)
    else:
        require_run_model(model, run_dir)
    path = run_path(run_dir, runfiles.CODE_USAGE)
    digest = state_digest(model)  # of the weights counted, not the file: a training may save
    data_dir = config.train.data_folder(data_dir)
    images = own = None
    if config.train.dataset == OWN_DATASET:  # may have been rewritten since it was counted
        try:
            images = load_split(config.train.dataset, USAGE_SPLIT, data_dir).images
            own = images_digest(images)
        except VqkitError:
            pass  # a moved folder: the counts cached for these weights still answer
    cached = None if refresh else _cached_counts(run_dir, model, digest, own)
    if cached is not None:
        return cached
    # A named dataset's training codes may be cached already by train-prior, for these weights
    # (refresh encodes the images again all the same).
    reuse = images is None and not refresh
    counts = _counts_of_cached_grids(run_dir, model, digest) if reuse else None
    if counts is not None:
        count = int(counts.sum()) // model.config.grid_size**2
    else:
        if images is None:
            images = load_split(config.train.dataset, USAGE_SPLIT, data_dir).images
        with evaluation_mode(model):
            counts = count_codes(model, images, config.train.eval_batch_size)
        count = int(images.shape[0])
    record = {
        "split": USAGE_SPLIT,
        "images": count,
        **usage_record(counts),
        "weights_sha256": digest,
    }
    if own is not None:
        record["images_sha256"] = own
    try:
        write_json_atomic(path, record)
    except VqkitError as exc:
        # A run folder this user may only read (a colleague's, a read-only mount in a
        # container) loses only the cache: sampling and the codebook view write elsewhere.
        if not isinstance(exc.__cause__, OSError) or exc.__cause__.errno not in _READ_ONLY:
            raise
    return counts


def _counts_of_cached_grids(run_dir: str | Path, model: VQVAE, digest: str) -> torch.Tensor | None:
    """The counts of the training split's code grids that train-prior cached in the run folder
    (vqkit.prior_training.code_grids) when those are the codes of the weights of SHA-256
    ``digest``: the same encoding of the same images, without encoding 60,000 of them again
    (10 s and more on a small CPU). None when there is no such cache. Named datasets only: one's
    own data is checked against its images' digest, which the grid cache does not record."""
    from vqkit.prior_training import cached_code_grids  # the prior's modules: only on a miss

    grids = cached_code_grids(run_dir, digest, model)
    if grids is None:
        return None
    return count_batch_codes(grids[USAGE_SPLIT].codes, model.num_codes)


def used_codes(counts: torch.Tensor) -> torch.Tensor:
    """Indices of the codes with a nonzero count, ascending: (U,) int64."""
    return torch.nonzero(counts > 0).flatten()
