"""A table of the run folders under one root, with each run's headline numbers."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vqkit import runfiles
from vqkit.config import active_settings, flat_settings, setting_text
from vqkit.data.catalog import split_size
from vqkit.errors import QuantizerLoadError, UnknownQuantizer, VqkitError
from vqkit.fileio import open_regular_file, parse_json
from vqkit.prior_status import incomplete_prior, unfinished_prior
from vqkit.run_lock import writer_of
from vqkit.run_reading import load_config
from vqkit.runinfo import headline, is_run_dir, load_run_info
from vqkit.wording import images_counted, one_line

COLUMNS = ("run", "dataset", "preset", "epochs", "test MSE", "codes used", "prior bits/code")
REPORT_COLUMN = "report"
LEFT_ALIGNED = 3  # the first columns hold names; the rest are numbers, right-aligned
MISSING = "-"
# Settings the first table shows already (epochs as done/planned), or that name the file format.
SHOWN_SETTINGS = {"train.dataset", "train.epochs", "preset", "version"}
MAX_SETTING_COLUMNS = 8  # the differing settings shown side by side; the rest are counted


def find_runs(root: str | Path) -> list[Path]:
    """Run folders directly inside ``root`` (folders with a config.json), sorted by name;
    ``root`` itself when it is a run folder."""
    root = Path(root)
    if root.is_file():
        raise VqkitError(f"'{root}' is a file; give the folder that holds your runs.")
    if not root.is_dir():
        raise VqkitError(
            f"There is no folder '{root}' to list runs from; train one with 'vqkit train' "
            "or give the folder that holds your runs."
        )
    if is_run_dir(root):
        return [root]
    try:
        return sorted(path for path in root.iterdir() if is_run_dir(path))
    except OSError as exc:
        raise VqkitError(f"Cannot list the folder '{root}': {exc.strerror}.") from exc


def prior_cell(record: dict[str, Any]) -> str:
    """The best test bits per code, marked: (conditional) for a prior given each image's class
    (its bits are not comparable with an unconditional prior's), " (500 grids)" for bits
    measured on part of the test split, (training) while train-prior writes the run, (stale)
    for a prior of earlier VQ-VAE weights (its number no longer describes this model's codes),
    (incomplete) for one missing its weights or settings (it cannot be sampled), (unfinished:
    2/8 epochs) for one whose training stopped before it ended (train-prior --resume continues
    it)."""
    bits = record["prior_bits_per_code"]
    number = MISSING if bits is None else f"{bits:.3f}"
    if number != MISSING:
        number += " (conditional)" if record["prior_conditional"] else ""
        grids = record["prior_test_grids"]
        number += f" ({grids:,} grids)" if record["prior_on_part_of_test_split"] else ""
    if record["prior_training"]:
        marks = ["(training)"]
    else:
        marks = ["(stale)"] if record["prior_stale"] else []
        marks += ["(incomplete)"] if record["prior_incomplete"] else []
        stopped = record["prior_unfinished"]
        marks += [f"(unfinished: {stopped[0]}/{stopped[1]} epochs)"] if stopped else []
    if number == MISSING and marks:
        return " ".join(marks)
    return " ".join([number, *marks])


# What report.html shows: one of these changed after it was written makes it outdated.
# (timings.json is left out: the demo records the report's own stage after writing it.)
SHOWN_IN_REPORT = (
    runfiles.CONFIG,
    runfiles.WEIGHTS,
    runfiles.METRICS,
    runfiles.RECONSTRUCTIONS,
    runfiles.CODE_USAGE,
    runfiles.PRIOR_CONFIG,
    runfiles.PRIOR_WEIGHTS,
    runfiles.PRIOR_METRICS,
    runfiles.SCORES,
    runfiles.ENVIRONMENT,
)


# The report's <meta> tag listing the files it showed (a JSON list of names in the run folder),
# so that runs can tell when one was removed afterwards.
SHOWN_META = "vqkit-shows"
# Bytes of report.html read for that tag: it stands in the first lines of the page's <head>.
REPORT_HEAD_BYTES = 65536


def shown_files(run_dir: Path) -> list[str]:
    """The files of ``run_dir`` a report written now shows, as names inside the folder."""
    names = [name for name in SHOWN_IN_REPORT if (run_dir / name).is_file()]
    figures = sorted((run_dir / runfiles.FIGURES_DIR).glob("*.png"))
    return names + [path.relative_to(run_dir).as_posix() for path in figures]


def report_cell(run_dir: Path) -> str:
    """'yes', 'no', or 'outdated' when a file the report shows changed after it was written,
    or is gone (run vqkit report again)."""
    report = run_dir / runfiles.REPORT
    try:
        written = report.stat().st_mtime
        with open_regular_file(report) as file:
            head = file.read(REPORT_HEAD_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return "no"
    for name in shown_files(run_dir):
        try:
            if (run_dir / name).stat().st_mtime > written:
                return "outdated"
        except OSError:  # gone since it was listed: nothing to show
            continue
    if any(not (run_dir / name).is_file() for name in _listed_as_shown(head)):
        return "outdated"
    return "yes"


def _listed_as_shown(head: str) -> list[str]:
    """The names the report's SHOWN_META tag lists ([] for reports written before it)."""
    found = re.search(rf'<meta name="{SHOWN_META}" content="([^"]*)">', head)
    try:
        names = parse_json(html.unescape(found[1])) if found else []
    except ValueError:
        return []
    return [name for name in names if isinstance(name, str)] if isinstance(names, list) else []


def run_name(run_dir: Path) -> str:
    """The folder's name, quoted with its escapes when it holds a line break or another control
    character (it would break the table)."""
    return run_dir.name if run_dir.name.isprintable() else repr(run_dir.name)


def run_record(run_dir: Path) -> dict[str, Any]:
    """What ``vqkit runs`` knows of a run folder, as plain values (JSON's): its table row's
    numbers unrounded, each mark as its own field, and the run's active settings. A run whose
    config cannot be read (or whose quantizer cannot be loaded) has an ``error`` instead."""
    record: dict[str, Any] = {"run": run_dir.name, "path": str(run_dir)}
    record["report"] = report_cell(run_dir)
    try:
        info = load_run_info(run_dir)
        top = headline(info)
    except VqkitError as exc:
        if isinstance(exc, QuantizerLoadError):
            record["error"] = f"quantizer '{exc.name}' failed to load"
        elif isinstance(exc, UnknownQuantizer):  # a quantizer of one's own, not imported here
            record["error"] = f"needs --plugin for '{exc.name}'"
        else:
            record["error"] = f"unreadable {runfiles.CONFIG}"
        return record
    writer = writer_of(run_dir) or ""
    incomplete = incomplete_prior(run_dir) is not None
    settings = info.config.train
    final = info.final or {}
    tested, whole = final.get("test_images"), final.get("test_split_images")
    last = info.prior_metrics[-1] if info.prior_metrics else {}
    grids = last.get("test_grids")
    stopped = unfinished_prior(run_dir)
    record |= {
        "dataset": top.dataset,
        "preset": top.preset,
        "epochs_done": top.epochs_done,
        "epochs_planned": top.epochs_planned,
        "training": writer.startswith("train,"),  # a prior's training marks its own field
        "test_mse": top.test_mse,
        "test_images": tested if type(tested) is int else None,
        # Not comparable with a whole test split's number.
        "test_mse_on_part_of_test_split": top.test_mse is not None
        and _part_of_the_test_split(settings.dataset, tested, whole, settings.test_limit),
        "weights_unreadable": runfiles.WEIGHTS in info.notes,  # the numbers outlived them
        "codes_used": top.codes_used,
        "num_codes": top.num_codes,
        "prior_bits_per_code": top.prior_bits_per_code,
        "prior_conditional": top.prior_conditional,
        "prior_test_grids": grids if type(grids) is int else None,
        "prior_on_part_of_test_split": _part_of_the_test_split(  # --test-limit
            settings.dataset, grids, last.get("test_split_grids"), None
        ),
        # The demo holds its folder under its own name from the end of its VQ-VAE's training
        # on: a prior with files but no weights then is its prior being trained.
        "prior_training": writer.startswith("train-prior")
        or (writer.startswith("demo,") and incomplete),
        "prior_stale": top.prior_stale,
        "prior_incomplete": incomplete,
        "prior_unfinished": list(stopped) if stopped else None,  # [epochs done, planned]
        "fid": top.fid,
        "scores_stale": top.scores_stale,
        "settings": flat_settings(active_settings(info.config)),
    }
    return record


def run_row(run_dir: Path) -> list[str]:
    """One table row of text cells for a run folder (a damaged config gets a short mark)."""
    return row_cells(run_record(run_dir))


def row_cells(record: dict[str, Any]) -> list[str]:
    """The table row of a :func:`run_record`."""
    name = run_name(Path(record["path"]))
    if "error" in record:
        return [name, f"({record['error']})", *[MISSING] * (len(COLUMNS) - 2), record["report"]]
    epochs = str(record["epochs_done"])
    if record["epochs_done"] != record["epochs_planned"]:
        epochs += f"/{record['epochs_planned']}"
    epochs += " (training)" if record["training"] else ""
    used = record["codes_used"]
    codes = MISSING if used is None else f"{used}/{record['num_codes']}"
    mse = MISSING if record["test_mse"] is None else f"{record['test_mse']:.4f}"
    if record["test_mse_on_part_of_test_split"]:
        mse += f" ({images_counted(record['test_images'])})"
    if record["test_mse"] is not None and record["weights_unreadable"]:
        mse += " (weights unreadable)"
    cells = [name, record["dataset"], record["preset"], epochs, mse, codes, prior_cell(record)]
    return [*cells, record["report"]]


def _part_of_the_test_split(dataset: str, measured: Any, whole: Any, limit: int | None) -> bool:
    """Whether test numbers over ``measured`` images (or grids) cover only part of the split:
    fewer than the split holds (``whole`` as the record gives it, or a named dataset's); for a
    record of one's own data from before records gave the split's size, as many as a
    --test-limit ``limit`` allowed (None: unknown, so not marked)."""
    if type(measured) is not int:
        return False
    if type(whole) is not int:
        whole = split_size(dataset, "test")
    if whole is not None:
        return measured < whole
    return limit is not None and measured >= limit


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int) -> str:
    """Columns padded to their widest cell; the first ``left`` columns left-aligned. Cells
    with control characters (a preset name from a received run's config.json) show them
    escaped rather than sending them to the terminal."""
    headers = [one_line(cell) for cell in headers]
    rows = [[one_line(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def _settings_of(run_dir: Path) -> dict[str, str] | None:
    """A run's active settings as {dotted key without 'train.'/'model.': text}, or None for a
    config that cannot be read (its row says so)."""
    try:
        config = load_config(run_dir)
    except VqkitError:
        return None
    flat = flat_settings(active_settings(config))
    return {
        key.removeprefix("train.").removeprefix("model."): setting_text(value)
        for key, value in flat.items()
        if key not in SHOWN_SETTINGS
    }


def differing_settings(runs: Sequence[Path]) -> str:
    """A second table: the settings in which the listed runs differ (a seed sweep's seeds, a
    learning-rate search's rates), one row per readable run; "" when they share them all. A
    setting a run lacks or leaves idle shows as '-'."""
    settings = {path: found for path in runs if (found := _settings_of(path)) is not None}
    if len(settings) < 2:
        return ""
    keys = sorted({key for found in settings.values() for key in found})
    differ = [k for k in keys if len({found.get(k) for found in settings.values()}) > 1]
    # Settings every run uses first (a seed, a rate): those some runs leave idle differ only
    # because the runs differ elsewhere (the codebook settings an FSQ run has no use for).
    differ.sort(key=lambda k: sum(k not in found for found in settings.values()))
    if not differ:
        return ""
    shown = differ[:MAX_SETTING_COLUMNS]
    rows = [
        [run_name(path), *(found.get(key, MISSING) for key in shown)]
        for path, found in settings.items()
    ]
    more = len(differ) - len(shown)
    tail = f"\n(and {more} more; each run's {runfiles.CONFIG} holds them all)" if more else ""
    title = "settings that differ between these runs:\n"
    return title + format_table(["run", *shown], rows, left=len(shown) + 1) + tail


def runs_table(root: str | Path) -> str:
    """The text ``vqkit runs`` prints for ``root``: the runs' numbers, then the settings in
    which they differ."""
    runs = find_runs(root)
    if not runs:
        return f"No run folders in '{root}' (a run folder holds a {runfiles.CONFIG})."
    rows = [run_row(path) for path in runs]
    table = format_table([*COLUMNS, REPORT_COLUMN], rows, left=LEFT_ALIGNED)
    differences = differing_settings(runs)
    return f"{table}\n\n{differences}" if differences else table


def runs_records(root: str | Path) -> list[dict[str, Any]]:
    """What ``vqkit runs --json`` prints for ``root``: a :func:`run_record` per run folder."""
    return [run_record(path) for path in find_runs(root)]
