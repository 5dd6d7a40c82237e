"""No command's output replaces one of its inputs, another output, or a run folder's own file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from cli_helpers import fails_cleanly
from PIL import Image

from vqkit import runfiles
from vqkit.cli import main


def folder_bytes(*folders: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for f in folders for p in f.rglob("*") if p.is_file()}


def test_an_output_naming_an_input_or_another_output_is_refused(run_copy, tmp_path, capsys):
    codes = tmp_path / "codes.npy"
    assert main(["encode", str(run_copy), "test:0-3", "--out", str(codes), "--device", "cpu"]) == 0
    mine = tmp_path / "mine.png"
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(mine)
    other = tmp_path / "other"
    other.mkdir()
    (other / runfiles.CONFIG).write_text((run_copy / runfiles.CONFIG).read_text())
    (other / runfiles.RECONSTRUCTIONS).write_bytes(b"the other run's figure")
    capsys.readouterr()
    before = folder_bytes(run_copy, tmp_path)
    cases = [
        (["decode", run_copy, codes, "--out", codes], "--out path", "also an input"),
        (["interpolate", run_copy, "--from", mine, "--to", "1", "--out", mine], "also an input"),
        (
            [
                "sample",
                run_copy,
                "--strategy",
                "random",
                "--out",
                tmp_path / "x.npy",
                "--codes-out",
                tmp_path / "x.npy",
            ],
            "--out and --codes-out name the same file",
        ),  # fmt: skip
        (
            [
                "sample",
                run_copy,
                "--strategy",
                "random",
                "--out",
                tmp_path / "s.png",
                "--codes-out",
                run_copy / runfiles.CODES_TRAIN,
            ],
            "keeps for itself",
        ),  # fmt: skip
        (["reconstruct", run_copy, "--out", run_copy / runfiles.RECONSTRUCTIONS], "keeps for"),
    ]
    # Another run folder's files too (they were written over): its config.json marks it.
    out = other / runfiles.RECONSTRUCTIONS
    cases.append((["sample", run_copy, "--strategy", "random", "--out", out], f"'{other}' keeps"))
    for argv, *fragments in cases:
        fails_cleanly(capsys, [*argv, "--device", "cpu"], *fragments)
    assert folder_bytes(run_copy, tmp_path) == before


def test_reconstruct_refuses_to_run_past_the_end_of_the_test_set(run_copy, tmp_path, capsys):
    out = tmp_path / "r.png"
    argv = ["reconstruct", run_copy, "--start", 9998, "--n", 8, "--out", out, "--device", "cpu"]
    fails_cleanly(
        capsys, argv, "runs past the end of the test set (10000 images)", "--n 2 or fewer"
    )
    fails_cleanly(capsys, [*argv[:3], 10000, *argv[4:]], "outside the test set (0 to 9999)")
    assert not out.exists()
    # Without --n it shows the images there are after --start (a small own test set too).
    assert main([str(a) for a in [*argv[:4], *argv[6:]]]) == 0
    asked = tmp_path / "two.png"
    assert main([str(a) for a in [*argv[:5], 2, "--out", asked, "--device", "cpu"]]) == 0
    with Image.open(out) as shown, Image.open(asked) as two:
        assert np.array_equal(np.asarray(shown), np.asarray(two))
