"""Inputs at the edges: numbers beyond 64 bits, odd folder names, oversized PNG headers, and
damaged files in a run that a resume, the report or `vqkit runs` meets."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import fails_cleanly, refused_by_parser

from vqkit import runfiles
from vqkit.checkpoint import load_model
from vqkit.cli import attach_negative_values, build_parser, main
from vqkit.codebook_view import write_codebook_figures
from vqkit.errors import VqkitError
from vqkit.fileio import read_jsonl
from vqkit.images import tile
from vqkit.report import render_report
from vqkit.runinfo import load_run_info
from vqkit.runs import run_row

TINY = [
    "--preset", "efficient", "--train-limit", "256", "--test-limit", "64", "--batch-size", "32",
    "--hidden-dim", "16", "--embedding-dim", "8", "--num-embeddings", "16", "--quiet",
    "--device", "cpu",
]  # fmt: skip
BEYOND_64_BITS = str(2**64)


@pytest.mark.parametrize(
    "flags",
    [
        ["--kmeans-iters", BEYOND_64_BITS],
        ["--hidden-dim", BEYOND_64_BITS],
        ["--num-embeddings", BEYOND_64_BITS],
        ["--dead-code-restart", BEYOND_64_BITS],
        ["--quantizer", "fsq", "--fsq-levels", f"8,{BEYOND_64_BITS}"],
    ],
    ids=lambda flags: flags[-2],
)
def test_a_whole_number_beyond_64_bits_is_refused_before_any_folder(flags, tmp_path, capsys):
    fails_cleanly(
        capsys, ["train", *TINY, *flags, "--out", tmp_path / "run"], "must fit a 64-bit integer"
    )
    assert not (tmp_path / "run").exists()


def test_a_count_beyond_64_bits_is_refused_by_the_parser(tmp_path, capsys):
    argv = ["train", *TINY, "--batch-size", BEYOND_64_BITS, "--out", tmp_path / "run"]
    refused_by_parser(capsys, argv, "--batch-size: must fit a 64-bit integer")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--lr", "-1e-3"], "learning rate must be a finite number > 0"),
        (["--lr", "-inf"], "learning rate must be a finite number > 0"),
        (["--quantizer", "fsq", "--fsq-levels", "-3,5"], "FSQ levels must be a list"),
        (["--beta", "-.5"], "beta must be a finite number >= 0"),
    ],
    ids=["exponent", "inf", "list", "leading-point"],
)
def test_a_negative_value_argparse_mistakes_for_a_flag_reaches_its_own_check(
    flags, fragment, tmp_path, capsys
):
    # argparse alone says "--lr: expected one argument" for these: the value was given.
    fails_cleanly(capsys, ["train", *TINY, *flags, "--out", tmp_path / "run"], fragment)
    assert not (tmp_path / "run").exists()


def test_values_after_a_double_dash_are_left_as_written():
    argv = ["encode", "RUN", "--", "--out", "-1.png"]
    assert attach_negative_values(build_parser(), argv) == argv
    joined = attach_negative_values(build_parser(), ["train", "--lr", "-1e-3", "--quiet"])
    assert joined == ["train", "--lr=-1e-3", "--quiet"]


def test_a_count_beyond_64_bits_or_beyond_any_memory_is_one_sentence(run_copy, tmp_path, capsys):
    for argv in (
        ["train-prior", run_copy, "--channels", BEYOND_64_BITS],
        ["sample", run_copy, "--n", BEYOND_64_BITS],
    ):
        with pytest.raises(SystemExit) as stop:  # argparse's own one-line error
            main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and "must fit a 64-bit integer" in err and "\n" == err[-1]
    # Within 64 bits, but more bytes than any machine can address: torch's overflow.
    out = tmp_path / "s.png"
    sample = ["sample", run_copy, "--strategy", "random", "--out", out]
    fails_cleanly(capsys, [*sample, "--n", 2**62], "Out of memory", "a smaller --n")
    assert not out.exists()


def test_more_grid_columns_than_images_make_one_row_as_wide_as_the_images():
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    assert tile(images, columns=2**62).shape == (28 + 4, 3 * 30 + 2)
    assert tile(images, columns=3).shape == tile(images, columns=1000).shape


def test_a_png_header_claiming_billions_of_pixels_is_one_sentence(run_copy, tmp_path, capsys):
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)  # 8-bit grayscale
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    out = tmp_path / "codes.npy"
    fails_cleanly(capsys, ["encode", run_copy, bomb, "--out", out], "far larger than 28×28")
    assert not out.exists()


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("a" * 300, "File name too long"), ("", "folder name is empty")],
    ids=["too-long", "empty"],
)
def test_an_unusable_folder_name_is_refused_before_training(name, fragment, tmp_path, capsys,
                                                              monkeypatch):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    fails_cleanly(capsys, ["train", *TINY, "--out", name], fragment)
    assert list(tmp_path.iterdir()) == []


def test_a_run_inside_another_run_is_refused(run_copy, capsys):
    before = sorted(p.name for p in run_copy.iterdir())
    fails_cleanly(
        capsys, ["train", *TINY, "--out", run_copy / "inner"], "lies inside the run", "outside it"
    )
    assert sorted(p.name for p in run_copy.iterdir()) == before


def test_resume_keeps_metrics_lines_it_cannot_read(run_copy, capsys):
    # The small run is finished (1 epoch). A line of a later epoch, written before a kill the
    # state does not cover, goes; the unreadable lines are the user's and stay, byte for byte.
    metrics = run_copy / runfiles.METRICS
    first = metrics.read_bytes()
    later = first.replace(b'"epoch": 1', b'"epoch": 2')
    metrics.write_bytes(first + b"garbage\n" + later + b'{"epoch": "x"}\n[1]\n')
    assert main(["train", "--resume", str(run_copy), "--quiet"]) == 0, capsys.readouterr().err
    assert metrics.read_bytes() == first + b'garbage\n{"epoch": "x"}\n[1]\n'


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A finished one-epoch TINY run (8 steps): what a resume to a second epoch starts from."""
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(run_dir)]) == 0
    return run_dir


