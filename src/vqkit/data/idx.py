"""Strict reader (and a writer) for IDX files, the MNIST container format, gzip-compressed or
plain.

Layout: two zero bytes, a dtype code, the rank ``r``, then ``r`` big-endian uint32 dimensions,
then the payload in C order and big-endian byte order.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from vqkit.errors import VqkitError
from vqkit.fileio import read_file_bytes

__all__ = ["IdxError", "read_idx", "idx_bytes", "IDX_DTYPES", "MAX_RANK"]

# dtype code -> big-endian numpy dtype, as defined by the IDX format.
IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

# Image datasets use rank 1 (labels) to 4; anything far beyond that is a damaged header.
MAX_RANK = 8

_GZIP_MAGIC = b"\x1f\x8b"
READ_PIECE_BYTES = 1 << 24


class IdxError(VqkitError):
    """An IDX file is missing, unreadable or damaged."""


class ChecksumMismatch(IdxError):
    """An IDX file reads well but is not the published file it should be."""


def _read_bytes(path: Path) -> bytes:
    try:
        return read_file_bytes(path)
    except FileNotFoundError:
        raise IdxError(f"IDX file '{path}' does not exist.") from None
    except IsADirectoryError:
        raise IdxError(f"IDX file '{path}' is a directory, not a file.") from None
    except OSError as e:
        raise IdxError(f"IDX file '{path}' cannot be read ({e.strerror or e}).") from None


def _decompress(path: Path, raw: bytes) -> tuple[bytes, bool, int | None]:
    """The decompressed content (plain files pass through unchanged), whether it was cut, and
    for a stream shorter than its header declares, its payload's length (the content is then
    the header alone).

    Inflated twice, the first time keeping nothing, and kept no further than one byte past
    what the header declares: a 1 MB file of zeros inflates to 1 GB (a 'gzip bomb'), and a
    header claiming more than the stream holds is refused before any of it is kept."""
    if not raw.startswith(_GZIP_MAGIC):
        if path.name.endswith(".gz"):
            raise IdxError(f"IDX file '{path}' is named .gz but is not gzip-compressed.")
        return raw, False, None
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
            head = stream.read(4)
            rank = head[3] if len(head) == 4 and head[3] <= MAX_RANK else 0
            head += stream.read(4 * rank)
            declared = _declared_size(head)
            inflated = len(head) + _inflate(stream, declared - len(head) + 1, keep=False)[0]
        if inflated < declared:
            return head, False, inflated - len(head)
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
            data = _inflate(stream, declared + 1, keep=True)[1]
    except EOFError:
        raise IdxError(f"IDX file '{path}' is a truncated gzip stream.") from None
    except (OSError, zlib.error, ValueError) as e:
        # BadGzipFile (an OSError) covers bad headers, CRC and length mismatches.
        raise IdxError(f"IDX file '{path}' is a corrupt gzip stream ({e}).") from None
    return data, len(data) > declared, None


def _inflate(stream: gzip.GzipFile, limit: int, keep: bool) -> tuple[int, bytes]:
    """How many of up to ``limit`` bytes ``stream`` holds, and those bytes if ``keep``, read in
    pieces: one read of a header's claim of billions of images would try to hold them all."""
    pieces, count = [], 0
    while count < limit and (piece := stream.read(min(limit - count, READ_PIECE_BYTES))):
        count += len(piece)
        if keep:
            pieces.append(piece)
    return count, b"".join(pieces)


def _declared_size(head: bytes) -> int:
    """Header plus payload bytes that an IDX header ``head`` declares (its length alone when
    it is too damaged to declare any: the parser then says what is wrong)."""
    if len(head) < 4 or head[3] == 0 or len(head) != 4 + 4 * head[3]:
        return len(head)
    itemsize = np.dtype(IDX_DTYPES.get(head[2], ">u1")).itemsize
    return len(head) + itemsize * math.prod(struct.unpack(f">{head[3]}I", head[4:]))


def _parse(
    path: Path, data: bytes, cut: bool = False, payload_bytes: int | None = None
) -> np.ndarray:
    """The array in IDX content ``data``; ``cut``: decompressed no further than one byte past
    the payload, so trailing bytes are not counted; ``payload_bytes``: the payload's length
    where ``data`` holds the header only."""
    if len(data) < 4:
        raise IdxError(f"IDX file '{path}' is too short to hold an IDX header ({len(data)} bytes).")
    zero, code, rank = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise IdxError(
            f"IDX file '{path}' has bad magic bytes {data[:2].hex()} (the first two must be zero)."
        )
    if code not in IDX_DTYPES:
        raise IdxError(f"IDX file '{path}' has unknown dtype code 0x{code:02X}.")
    if rank == 0 or rank > MAX_RANK:
        raise IdxError(
            f"IDX file '{path}' declares implausible rank {rank} (expected 1..{MAX_RANK})."
        )
    header = 4 + 4 * rank
    if len(data) < header:
        raise IdxError(f"IDX file '{path}' ends inside its header ({len(data)} of {header} bytes).")
    dims = struct.unpack(f">{rank}I", data[4:header])
    dtype = np.dtype(IDX_DTYPES[code])
    # Python ints cannot overflow, so a header claiming huge dimensions is caught here,
    # before anything is allocated.
    expected = dtype.itemsize * math.prod(dims)
    actual = len(data) - header if payload_bytes is None else payload_bytes
    if actual < expected:
        raise IdxError(
            f"IDX file '{path}' is too short: shape {dims} needs {expected} payload bytes "
            f"but only {actual} are present."
        )
    if actual > expected:
        trailing = "more" if cut else actual - expected
        raise IdxError(
            f"IDX file '{path}' has {trailing} trailing bytes after the payload of shape {dims}."
        )
    arr = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header).reshape(
        dims
    )
    if dtype.itemsize > 1:
        arr = arr.astype(dtype.newbyteorder("="))  # native order for torch
    arr.setflags(write=False)
    return arr


def read_idx(path: str | Path, *, expected_sha256: str | None = None) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain) into a read-only, native-endian array.

    Returns an array of the declared shape, e.g. ``(N, 28, 28)`` uint8 for images or ``(N,)``
    uint8 for labels. If ``expected_sha256`` is given, the *decompressed* content must match it.
    Raises :class:`IdxError` (one sentence naming the file) for every kind of damage.
    """
    path = Path(path)
    data, cut, payload_bytes = _decompress(path, _read_bytes(path))
    arr = _parse(path, data, cut, payload_bytes)
    if expected_sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected_sha256.lower():
            raise ChecksumMismatch(
                f"IDX file '{path}' fails its checksum (SHA-256 of decompressed content is "
                f"{digest}, expected {expected_sha256.lower()}), so it is damaged or a "
                f"different version."
            )
    return arr


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array`` (uncompressed): what :func:`read_idx` reads back.

    The dtype must be one IDX defines (uint8, int8, int16, int32, float32, float64) and the
    rank 1 to ``MAX_RANK``; anything else raises :class:`IdxError`.
    """
    array = np.asarray(array)
    codes = {np.dtype(name): code for code, name in IDX_DTYPES.items()}
    stored = array.dtype.newbyteorder(">")  # IDX is big-endian; one-byte types are unaffected
    if stored not in codes:
        raise IdxError(
            f"IDX cannot hold {array.dtype} values; use uint8, int8, int16, int32, float32 "
            "or float64."
        )
    if not 1 <= array.ndim <= MAX_RANK:
        raise IdxError(f"IDX holds arrays of rank 1 to {MAX_RANK}, not {array.ndim}.")
    header = struct.pack(">HBB", 0, codes[stored], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(stored).tobytes()
