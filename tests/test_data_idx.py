"""read_idx: round trips against hand-written headers, every kind of damage, and fuzzing."""

from __future__ import annotations

import gzip
import hashlib
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqkit.data.idx import IdxError, read_idx
from vqkit.data.idx import idx_bytes as vqkit_idx_bytes
from vqkit.errors import VqkitError


def idx_bytes(code: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    """An IDX file written by hand: 0x0000, dtype code, rank, big-endian uint32 dims."""
    return struct.pack(">HBB", 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + payload


def write(path: Path, content: bytes, gz: bool = True) -> Path:
    path.write_bytes(gzip.compress(content) if gz else content)
    return path


SMALL = idx_bytes(0x08, (2, 3), bytes([0, 1, 2, 253, 254, 255]))


@pytest.mark.parametrize("gz", [True, False])
def test_ubyte_round_trip(tmp_path: Path, gz: bool) -> None:
    p = write(tmp_path / ("a.gz" if gz else "a"), SMALL, gz)
    arr = read_idx(p)
    assert arr.dtype == np.uint8 and arr.shape == (2, 3)
    assert arr.tolist() == [[0, 1, 2], [253, 254, 255]]


@pytest.mark.parametrize(
    ("code", "fmt", "values"),
    [
        (0x09, "b", [-128, -1, 0, 127]),
        (0x0B, "h", [-32768, -2, 1, 32767]),
        (0x0C, "i", [-(2**31), -3, 7, 2**31 - 1]),
        (0x0D, "f", [-1.5, 0.0, 0.25, 3.0]),
        (0x0E, "d", [-1e300, -0.5, 1e-300, 2.0]),
    ],
)
def test_typed_round_trip_big_endian(tmp_path: Path, code: int, fmt: str, values: list) -> None:
    # struct with ">" is an independent big-endian encoder.
    payload = struct.pack(f">{len(values)}{fmt}", *values)
    p = write(tmp_path / "t.gz", idx_bytes(code, (2, 2), payload))
    arr = read_idx(p)
    assert arr.shape == (2, 2)
    assert arr.dtype.isnative
    assert arr.ravel().tolist() == values


def test_rank1_and_read_only(tmp_path: Path) -> None:
    arr = read_idx(write(tmp_path / "l.gz", idx_bytes(0x08, (4,), bytes([5, 0, 4, 1]))))
    assert arr.tolist() == [5, 0, 4, 1]
    assert not arr.flags.writeable


def test_checksum_match_and_mismatch(tmp_path: Path) -> None:
    p = write(tmp_path / "c.gz", SMALL)
    good = hashlib.sha256(SMALL).hexdigest()
    assert read_idx(p, expected_sha256=good).shape == (2, 3)
    with pytest.raises(IdxError, match=r"c\.gz.*checksum"):
        read_idx(p, expected_sha256="0" * 64)


def test_idx_error_is_vqkit_error() -> None:
    assert issubclass(IdxError, VqkitError)


_GZ = gzip.compress(SMALL)
DAMAGE = [
    ("trunc.gz", _GZ[:-10], False, "truncated gzip"),
    ("crc.gz", _GZ[:-8] + bytes(4) + _GZ[-4:], False, "corrupt gzip"),
    ("plain.gz", SMALL, False, "not gzip"),
    ("magic.gz", b"\x01\x00" + SMALL[2:], True, "magic"),
    ("dtype.gz", b"\x00\x00\x0a" + SMALL[3:], True, "dtype code 0x0A"),
    ("rank0.gz", b"\x00\x00\x08\x00", True, "rank 0"),
    ("rank99.gz", b"\x00\x00\x08\x63" + b"\x00" * 8, True, "rank 99"),
    ("short.gz", SMALL[:-1], True, "too short"),
    ("tiny.gz", b"\x00\x00", True, "too short"),
    ("header.gz", SMALL[:6], True, "header"),
    ("trailing", SMALL + b"\x00\x00", False, "2 trailing bytes"),
    ("trailing.gz", SMALL + b"\x00\x00", True, "more trailing bytes"),  # inflated no further
    ("huge.gz", idx_bytes(0x0E, (2**32 - 1,) * 4, b""), True, "too short"),
]


@pytest.mark.parametrize(("name", "content", "gz", "problem"), DAMAGE, ids=[d[0] for d in DAMAGE])
def test_damage_is_named(tmp_path: Path, name: str, content: bytes, gz: bool, problem: str) -> None:
    p = write(tmp_path / name, content, gz)
    with pytest.raises(IdxError) as info:
        read_idx(p)
    msg = str(info.value)
    assert str(p) in msg and problem in msg
    assert msg.endswith(".") and "\n" not in msg


@pytest.mark.parametrize("claimed", [2, 10**9])
def test_a_gzip_bomb_is_inflated_no_further_than_its_header_claims(tmp_path: Path, claimed):
    """200 MB of zeros gzip to 200 kB: with a header claiming 2 images of 3 bytes (or a
    billion, more than the file holds) they were inflated whole before being refused."""
    zeros = bytes(200 * 2**20)
    p = write(tmp_path / "bomb.gz", idx_bytes(0x08, (claimed, 3), b"") + zeros, True)
    assert p.stat().st_size < 2**20
    tracemalloc.start()
    try:
        with pytest.raises(IdxError, match="trailing bytes" if claimed == 2 else "too short"):
            read_idx(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 80 * 2**20  # 200 MB inflated in pieces of 16 MB, none of it kept


def test_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(IdxError, match="does not exist"):
        read_idx(tmp_path / "nope.gz")
    with pytest.raises(IdxError, match="directory"):
        read_idx(tmp_path)


VALID = gzip.compress(idx_bytes(0x0B, (3, 2), struct.pack(">6h", 1, -2, 3, -4, 5, -6)))
RAW_VALID = idx_bytes(0x0B, (3, 2), struct.pack(">6h", 1, -2, 3, -4, 5, -6))
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _only_idx_error(path: Path) -> None:
    try:
        read_idx(path)
    except IdxError:
        pass


@FUZZ
@given(data=st.binary(max_size=200), gz=st.booleans())
def test_fuzz_random_bytes(tmp_path: Path, data: bytes, gz: bool) -> None:
    _only_idx_error(write(tmp_path / "f.gz", data, gz))
    _only_idx_error(write(tmp_path / "f", data, gz))


@FUZZ
@given(
    edits=st.lists(st.tuples(st.integers(0, len(RAW_VALID) - 1), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, len(RAW_VALID) + 4),
    gz=st.booleans(),
)
def test_fuzz_mutated_header(tmp_path: Path, edits: list, cut: int, gz: bool) -> None:
    raw = bytearray(RAW_VALID + b"\x00" * 4)[:cut]
    for pos, value in edits:
        if pos < len(raw):
            raw[pos] = value
    _only_idx_error(write(tmp_path / "m.gz", bytes(raw), gz))


@FUZZ
@given(pos=st.integers(0, len(VALID) - 1), value=st.integers(0, 255), cut=st.integers(0, 40))
def test_fuzz_mutated_gzip(tmp_path: Path, pos: int, value: int, cut: int) -> None:
    raw = bytearray(VALID)
    raw[pos] = value
    _only_idx_error(write(tmp_path / "g.gz", bytes(raw[: len(raw) - cut]), gz=False))


def test_rank_eight_is_the_largest_rank_read_and_written(tmp_path):
    # MAX_RANK is 8 ("expected 1..8"): a rank-8 file reads, a rank-9 one is refused, and the
    # writer takes rank 8 too.
    dims8 = (1, 2, 1, 1, 1, 1, 1, 2)
    path = tmp_path / "r8"
    path.write_bytes(idx_bytes(0x08, dims8, bytes([1, 2, 3, 4])))
    assert read_idx(path).shape == dims8
    path9 = tmp_path / "r9"
    path9.write_bytes(idx_bytes(0x08, (1,) * 9, bytes([1])))
    with pytest.raises(IdxError, match="rank 9"):
        read_idx(path9)
    array = np.arange(4, dtype=np.uint8).reshape(dims8)
    assert vqkit_idx_bytes(array) == idx_bytes(0x08, dims8, bytes([0, 1, 2, 3]))


@pytest.mark.parametrize("magic", [b"\x00\x01", b"\x01\x00", b"\xff\xff"])
def test_either_magic_byte_nonzero_is_refused(tmp_path, magic):
    # Both leading bytes must be zero, not only the first.
    good = idx_bytes(0x08, (2,), bytes([5, 6]))
    path = tmp_path / "m"
    path.write_bytes(magic + good[2:])
    with pytest.raises(IdxError, match="magic"):
        read_idx(path)
