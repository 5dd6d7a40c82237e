"""Output folders are created, never assumed, and nothing is written outside them."""

from __future__ import annotations

import os
from pathlib import Path

from vqkit import runfiles
from vqkit.cli import main

TINY = [
    "--preset", "efficient", "--train-limit", "128", "--test-limit", "32", "--batch-size", "32",
    "--hidden-dim", "8", "--embedding-dim", "4", "--num-embeddings", "8", "--quiet",
    "--device", "cpu", "--epochs", "1",
]  # fmt: skip


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()  # a folder's mtime changes when a subfolder is created in it
    }


def test_train_writes_only_inside_its_new_nested_output_folder(tmp_path, monkeypatch, capsys):
    home, work, outside = tmp_path / "home", tmp_path / "cwd", tmp_path / "outside"
    for folder in (home, work, outside):
        folder.mkdir()
    (outside / "keep.txt").write_text("untouched")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("VQKIT_DATA", str(home / "data-cache"))
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    run_dir = outside / "deeper" / "still" / "run"  # none of these folders exists yet
    assert main(["train", *TINY, "--out", str(run_dir)]) == 0
    capsys.readouterr()
    after = snapshot(tmp_path)
    new = sorted(set(after) - set(before))
    prefix = str(run_dir.relative_to(tmp_path)) + os.sep
    assert new and all(name.startswith(prefix) for name in new), new
    assert {k: v for k, v in after.items() if k in before} == before  # nothing else changed
    assert os.listdir(work) == [] and os.listdir(home) == []
    assert {runfiles.CONFIG, runfiles.WEIGHTS, runfiles.METRICS} <= set(os.listdir(run_dir))
