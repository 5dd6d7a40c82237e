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
from vqkit.runinfo import Headline, headline, is_run_dir, load_run_info
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


def prior_cell(top: Headline, run_dir: Path, training: bool, measured_on: str = "") -> str:
    """The best test bits per code, marked: (conditional) for a prior given each image's class
    (its bits are not comparable with an unconditional prior's), (training) while train-prior
    writes the run, (stale) for a prior of earlier VQ-VAE weights (its number no longer
    describes this model's codes), (incomplete) for one missing its weights or settings (it
    cannot be sampled), (unfinished: 2/8 epochs) for one whose training stopped before it
    ended (train-prior --resume continues it). ``measured_on`` follows the number and its
    (conditional): " (500 grids)" for bits measured on part of the test split."""
    number = MISSING if top.prior_bits_per_code is None else f"{top.prior_bits_per_code:.3f}"
    if number != MISSING and top.prior_conditional:
        number += " (conditional)"
    number += measured_on if number != MISSING else ""
    if training:
        marks = ["(training)"]
    else:
        marks = ["(stale)"] if top.prior_stale else []
        marks += ["(incomplete)"] if incomplete_prior(run_dir) is not None else []
        stopped = unfinished_prior(run_dir)
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


def run_row(run_dir: Path) -> list[str]:
    """One table row of text cells for a run folder (a damaged config gets a short mark)."""
    report = report_cell(run_dir)
    name = run_name(run_dir)
    try:
        info = load_run_info(run_dir)
        top = headline(info)
    except VqkitError as exc:
        blanks = [MISSING] * (len(COLUMNS) - 2)
        if isinstance(exc, QuantizerLoadError):
            return [name, f"(quantizer '{exc.name}' failed to load)", *blanks, report]
        if isinstance(exc, UnknownQuantizer):  # a quantizer of one's own, not imported here
            return [name, f"(needs --plugin for '{exc.name}')", *blanks, report]
        return [name, "(unreadable config.json)", *blanks, report]
    epochs = str(top.epochs_done)
    if top.epochs_done != top.epochs_planned:
        epochs += f"/{top.epochs_planned}"
    writer = writer_of(run_dir) or ""
    if writer.startswith("train,"):  # being trained now; a prior's training marks its column
        epochs += " (training)"
    # The demo holds its folder under its own name from the end of its VQ-VAE's training on:
    # a prior with files but no weights then is its prior being trained.
    prior_training = writer.startswith("train-prior") or (
        writer.startswith("demo,") and incomplete_prior(run_dir) is not None
    )
    codes = MISSING if top.codes_used is None else f"{top.codes_used}/{top.num_codes}"
    mse = MISSING if top.test_mse is None else f"{top.test_mse:.4f}"
    settings = info.config.train
    final = info.final or {}
    tested, whole = final.get("test_images"), final.get("test_split_images")
    if mse != MISSING and _part_of_the_test_split(
        settings.dataset, tested, whole, settings.test_limit
    ):
        mse += f" ({images_counted(tested)})"  # not comparable with a whole test split's number
    if top.test_mse is not None and runfiles.WEIGHTS in info.notes:  # the numbers outlived them
        mse += " (weights unreadable)"
    last = info.prior_metrics[-1] if info.prior_metrics else {}
    grids, whole = last.get("test_grids"), last.get("test_split_grids")
    part = _part_of_the_test_split(settings.dataset, grids, whole, None)  # --test-limit
    prior = prior_cell(top, run_dir, prior_training, f" ({grids:,} grids)" if part else "")
    return [name, top.dataset, top.preset, epochs, mse, codes, prior, report]


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
