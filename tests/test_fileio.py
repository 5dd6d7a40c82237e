"""Crash-safe writes (sync before rename, plain permissions, clear errors) and JSON-lines
reading that survives damage: bad lines, even bytes that are not UTF-8, are skipped."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from vqkit import fileio
from vqkit.errors import VqkitError
from vqkit.fileio import read_json, read_jsonl


def test_read_jsonl_skips_damaged_and_non_utf8_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    good = [{"epoch": 1, "test_mse": 0.01}, {"epoch": 2, "test_mse": 0.008}]
    path.write_bytes(
        json.dumps(good[0]).encode()
        + b'\n\xab\xff\xfe garbage {\n[1, 2]\n{"epoch": 3,\n'
        + json.dumps(good[1]).encode()
        + b"\n"
    )
    assert read_jsonl(path) == good
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_an_atomic_write_is_flushed_and_synced_before_it_replaces_the_file(tmp_path, monkeypatch):
    # The crash safety rests on this order: data on disk first, then the rename. A rename
    # before the fsync could leave an empty or partial file after a power cut.
    target = tmp_path / "state.json"
    target.write_text("old")
    data = b"x" * 100  # well under the write buffer: only an explicit flush puts it on disk
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_size, target.read_bytes()))
        real_fsync(fd)

    def replace(source, destination):
        events.append(("replace", Path(destination), target.read_bytes()))
        real_replace(source, destination)

    monkeypatch.setattr(fileio.os, "fsync", fsync)
    monkeypatch.setattr(fileio.os, "replace", replace)
    fileio.write_bytes_atomic(target, data)
    # All bytes reached the temp file before the sync; the old file stood until the rename.
    assert events == [("fsync", len(data), b"old"), ("replace", target, b"old")]
    assert target.read_bytes() == data


def test_an_atomic_write_gets_the_permissions_a_plain_open_would(tmp_path):
    # mkstemp makes 0600 files; a figure or metrics file must stay readable by the group as
    # one written with open() is.
    previous = os.umask(0o022)
    try:
        (tmp_path / "plain").write_bytes(b"")
        fileio.write_bytes_atomic(tmp_path / "atomic", b"")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "atomic").stat().st_mode) == 0o644


def test_a_file_where_a_folder_should_be_is_named_in_one_sentence(tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(VqkitError, match="Cannot use '.*runs' as a folder: a file of that name"):
        fileio.ensure_dir(tmp_path / "runs")
    (tmp_path / "gone").symlink_to(tmp_path / "moved-away")
    with pytest.raises(VqkitError, match="is a symbolic link to '.*moved-away', which does not"):
        fileio.ensure_dir(tmp_path / "gone")


def test_json_nested_too_deeply_is_a_decode_error_like_any_damage():
    with pytest.raises(json.JSONDecodeError, match="nested too deeply"):
        fileio.parse_json("[" * 100_000)
    assert fileio.parse_json(b'{"a": [1]}') == {"a": [1]}


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    # An exception while writing (a full disk, Ctrl-C) must leave the folder as it was: the
    # old file intact and no .NAME.XXXXXXXX.tmp beside it.
    target = tmp_path / "metrics.jsonl"
    target.write_bytes(b"old\n")
    with pytest.raises(KeyboardInterrupt):
        with fileio.atomic_open(target, "wb") as handle:
            handle.write(b"half of the new")
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
    assert target.read_bytes() == b"old\n"


def _strict(text: str):
    """json.loads that refuses the non-standard Infinity and NaN tokens, as jq does."""

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_json_files_hold_no_infinity_or_nan(tmp_path):
    # A perfect reconstruction's PSNR is infinite; Python's encoder wrote it as Infinity.
    record = {"test_psnr": float("inf"), "rows": [{"fid": float("nan")}, (1.5, -float("inf"))]}
    expected = {"test_psnr": None, "rows": [{"fid": None}, [1.5, None]]}
    fileio.write_json_atomic(tmp_path / "a.json", record)
    assert _strict((tmp_path / "a.json").read_text()) == expected
    fileio.append_jsonl(tmp_path / "m.jsonl", {"epoch": 1, "test_psnr": 12.5})
    fileio.append_jsonl(tmp_path / "m.jsonl", record)
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    assert [_strict(line) for line in lines] == [{"epoch": 1, "test_psnr": 12.5}, expected]


def test_appending_to_a_linked_records_file_is_refused_and_copies_nothing(tmp_path):
    # The append reads the old lines and writes them back with the new one: through a link,
    # the linked file's content landed in the run folder.
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"private\n")
    records = tmp_path / "run" / "metrics.jsonl"
    records.parent.mkdir()
    records.symlink_to(secret)
    with pytest.raises(VqkitError, match="is a symbolic link where the run keeps its own"):
        fileio.append_jsonl(records, {"epoch": 1})
    assert records.is_symlink() and secret.read_bytes() == b"private\n"


def test_a_run_folder_reached_through_a_link_keeps_its_records_appendable(tmp_path):
    # Only a records file that is itself a link is refused: a run folder reached through one
    # (runs/latest pointing at the newest run) is the run's own, and its records grow in place.
    from vqkit.checkpoint import require_files_where_files_go

    real = tmp_path / "runs" / "eff"
    real.mkdir(parents=True)
    (real / "metrics.jsonl").write_bytes(b'{"epoch": 1}\n')
    latest = tmp_path / "runs" / "latest"
    latest.symlink_to(real, target_is_directory=True)
    require_files_where_files_go(latest)
    fileio.append_jsonl(latest / "metrics.jsonl", {"epoch": 2})
    assert not (real / "metrics.jsonl").is_symlink()
    assert (real / "metrics.jsonl").read_bytes() == b'{"epoch": 1}\n{"epoch": 2}\n'


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_json_file_that_is_a_pipe_or_device_is_refused_not_read(tmp_path, kind):
    # `train --config FIFO` waited forever for a writer; a link to /dev/zero read until
    # memory ran out.
    path = tmp_path / "config.json"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    with pytest.raises(VqkitError, match="config.json' is a pipe or device, not a file."):
        read_json(path, "settings file")
