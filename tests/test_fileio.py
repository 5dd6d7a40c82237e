"""JSON-lines reading survives damage: bad lines, even bytes that are not UTF-8, are skipped."""

from __future__ import annotations

import json

from vqkit.fileio import read_jsonl


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
