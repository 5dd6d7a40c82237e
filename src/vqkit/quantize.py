"""Vector quantization: snap each encoder output vector to its nearest codebook entry.

The quantizer contract, shared by every variant: ``forward(z)`` takes continuous latents
``(B, D, H, W)`` (the built-in ones any ``(B, D, *S)``: sequences ``(B, D, T)``, vectors
``(B, D)``) and returns a :class:`QuantizerOutput` with the straight-through quantized latents,
the integer code grid ``(B, H, W)`` (``(B, *S)``), the training loss and per-code usage counts;
``quantize_codes`` maps latents to integer grids without side effects, ``codes_to_latents`` maps
integer grids back to latent vectors, ``num_codes`` is the number of distinct codes and
``training_stats()`` returns counters (restarts, ...) that training logs once per epoch;
``needs_initialization()`` says whether a one-time set-up from training data is pending (the
k-means codebook init) and ``initialize(z)`` does it from latents, as the first training forward
would.

Variants: :mod:`vqkit.vq` (a learned codebook, updated by its loss or by moving averages, with
the health measures of :mod:`vqkit.codebook_health`) and :mod:`vqkit.fsq` (finite scalar
quantization, no codebook); :func:`register_quantizer` adds one of your own under a name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import torch
from torch import nn

from vqkit import arguments
from vqkit.config import QUANTIZERS, REGISTERED_QUANTIZERS, QuantizerConfig
from vqkit.errors import InvalidValue, VqkitError

# Largest number of distance entries (rows × codes) held at once. Chunking the distance matrix
# keeps peak memory flat as N×K grows, while chunks stay big enough for an efficient matmul.
DISTANCE_CHUNK_ELEMENTS = 1 << 22


def count_batch_codes(codes: torch.Tensor, num_codes: int) -> torch.Tensor:
    """(num_codes,) int64: how often each code occurs in ``codes`` (any shape, int64)."""
    flat = codes.reshape(-1).long()  # a quantizer's own may give int32
    # index_add_ rather than bincount: CUDA bincount reads max() back to the host.
    return flat.new_zeros(num_codes, dtype=torch.long).index_add_(
        0, flat, torch.ones_like(flat, dtype=torch.long)
    )


class LazyCodeCounts:
    """The ``code_counts`` field of :class:`CountedCodes`: set as the (K,) tensor or as K
    alone, read as the tensor (counted from ``codes`` at the first read when given as K).

    A data descriptor, not a property: the outputs stay dataclasses whose ``code_counts`` is a
    field (``dataclasses.fields`` and ``replace``, DistributedDataParallel's search of an
    output for its tensors with ``find_unused_parameters``) and may be set again."""

    def __get__(self, output: Any, owner: type | None = None) -> torch.Tensor:
        if output is None:  # read on the class: the dataclass field has no default
            raise AttributeError("code_counts")
        if not isinstance(output._counts, torch.Tensor):
            output._counts = count_batch_codes(output.codes, output._counts)
        return output._counts

    def __set__(self, output: Any, counts: torch.Tensor | int) -> None:
        output._counts = counts


class CountedCodes:
    """Base of the output dataclasses with a code grid ``codes`` and ``code_counts``, its (K,)
    int64 count of each code.

    The counts may be given as K alone: they are then counted from the codes when first read.
    A training step never reads them, and for FSQ's largest grids (K = 2^24) counting them
    each step would build a 128 MB tensor, slower than the step itself."""

    codes: torch.Tensor
    _counts: torch.Tensor | int
    code_counts = LazyCodeCounts()

    def counts_or_num_codes(self) -> torch.Tensor | int:
        """The counts if they were made, else K: passes them on without counting."""
        return self._counts


@dataclass
class QuantizerOutput(CountedCodes):
    """What a quantizer's forward returns, for latents z (B, D, H, W) (or (B, D, *S))."""

    quantized: torch.Tensor  # (B, D, H, W) float, straight-through: gradient flows to z
    codes: torch.Tensor  # (B, H, W) int64 code indices
    # () float: codebook loss + beta * commitment loss; beta * commitment alone with EMA
    # codebook updates; 0 for FSQ
    loss: torch.Tensor
    # (K,) int64: how often each code was chosen in this batch (given as the tensor, or as K
    # to count them only if read)
    code_counts: torch.Tensor | int  # type: ignore[assignment]


