"""``vqkit runs`` lists run folders; ``vqkit report`` prints its file; help reads like a manual."""

from __future__ import annotations

import json
import math
import os
import pathlib
import re

import numpy as np
import pytest
from report_helpers import PRIOR_EPOCHS, SCORES, copy_run, make_full_run

from vqkit import runfiles
from vqkit.checkpoint import load_model
from vqkit.cli import COMMAND_MODULES, build_parser, main
from vqkit.data import load_split
from vqkit.data.catalog import split_size
from vqkit.images import save_png
from vqkit.provenance import stamp
from vqkit.runinfo import load_run_info
from vqkit.runs import find_runs, format_table, run_row, runs_table

PLANNED_EXTRA = 3


@pytest.fixture(scope="module")
def root(small_run, tmp_path_factory):
    """Two runs (one complete with report, one bare), a stray folder and a stray file."""
    root = tmp_path_factory.mktemp("runs")
    make_full_run(copy_run(small_run.run_dir, root / "b-full"))
    assert main(["report", str(root / "b-full")]) == 0
    bare = copy_run(small_run.run_dir, root / "a-bare")
    (bare / runfiles.REPORT).unlink(missing_ok=True)
    config = json.loads((bare / runfiles.CONFIG).read_text())
    config["train"]["epochs"] += PLANNED_EXTRA  # more planned than done: an interrupted run
    (bare / runfiles.CONFIG).write_text(json.dumps(config))
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("x")
    (root / "README.txt").write_text("x")
    return root