@pytest.mark.parametrize("cut", ["line break", "half a line"])
def test_resume_after_a_last_metrics_line_cut_short_keeps_the_new_epochs(
    tiny_run, tmp_path, capsys, cut
):
    # The new epoch's record was glued onto the last line and lost with it; `runs` then showed
    # the run unfinished, with an earlier epoch's numbers. (A TINY run: the second epoch the
    # resume trains is 8 steps, not the small run's 63.)
    run_copy = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    metrics = run_copy / runfiles.METRICS
    first = metrics.read_bytes()
    damaged = first[:-1] if cut == "line break" else first[: len(first) // 2]
    metrics.write_bytes(damaged)
    argv = ["train", "--resume", str(run_copy), "--epochs", "2", "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    lines = metrics.read_bytes().split(b"\n")
    assert lines[0] == damaged and lines[-1] == b""  # the user's bytes stay as they were
    assert [record["epoch"] for record in read_jsonl(metrics)][-1] == 2
    assert run_row(run_copy)[3] == "2"


def test_a_records_file_that_is_a_folder_is_one_sentence(run_copy, capsys):
    (run_copy / runfiles.ENVIRONMENT).unlink()
    (run_copy / runfiles.ENVIRONMENT).mkdir()
    fails_cleanly(
        capsys,
        ["train", "--resume", str(run_copy), "--epochs", "2", "--quiet"],
        f"'{run_copy / runfiles.ENVIRONMENT}' is a folder where the run keeps a file",
    )


def test_resuming_a_finished_run_rewrites_weights_that_were_damaged(small_run, run_copy, capsys):
    weights = run_copy / runfiles.WEIGHTS
    weights.write_bytes(b"\x00" * 5000)
    assert main(["train", "--resume", str(run_copy), "--quiet"]) == 0, capsys.readouterr().err
    assert weights.read_bytes() == (small_run.run_dir / runfiles.WEIGHTS).read_bytes()


def test_damaged_weights_are_named_by_the_report_and_the_runs_table(run_copy, tmp_path):
    (run_copy / runfiles.WEIGHTS).write_bytes(b"\x00" * 5000)
    info = load_run_info(run_copy)
    assert "damaged" in info.notes[runfiles.WEIGHTS]
    assert "model.safetensors" in render_report(info)
    assert run_row(run_copy)[4].endswith("(weights unreadable)")
    # A run with no weights yet (a start stopped before its first save) says so too.
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run_copy / runfiles.CONFIG, bare)
    assert "missing" in load_run_info(bare).notes[runfiles.WEIGHTS]


def test_damaged_session_lines_are_left_out_with_a_note(run_copy):
    with (run_copy / runfiles.ENVIRONMENT).open("a") as log:
        log.write('{"stage": {}, "processes": "x"}\nrandom bytes\n')
    info = load_run_info(run_copy)
    assert len(info.environment) == 1
    assert "damaged lines" in info.notes[runfiles.ENVIRONMENT]


def test_a_path_under_a_regular_file_does_not_exist(run_copy, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    fails_cleanly(capsys, ["train", "--config", afile / "x.json"], "does not exist")
    out = tmp_path / "d.png"
    fails_cleanly(capsys, ["decode", run_copy, afile / "x.npy", "--out", out], "does not exist")
    fails_cleanly(capsys, ["runs", afile], "is a file")


def test_a_config_without_a_version_is_not_called_incompatible(tmp_path, capsys):
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    fails_cleanly(capsys, ["train", "--config", empty], "no 'version' field")
    # Another of a run's files, with a version field of its own, is not a config either.
    state = tmp_path / "train_state.json"
    state.write_text('{"version": 2, "epochs_done": 1, "extra": {}}')
    fails_cleanly(capsys, ["train", "--config", state], "neither a 'model' nor a 'train' section")


def test_an_empty_figures_folder_is_refused(run_copy, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fails_cleanly(capsys, ["codebook", run_copy, "--out", ""], "--out needs a folder")
    assert list(tmp_path.iterdir()) == [run_copy]


def test_a_code_map_of_more_images_than_it_can_draw_is_refused(run_copy, tmp_path, capsys):
    """Each image adds 49 drawn labels: 20,000 of them exhausted 24 GiB before this check."""
    out = tmp_path / "figs"
    with pytest.raises(SystemExit) as stop:  # argparse's own one-line error
        main(["codebook", str(run_copy), "--out", str(out), "--images", "17"])
    assert stop.value.code == 2 and "must be at most 16, not 17" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(VqkitError, match="shows 1 to 16 test images, not 17"):
        write_codebook_figures(
            load_model(run_copy), torch.ones(128), torch.zeros(17, 28, 28, dtype=torch.uint8), out
        )
    assert not out.exists()
    # The bound itself is allowed, on the command line and from Python.
    assert build_parser().parse_args(["codebook", "r", "--out", "f", "--images", "16"]).images == 16
    sixteen = torch.zeros(16, 28, 28, dtype=torch.uint8)
    write_codebook_figures(load_model(run_copy), torch.ones(128), sixteen, out)
    assert out.is_dir() and any(out.iterdir())


def test_a_folder_with_another_tools_config_json_may_hold_runs(tmp_path, capsys):
    (tmp_path / runfiles.CONFIG).write_text('{"name": "some other project"}')
    assert main(["train", *TINY, "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()


def test_an_output_named_only_by_its_extension_asks_for_a_name(run_copy, tmp_path, capsys):
    codes = tmp_path / "codes.npy"
    np.save(codes, np.zeros((1, 7, 7), dtype=np.int64))
    out = tmp_path / ".png"
    fails_cleanly(capsys, ["decode", run_copy, codes, "--out", out], "needs a file name before")
    fails_cleanly(capsys, ["reconstruct", run_copy, "--out", out], "needs a file name before")
    interpolate = ["interpolate", run_copy, "--from", "0", "--to", "1", "--out", out]
    fails_cleanly(capsys, interpolate, "needs a file name before")
    fails_cleanly(capsys, [*interpolate[:-1], tmp_path / "strip.jpg"], "must end in .png")
    assert not out.exists()


def test_a_config_json_that_is_a_folder_is_called_one(tmp_path, capsys):
    (tmp_path / "run" / runfiles.CONFIG).mkdir(parents=True)
    fails_cleanly(capsys, ["report", tmp_path / "run"], "is a folder, not a run's configuration")


def test_an_output_folder_behind_a_symlink_loop_is_one_sentence(tmp_path, capsys):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    for out in (tmp_path / "a", tmp_path / "a" / "run"):
        fails_cleanly(capsys, ["train", *TINY, "--out", out], "symbolic links that point at each")


def test_json_nested_too_deeply_to_parse_is_damage_not_a_crash(run_copy, tmp_path, capsys):
    # Python's parser raises RecursionError, not JSONDecodeError, on ~100,000 open brackets.
    nested = "[" * 100_000
    (run_copy / runfiles.METRICS).write_text(nested + "\n")
    assert main(["runs", str(tmp_path)]) == 0  # the listing goes on
    assert main(["report", str(run_copy)]) == 0
    capsys.readouterr()
    (run_copy / runfiles.CONFIG).write_text(nested)
    fails_cleanly(capsys, ["evaluate", run_copy], "is damaged or not JSON")
    assert main(["runs", str(tmp_path)]) == 0
    assert "run" in capsys.readouterr().out


def test_codebook_refuses_a_file_in_its_folders_place_before_counting(run_copy, tmp_path, capsys):
    taken = tmp_path / "figures"
    taken.write_text("a file")
    fails_cleanly(capsys, ["codebook", run_copy, "--out", taken], "a file of that name exists")
    assert not (run_copy / runfiles.CODE_USAGE).exists()
    # A refused command makes no folder either (a GPU that is not there).
    fresh = tmp_path / "fresh"
    fails_cleanly(capsys, ["codebook", run_copy, "--out", fresh, "--device", "cuda:99"], "GPU")
    assert not fresh.exists()