if TYPE_CHECKING:

    class Quantizer(nn.Module):
        """The quantizer contract of the module doc, as static tools see it: what
        :func:`build_quantizer` returns and ``VQVAE.quantizer`` holds (a ``VectorQuantizer``, a
        ``FiniteScalarQuantizer`` or a registered class of one's own). At run time the name is
        ``nn.Module`` itself: a quantizer of one's own need not derive from any vqkit class."""

        @property
        def num_codes(self) -> int: ...
        def __call__(self, z: torch.Tensor) -> QuantizerOutput: ...
        def forward(self, z: torch.Tensor) -> QuantizerOutput: ...
        def quantize_codes(self, z: torch.Tensor) -> torch.Tensor: ...
        def codes_to_latents(self, codes: torch.Tensor) -> torch.Tensor: ...
        def training_stats(self) -> dict[str, float | int]: ...
        def needs_initialization(self) -> bool: ...
        def initialize(self, z: torch.Tensor) -> None: ...

else:
    Quantizer = nn.Module

# A quantizer class, kept as itself by register_quantizer (static tools read its own type).
QuantizerClass = TypeVar("QuantizerClass", bound=type[nn.Module])


def latent_shape(z: torch.Tensor, dim: int) -> torch.Size:
    """The shape (B, D, *S) of latents ``z`` for a quantizer of ``dim`` dimensions, or one
    sentence: a quantizer used on its own would otherwise fail deep inside a matrix product.

    S is any number of positions, each quantized on its own: (H, W) for images (the VQ-VAE),
    (T,) for sequences, none for a batch of plain vectors (B, D).
    """
    if not isinstance(z, torch.Tensor):
        raise InvalidValue(
            f"The quantizer takes latents as a torch tensor (B, {dim}, ...), not a "
            f"{type(z).__name__}."
        )
    if not z.is_floating_point():  # bool, integer or complex latents have no nearest code
        raise InvalidValue(f"The quantizer takes latents of a float type, not {z.dtype}.")
    if z.dim() < 2 or z.shape[1] != dim:
        raise InvalidValue(
            f"The quantizer takes latents (B, {dim}, ...) with the {dim} channels second "
            f"((B, {dim}, H, W) for images, (B, {dim}, T) for sequences: x.transpose(1, 2) for "
            f"(B, T, {dim})); these have shape {tuple(z.shape)}."
        )
    return z.shape


def as_rows(z: torch.Tensor) -> torch.Tensor:
    """Latents (B, D, *S) -> one row per position (N, D), N = B·∏S, in (B, *S) order."""
    return z.movedim(1, -1).reshape(-1, z.shape[1])