def test_runs_lists_each_run_with_its_numbers(root, small_run, capsys):
    assert main(["runs", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3  # header and two runs; the stray folder and file are skipped
    header, bare, full = lines
    assert header.split()[:3] == ["run", "dataset", "preset"]
    # The run measured on its first 500 test images (--test-limit) says so beside its MSE.
    assert small_run.final["test_images"] == 500
    mse = f"{small_run.final['test_mse']:.4f} (500 images)"
    codes = f"{small_run.final['codes_used']}/128"
    best_prior = f"{min(t for _, _, t in PRIOR_EPOCHS):.3f}"
    done = len((small_run.run_dir / runfiles.METRICS).read_text().splitlines())
    epochs = f"{done}/{done + PLANNED_EXTRA}"
    bare, full = (re.split(r"\s{2,}", line.strip()) for line in (bare, full))
    assert bare == ["a-bare", "mnist", "efficient", epochs, mse, codes, "-", "no"]
    assert full == [
        "b-full",
        "mnist",
        "efficient",
        str(done),
        mse,
        codes,
        best_prior,
        "yes",
    ]
    # Aligned: every line has the same length up to its last column, which is right-aligned.
    assert len({len(line) for line in lines}) == 1


def test_a_report_older_than_what_it_shows_is_called_outdated(root, tmp_path):
    run = copy_run(root / "b-full", tmp_path / "run")
    assert main(["report", str(run)]) == 0
    assert run_row(run)[-1] == "yes"
    written = (run / runfiles.REPORT).stat().st_mtime
    os.utime(run / runfiles.METRICS, (written + 5, written + 5))  # an epoch trained after it
    assert run_row(run)[-1] == "outdated"
    os.utime(run / runfiles.REPORT, (written + 10, written + 10))  # the report written again
    assert run_row(run)[-1] == "yes"
    os.utime(run / runfiles.TIMINGS, (written + 20, written + 20))  # the demo's report stage
    assert run_row(run)[-1] == "yes"
    figure = next((run / runfiles.FIGURES_DIR).glob("*.png"))
    os.utime(figure, (written + 30, written + 30))  # a figure made again after the report
    assert run_row(run)[-1] == "outdated"


@pytest.mark.parametrize("name", [runfiles.SCORES, "figure"])
def test_a_report_showing_a_file_since_removed_is_called_outdated(root, tmp_path, name):
    run = copy_run(root / "b-full", tmp_path / "run")
    assert main(["report", str(run)]) == 0
    assert run_row(run)[-1] == "yes"
    path = next((run / runfiles.FIGURES_DIR).glob("*.png")) if name == "figure" else run / name
    path.unlink()  # the page still shows it; nothing left is newer than the page
    assert run_row(run)[-1] == "outdated"
    assert main(["report", str(run)]) == 0
    assert run_row(run)[-1] == "yes"


def test_runs_json_gives_each_runs_numbers_unrounded_with_its_settings(root, small_run, capsys):
    assert main(["runs", "--json", str(root)]) == 0
    bare, full = json.loads(capsys.readouterr().out)  # the stray folder and file are skipped
    last = json.loads((small_run.run_dir / runfiles.METRICS).read_text().splitlines()[-1])
    done = last["epoch"]
    for record in (bare, full):
        assert record["test_mse"] == last["test_mse"]  # as recorded, not the table's 4 digits
        assert (record["codes_used"], record["num_codes"]) == (last["codes_used"], 128)
        assert (record["test_images"], record["test_mse_on_part_of_test_split"]) == (500, True)
        assert record["dataset"] == "mnist" and record["preset"] == "efficient"
        config = json.loads((pathlib.Path(record["path"]) / runfiles.CONFIG).read_text())
        assert record["settings"]["train.lr"] == config["train"]["lr"]
        assert record["settings"]["model.quantizer.beta"] == config["model"]["quantizer"]["beta"]
    assert (bare["run"], bare["report"], bare["prior_bits_per_code"]) == ("a-bare", "no", None)
    assert (bare["epochs_done"], bare["epochs_planned"]) == (done, done + PLANNED_EXTRA)
    assert (full["run"], full["report"], full["epochs_planned"]) == ("b-full", "yes", done)
    assert full["prior_bits_per_code"] == min(t for _, _, t in PRIOR_EPOCHS)
    assert full["fid"] == {
        row["name"]: row["fid"]
        for row in SCORES["rows"]
        if row["name"] in ("prior", "used", "random")
    }
    marks = ("training", "prior_training", "prior_stale", "prior_incomplete")
    assert not any(full[mark] for mark in marks) and full["prior_unfinished"] is None


def test_runs_json_names_what_it_cannot_read_and_lists_no_runs_as_an_empty_list(
    root, tmp_path, capsys, monkeypatch
):
    broken = copy_run(root / "a-bare", tmp_path / "broken")
    (broken / runfiles.CONFIG).write_text("{")
    assert main(["runs", "--json", str(tmp_path)]) == 0
    [record] = json.loads(capsys.readouterr().out)
    assert record == {
        "run": "broken",
        "path": str(broken),
        "report": "no",
        "error": "unreadable config.json",
    }
    monkeypatch.chdir(tmp_path)  # no runs/ folder here: nothing trained yet
    assert main(["runs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_runs_of_a_run_folder_lists_that_run(root, capsys):
    assert main(["runs", str(root / "b-full")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].startswith("b-full ")


def test_runs_marks_an_unreadable_config(root, tmp_path, capsys):
    broken = copy_run(root / "a-bare", tmp_path / "broken")
    (broken / runfiles.CONFIG).write_text("{")
    assert main(["runs", str(tmp_path)]) == 0
    assert "(unreadable config.json)" in capsys.readouterr().out


def test_runs_on_missing_or_empty_root(tmp_path, capsys, monkeypatch):
    assert main(["runs", str(tmp_path / "nope")]) == 2
    assert "There is no folder" in capsys.readouterr().err
    assert main(["runs", str(tmp_path)]) == 0
    assert "No run folders" in capsys.readouterr().out
    # A first look before any training: the default folder not being there is no mistake.
    monkeypatch.chdir(tmp_path)
    assert main(["runs"]) == 0
    assert capsys.readouterr().out.startswith("No runs yet: there is no 'runs' folder here;")
    assert main(["runs", "runs"]) == 2  # named, it must be there
    assert "There is no folder 'runs'" in capsys.readouterr().err


def test_folders_that_cannot_be_looked_into_are_left_out_or_refused(tmp_path, monkeypatch, capsys):
    # Root ignores permissions, so the refusal an unreadable folder gives is raised by hand.
    real_is_dir = pathlib.Path.is_dir

    def is_dir(path):
        if path.name == "locked":
            raise PermissionError(13, "Permission denied")
        return real_is_dir(path)

    (tmp_path / "locked").mkdir()
    monkeypatch.setattr(pathlib.Path, "is_dir", is_dir)
    assert main(["runs", str(tmp_path)]) == 0
    assert "No run folders" in capsys.readouterr().out
    monkeypatch.setattr(
        pathlib.Path, "iterdir", lambda path: (_ for _ in ()).throw(PermissionError(13, "Denied"))
    )
    assert main(["runs", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"vqkit: error: Cannot list the folder '{tmp_path}': Denied."


def test_format_table_aligns_columns():
    text = format_table(["name", "n"], [["a", "1"], ["longer", "100"]], left=1)
    assert text.splitlines() == ["name      n", "a         1", "longer  100"]


def test_report_command_prints_the_report_path(root, tmp_path, capsys):
    run = copy_run(root / "a-bare", tmp_path / "run")
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / runfiles.REPORT)
    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vqkit: error: ") and "Traceback" not in err


def test_help_lists_every_command_and_each_has_examples(capsys):
    parser = build_parser()
    top = parser.format_help()
    # Each command once (a hand-written list used to repeat argparse's in other words), in
    # the pipeline's order.
    for name in COMMAND_MODULES:
        assert len(re.findall(rf"\n +{name} ", top)) == 1, name
    positions = [top.index(f"\n    {name} ") for name in COMMAND_MODULES]
    assert positions == sorted(positions) and COMMAND_MODULES[0] == "demo"
    subparsers = next(a for a in parser._actions if a.dest == "command")
    for name, sub in subparsers.choices.items():
        text = sub.format_help()
        assert "examples:" in text and f"vqkit {name}" in text, name


def test_a_run_whose_model_differs_from_its_preset_is_marked(small_run, tmp_path, capsys):
    run = copy_run(small_run.run_dir, tmp_path / "run")
    config = json.loads((run / runfiles.CONFIG).read_text())
    config["train"]["lr"] = 0.01  # training settings: still the preset's model
    (run / runfiles.CONFIG).write_text(json.dumps(config))
    assert main(["runs", str(run)]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[2] == "efficient"
    config["model"]["quantizer"]["beta"] = 0.5  # another model than the preset's
    (run / runfiles.CONFIG).write_text(json.dumps(config))
    assert main(["runs", str(run)]) == 0
    assert "efficient (changed)" in capsys.readouterr().out.splitlines()[1]


def test_text_from_a_received_runs_config_cannot_drive_the_terminal(small_run, tmp_path, capsys):
    hostile = "eff\x1b]0;TITLE\x07\x1b[31mRED"  # sets the window title, then turns text red
    for name, preset in (("a", hostile), ("b", "efficient")):
        run = copy_run(small_run.run_dir, tmp_path / name)
        config = json.loads((run / runfiles.CONFIG).read_text())
        config["preset"] = preset
        config["train"]["data_dir"] = f"/data/{preset}"  # a setting in which the runs differ
        (run / runfiles.CONFIG).write_text(json.dumps(config))
    assert main(["runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert r"eff\x1b]0;TITLE\x07\x1b[31mRED" in out  # both tables show them, escaped
    assert out.count(r"\x1b]0;TITLE") == 2


def test_runs_are_listed_by_folder_name_whatever_order_the_file_system_gives(tmp_path):
    # Created out of order: a directory listing may return them in any order.
    for name in ("run-b", "run-c", "run-a"):
        (tmp_path / name).mkdir()
        (tmp_path / name / runfiles.CONFIG).write_text("{}")
    (tmp_path / "not-a-run").mkdir()
    assert [path.name for path in find_runs(tmp_path)] == ["run-a", "run-b", "run-c"]


def test_a_metrics_line_whose_numbers_are_not_real_numbers_is_left_out(small_run, tmp_path):
    # JSON true is not epoch 1, and NaN or infinity is no test MSE: such lines are damage.
    run_dir = copy_run(small_run.run_dir, tmp_path / "run")
    metrics = run_dir / runfiles.METRICS
    first = json.loads(metrics.read_text().splitlines()[0])
    with metrics.open("a") as out:
        out.write(json.dumps({**first, "epoch": True, "test_mse": 9.0}) + "\n")
        out.write(json.dumps({**first, "epoch": 2, "test_mse": math.nan}) + "\n")
        out.write(json.dumps({**first, "epoch": 3, "test_mse": math.inf}) + "\n")
    assert load_run_info(run_dir).metrics == [first]


def test_damaged_session_lines_are_left_out_with_a_note(small_run, tmp_path):
    run_dir = copy_run(small_run.run_dir, tmp_path / "run")
    sessions = run_dir / runfiles.ENVIRONMENT
    good = [json.loads(line) for line in sessions.read_text().splitlines()]
    with sessions.open("a") as out:
        out.write('{"command": "train", \n')  # a line cut short by a crash
    info = load_run_info(run_dir)
    assert info.environment == good
    assert runfiles.ENVIRONMENT in info.notes


def test_figures_are_not_called_stale_against_weights_that_cannot_be_read(small_run, tmp_path):
    # A damaged weights file has another digest than the one a figure recorded, but that says
    # nothing about which model the figure shows; the note on the weights says what is wrong.
    run_dir = copy_run(small_run.run_dir, tmp_path / "run")
    figure = run_dir / runfiles.FIGURES_DIR / runfiles.FIGURE_NAMES["samples_random"]
    save_png(np.zeros((4, 4), dtype=np.uint8), figure, stamp=stamp(load_model(run_dir)))
    (run_dir / runfiles.WEIGHTS).write_bytes(b"damaged")
    info = load_run_info(run_dir)
    assert "samples_random" in info.figures
    assert info.stale_figures == {}
    assert runfiles.WEIGHTS in info.notes


def test_a_folder_name_with_a_line_break_keeps_the_table_one_row_per_run(small_run, tmp_path):
    parent = tmp_path / "runs"
    copy_run(small_run.run_dir, parent / "two\nlines")
    copy_run(small_run.run_dir, parent / "plain")
    assert sorted(run_row(run)[0] for run in find_runs(parent)) == ["'two\\nlines'", "plain"]
    assert len(runs_table(parent).splitlines()) == 3  # the header and one line per run


@pytest.mark.parametrize("limit", [None, 10_000, 20_000])
def test_a_run_measured_on_its_whole_test_split_shows_the_bare_mse(small_run, tmp_path, limit):
    # No --test-limit, or one at or beyond MNIST's 10,000 test images: the whole split.
    run = copy_run(small_run.run_dir, tmp_path / "run")
    config = json.loads((run / runfiles.CONFIG).read_text())
    config["train"]["test_limit"] = limit
    (run / runfiles.CONFIG).write_text(json.dumps(config))
    metrics = run / runfiles.METRICS
    record = json.loads(metrics.read_text())
    metrics.write_text(json.dumps({**record, "test_images": len(load_split("mnist", "test"))}))
    assert run_row(run)[4] == f"{small_run.final['test_mse']:.4f}"


def test_the_split_sizes_are_those_of_the_files():
    for dataset in ("mnist", "fashion-mnist"):
        for split, count in (("train", 60_000), ("test", 10_000)):
            assert split_size(dataset, split) == count
    assert split_size("idx", "test") is None


@pytest.mark.parametrize(
    ("whole", "limit", "marked"),
    [(500, 500, False), (600, 500, True), (None, 500, True), (None, 20_000, False)],
)
def test_an_own_datasets_run_is_marked_when_its_test_split_was_cut(
    small_run, tmp_path, whole, limit, marked
):
    # The records give the test split's size (a split of exactly --test-limit images is whole);
    # for a record from before they did, one's own split's size is unknown: the limit decides.
    run = copy_run(small_run.run_dir, tmp_path / "run")
    config = json.loads((run / runfiles.CONFIG).read_text())
    config["train"] |= {"dataset": "idx", "test_limit": limit}
    (run / runfiles.CONFIG).write_text(json.dumps(config))
    assert small_run.final["test_images"] == 500
    assert small_run.final["test_split_images"] == 10_000  # MNIST's, recorded by train
    metrics = run / runfiles.METRICS
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    for record in records:
        record.pop("test_split_images")
        record |= {} if whole is None else {"test_split_images": whole}
    metrics.write_text("".join(json.dumps(record) + "\n" for record in records))
    assert run_row(run)[4].endswith(" (500 images)") == marked


@pytest.mark.parametrize(("grids", "cell"), [(500, " (500 grids)"), (10_000, "")])
def test_prior_bits_measured_on_part_of_the_test_split_say_so(root, tmp_path, grids, cell):
    # train-prior --test-limit 500: its bits per code are no more comparable with a whole
    # split's than a test MSE on 500 images is.
    run = copy_run(root / "b-full", tmp_path / "run")
    metrics = run / runfiles.PRIOR_METRICS
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    metrics.write_text("".join(json.dumps({**r, "test_grids": grids}) + "\n" for r in records))
    best = f"{min(t for _, _, t in PRIOR_EPOCHS):.3f}"
    assert run_row(run)[6] == best + cell


@pytest.mark.parametrize(("whole", "cell"), [(600, " (500 grids)"), (500, ""), (None, "")])
def test_an_own_datasets_prior_bits_on_part_of_its_test_split_say_so(root, tmp_path, whole, cell):
    # One's own test split has no size in the catalog: the prior's records carry it (a record
    # from before they did is left unmarked, as the size is unknown).
    run = copy_run(root / "b-full", tmp_path / "run")
    config = json.loads((run / runfiles.CONFIG).read_text())
    config["train"] |= {"dataset": "idx"}
    (run / runfiles.CONFIG).write_text(json.dumps(config))
    metrics = run / runfiles.PRIOR_METRICS
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    sizes = {"test_grids": 500} | ({} if whole is None else {"test_split_grids": whole})
    metrics.write_text("".join(json.dumps({**r, **sizes}) + "\n" for r in records))
    best = f"{min(t for _, _, t in PRIOR_EPOCHS):.3f}"
    assert run_row(run)[6] == best + cell


def edit_config(run, change) -> None:
    config = json.loads((run / runfiles.CONFIG).read_text())
    change(config)
    (run / runfiles.CONFIG).write_text(json.dumps(config))


def test_a_second_table_lists_the_settings_in_which_the_runs_differ(small_run, tmp_path):
    parent = tmp_path / "runs"
    for name in ("a", "b", "c"):
        copy_run(small_run.run_dir, parent / name)
    edit_config(parent / "b", lambda c: c["train"].update(seed=7, lr=0.01))
    # c: FSQ, whose codebook settings are idle (-) and whose levels the VQ runs leave idle.
    edit_config(parent / "c", lambda c: c["model"]["quantizer"].update(quantizer="fsq"))
    edit_config(parent / "c", lambda c: c["train"].update(epochs=9))  # shown in the first table
    text = runs_table(parent)
    first, second = text.split("\n\n")
    assert second.splitlines()[0] == "settings that differ between these runs:"
    lines = second.splitlines()
    # lr, seed, quantizer; then 6 codebook settings FSQ leaves idle, then fsq_levels, which
    # both VQ runs leave idle: 10, of which the last two are counted.
    assert lines[-1] == "(and 2 more; each run's config.json holds them all)"
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[1:-1]]
    header = rows[0]
    # The settings every run uses come first, alphabetically; then those some leave idle.
    assert header[1:4] == ["lr", "quantizer.quantizer", "seed"], header
    assert "epochs" not in header and "dataset" not in header
    expected = {
        "lr": ["0.003", "0.01", "0.003"],
        "seed": ["0", "7", "0"],
        "quantizer.quantizer": ["vq", "vq", "fsq"],
        "quantizer.codebook_init": ["uniform", "uniform", "-"],
        "quantizer.beta": ["0.25", "0.25", "-"],
    }
    columns = {name: [row[i] for row in rows[1:]] for i, name in enumerate(header)}
    assert [row[0] for row in rows[1:]] == ["a", "b", "c"]
    for name, values in expected.items():
        assert columns[name] == values, (name, columns)
    assert len(header) == 1 + 8  # the rest are counted, not shown


def test_runs_that_share_every_setting_get_no_second_table(small_run, tmp_path):
    parent = tmp_path / "runs"
    for name in ("a", "b"):
        copy_run(small_run.run_dir, parent / name)
    edit_config(parent / "b", lambda c: c["train"].update(epochs=9))  # epochs: the first table
    assert "settings that differ" not in runs_table(parent)
    assert len(runs_table(parent).splitlines()) == 3


# An epoch record as vqkit wrote it before records counted their test images (test_images).
OLD_EPOCH_RECORD = {
    "epoch": 1, "train_loss": 0.2131, "test_mse": 0.1871, "test_psnr": 7.279,
    "perplexity": 1.036, "codes_used": 5, "dead_codes": 123, "num_codes": 128,
    "bits_per_image": 343.0, "binarized_image_bits": 784, "eight_bit_image_bits": 6272,
    "epoch_seconds": 0.88, "images_per_second": 683.3,
}  # fmt: skip


@pytest.mark.parametrize(
    ("dataset", "limit", "tested", "cell"),
    [
        ("mnist", 200, 200, "0.1871 (200 images)"),
        ("mnist", None, 10_000, "0.1871"),
        ("mnist", 50_000, 10_000, "0.1871"),
        ("idx", 200, None, "0.1871"),  # one's own data: its split's size is not known here
    ],
)
def test_a_record_from_before_test_images_were_counted_takes_them_from_the_settings(
    tmp_path, dataset, limit, tested, cell
):
    # A run trained with --test-limit 200 by an older vqkit was listed as if its test MSE
    # were the whole split's, and its report said "on the test set".
    from vqkit.config import preset_config

    config = preset_config("efficient").to_dict()
    config["train"] |= {"dataset": dataset, "test_limit": limit}
    run = tmp_path / "run"
    run.mkdir()
    (run / runfiles.CONFIG).write_text(json.dumps(config))
    (run / runfiles.METRICS).write_text(json.dumps(OLD_EPOCH_RECORD) + "\n")
    # (No weights file here: the cell also says "weights unreadable".)
    assert run_row(run)[4].removesuffix(" (weights unreadable)") == cell
    assert load_run_info(run).final.get("test_images") == tested