def as_latents(rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Rows (N, D') back to latents (B, D', *S) of a latent ``shape`` (B, D, *S)."""
    return rows.view(shape[0], *shape[2:], rows.shape[1]).movedim(-1, 1)


def positions_per_item(shape: torch.Size) -> int:
    """Rows one batch item contributes (H·W for images): shards and restarts sample by item."""
    return math.prod(shape[2:])


def require_codes_in_range(codes: torch.Tensor, num_codes: int) -> None:
    """Refuse codes outside 0 .. num_codes - 1 with one sentence (one read of min and max, so a
    GPU caller checks once, before its loop, not per step)."""
    codes = arguments.widened(codes)
    if codes.numel():  # FSQ would wrap an out-of-range code silently; VQ would IndexError
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= num_codes:
            raise InvalidValue(
                f"Codes must lie in 0 to {num_codes - 1} for this model's codebook; these range "
                f"from {low} to {high}."
            )


def require_code_tensor(codes: torch.Tensor) -> torch.Tensor:
    """Refuse code indices that are not an integer tensor of at least one dimension (B, *S);
    returns them, unsigned types wider than a byte as int64 (torch has no min of those)."""
    codes = arguments.integers(codes, "Codes (B, ...)")
    if codes.dim() == 0:
        raise InvalidValue("Codes must have a batch dimension (B, ...); this is a single number.")
    return codes


@torch.no_grad()
def nearest_codes(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row (squared L2) for each vector.

    vectors: (N, D), codebook: (K, D) -> (N,) int64. ||z||² is the same for every code, so the
    argmin only needs ||e||² - 2 z·e, one fused matrix product per chunk (never an N×K×D tensor).
    """
    # Distances and argmin stay fp32 even inside a bf16 autocast region (which would otherwise
    # run addmm in bf16 and pick wrong codes for near ties).
    with torch.autocast(vectors.device.type, enabled=False):
        vectors = vectors.detach().float()
        codebook = codebook.detach().float()
        code_sq_norms = codebook.pow(2).sum(dim=1)  # (K,)
        rows_per_chunk = max(1, DISTANCE_CHUNK_ELEMENTS // codebook.shape[0])
        if vectors.shape[0] <= rows_per_chunk:
            return torch.addmm(code_sq_norms, vectors, codebook.t(), alpha=-2.0).argmin(dim=1)
        out = torch.empty(vectors.shape[0], dtype=torch.long, device=vectors.device)
        for start in range(0, vectors.shape[0], rows_per_chunk):
            chunk = vectors[start : start + rows_per_chunk]
            distances = torch.addmm(code_sq_norms, chunk, codebook.t(), alpha=-2.0)  # (n, K)
            out[start : start + rows_per_chunk] = distances.argmin(dim=1)
        return out


def perplexity(code_counts: torch.Tensor) -> float:
    """exp(entropy) of the code-usage distribution: K when all codes are equally used, 1 if one."""
    if isinstance(code_counts, np.ndarray):  # torch takes no reversed strides
        code_counts = code_counts.copy()
    try:
        counts = torch.as_tensor(code_counts)  # a list or NumPy counts too
    except (TypeError, ValueError, RuntimeError):
        counts = None
    if counts is None or counts.is_complex() or counts.dtype == torch.bool or counts.dim() != 1:
        raise InvalidValue("Code counts must be one (K,) tensor, list or array of numbers.")
    code_counts = counts.double()  # unsigned types have no min in torch
    if code_counts.numel() and not (torch.isfinite(code_counts).all() and code_counts.min() >= 0):
        raise InvalidValue("Code counts must be finite and not negative.")
    # Shares of the total, whatever it is: clamping it to 1 left fractional counts that sum to
    # less than 1 unnormalised ([0.1, 0.1] gave 1.58, not 2). No counts at all (a zero total)
    # have the entropy 0, not the NaN of 0 / 0.
    total = code_counts.sum()
    probs = code_counts / torch.where(total > 0, total, 1.0)
    entropy = -(probs * torch.log(probs.clamp(min=1e-30))).sum()
    return float(torch.exp(entropy))


def register_quantizer(name: str) -> Callable[[QuantizerClass], QuantizerClass]:
    """Class decorator: make ``QuantizerConfig(quantizer=name)`` build ``cls(config)``.

    The class must keep the contract in the module doc (``VectorQuantizer`` subclasses do); it
    gets the whole QuantizerConfig (``num_embeddings``, ``embedding_dim``, ``beta``, ...). A run
    trained with it records only the name, so code that loads the run must register it first.
    """
    if not isinstance(name, str) or not name.strip():
        raise InvalidValue(
            f"A quantizer is registered under a name (a non-empty str), not {name!r}."
        )
    if name in QUANTIZERS:
        raise InvalidValue(f"'{name}' is a built-in quantizer; register yours under another name.")

    def register(cls: QuantizerClass) -> QuantizerClass:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise InvalidValue(
                f"register_quantizer('{name}') decorates a class derived from torch.nn.Module "
                f"(vqkit.vq.VectorQuantizer, say), not {cls!r}."
            )
        earlier = REGISTERED_QUANTIZERS.get(name)
        # The same class defined again (a notebook cell run twice) replaces itself; another
        # class would silently change what runs of that name load.
        if earlier is not None and _qualified(earlier) != _qualified(cls):
            raise InvalidValue(
                f"The quantizer name '{name}' is already registered by {_qualified(earlier)}; "
                f"register {_qualified(cls)} under another name."
            )
        REGISTERED_QUANTIZERS[name] = cls
        return cls

    return register


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# What training, loading, sampling and the report call on every quantizer (the module doc).
QUANTIZER_CONTRACT = (
    "forward",
    "quantize_codes",
    "codes_to_latents",
    "num_codes",
    "training_stats",
    "needs_initialization",
    "initialize",
)


def _build_registered(config: QuantizerConfig) -> Quantizer:
    """A registered class built and checked against the contract, before any training."""
    cls = REGISTERED_QUANTIZERS[config.quantizer]
    quantizer = cls(config)
    missing = [name for name in QUANTIZER_CONTRACT if not hasattr(quantizer, name)]
    if getattr(type(quantizer), "forward", None) is nn.Module.forward:  # raises if unset
        missing.insert(0, "forward")
    if not isinstance(quantizer, nn.Module) or missing:
        lacks = ", ".join(missing) if missing else "nn.Module as its base class"
        raise VqkitError(
            f"The quantizer '{config.quantizer}' ({_qualified(cls)}) lacks {lacks}, which "
            "vqkit calls (the contract in the vqkit.quantize module text; subclassing "
            "vqkit.vq.VectorQuantizer keeps it)."
        )
    return cast("Quantizer", quantizer)


def build_quantizer(config: QuantizerConfig) -> Quantizer:
    """The quantizer a config asks for (one interface for every variant, see the module doc)."""
    if config.quantizer in REGISTERED_QUANTIZERS:
        return _build_registered(config)
    # The variants import this module's contract, so they are imported here, not at the top.
    if config.quantizer == "fsq":
        from vqkit.fsq import FiniteScalarQuantizer

        return cast("Quantizer", FiniteScalarQuantizer(config))
    from vqkit.vq import VectorQuantizer

    return cast("Quantizer", VectorQuantizer(config))
