"""The visual report of a run: one self-contained HTML file, ``RUN_DIR/report.html``.

Each section is built from the files the run has (see ``vqkit.runfiles``) and left out when they
are missing; a damaged optional file becomes a short note instead of an error.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from vqkit import report_plots, runfiles
from vqkit.codebook_view import DPI as USAGE_DPI
from vqkit.codebook_view import MAX_TILED_CODES, plot_usage
from vqkit.config import active_settings, flat_settings, setting_text
from vqkit.data import INFO, OWN_DATASET
from vqkit.environment import changed_quantizer_code
from vqkit.fileio import parse_json, read_file_bytes, write_bytes_atomic
from vqkit.prior import has_prior, incomplete_prior
from vqkit.provenance import EARLIER_WEIGHTS, made_with
from vqkit.quantize import perplexity
from vqkit.report_html import Section, cards, esc, fmt, image, note, page, table, table_html
from vqkit.run_lock import writer_of
from vqkit.runinfo import RunInfo, headline, load_run_info, number
from vqkit.runs import SHOWN_META, shown_files
from vqkit.score import row_label
from vqkit.wording import on_test_images

# What each sample figure shows, and which scores.json row (exact name, or a name prefix for the
# per-class rows) scores it.
SAMPLE_FIGURES = {
    "samples_random": ("uniformly random codes", "random", False),
    "samples_used": ("codes the encoder uses on the training set", "used", False),
    "samples_prior": ("PixelCNN prior", "prior", False),
    "samples_prior_conditional": ("class-conditional prior, one row per class", "prior (", True),
}
INTERPOLATION_CAPTIONS = {
    "interpolation_crossfade": "cross-fade: patches switch from the first image's code to the "
    "second's in a random order",
    "interpolation_wipe": "wipe: patches switch codes in reading order, top left to bottom right",
    "interpolation_random-mask": "random mask (the tutorial's recipe): each step takes every "
    "patch from the second image with probability t, a fresh mask per step",
    "interpolation_latent": "latent: encoder outputs blended linearly, each snapped to its "
    "nearest code",
}
STAGE_BAR_PX = 160  # width of the longest stage's bar in the timing table
# Arrows say which way is better (the table's lead says so in words): short headers keep the
# table within a phone's width.
SCORE_COLUMNS = (
    ("fid", "classifier-FID ↓"),
    ("confidence", "confidence ↑"),
    ("inception_score", "inception score ↑"),
    ("label_accuracy", "label accuracy ↑"),
)
PERCENT_SCORES = {"label_accuracy"}  # shown as the CLI prints them: 94.5%, not 0.945

# Fewer codes used than this share of the codebook: the headline calls it collapsed (the
# tutorial's own quantizer uses 38% of 128 after 3 epochs; a collapse leaves a few percent).
COLLAPSED_SHARE = 0.25

# The codebook view draws its usage histogram at its own dpi, not the report plots' 150.
USAGE_DENSITY = USAGE_DPI / 96


def write_report(run_dir: str | Path) -> Path:
    """Write ``RUN_DIR/report.html`` for a run folder and return its path.

    VqkitError when the folder is missing or not a run; optional files may be absent or damaged.
    """
    info = load_run_info(run_dir)
    path = info.path(runfiles.REPORT)
    # A folder name that is not UTF-8 (a legacy file system's bytes) is written as `vqkit runs`
    # shows it, escaped, rather than ending the report in a UnicodeEncodeError.
    write_bytes_atomic(path, render_report(info).encode("utf-8", "backslashreplace"))
    return path


def render_report(info: RunInfo) -> str:
    """The report's HTML text."""
    sections = [section for build in SECTIONS if (section := build(info)) is not None]
    name = info.run_dir.resolve().name
    shows = {SHOWN_META: json.dumps(shown_files(info.run_dir))}
    return page(f"vqkit report: {name}", _header(info, name), sections, _footer(info), shows)


def _embed(
    info: RunInfo, path: Path, alt: str, caption: str = "", pixelated: bool = True, **shown: float
) -> str:
    """A figure for an image file, or "" with a note when it cannot be read as a PNG; a figure
    made from earlier weights or another prior says so in its caption."""
    reasons = {info.figures[key]: why for key, why in info.stale_figures.items()}
    if path in reasons:
        caption = f"Stale, made from {reasons[path]} (make it again): {caption}"
    if not info.holds(path):
        # A link planted in a received run folder would put a file of one's own (any PNG
        # its sender guessed the path of) into a report one may then pass on.
        info.notes[str(path.relative_to(info.run_dir))] = "links outside the run folder"
        return ""
    try:
        return image(read_file_bytes(path), alt, caption, pixelated=pixelated, **shown)
    except (OSError, ValueError):
        info.notes[str(path.relative_to(info.run_dir))] = "is not a readable PNG"
        return ""


def _header(info: RunInfo, name: str) -> str:
    top = headline(info)
    epochs = f"{top.epochs_done} of {top.epochs_planned} epochs"
    # Not the folder's path as typed: a report sent to someone would show one's own folders
    # (or a bare "." when written from inside the run); the title names the run.
    subtitle = f"{top.dataset} · preset {top.preset} · {epochs}"
    writer = writer_of(info.run_dir)
    if writer is not None:  # the numbers below are those of the last finished epoch
        subtitle += f" · still being trained when this report was written ({writer})"
    items: list[tuple[str, str, str]] = []
    where = on_test_images(info.final or {})
    if top.test_mse is not None:
        psnr = number((info.final or {}).get("test_psnr"))
        psnr_words = f"PSNR {fmt(psnr, 3)} dB " if psnr is not None else ""
        items.append(("test MSE", fmt(top.test_mse, 3), f"lower is better; {psnr_words}{where}"))
    if top.codes_used is not None:
        detail = where
        learned = info.config.model.quantizer.quantizer == "vq"  # not a fixed FSQ grid
        if learned and top.num_codes and top.codes_used < top.num_codes * COLLAPSED_SHARE:
            detail += (
                "; most codes are never chosen (a collapsed codebook): EMA updates with "
                "dead-code restarts (--preset best) put them back in use"
            )
        items.append(("codes used", f"{top.codes_used} / {top.num_codes}", detail))
    if top.prior_bits_per_code is not None:
        last = info.prior_metrics[-1]
        baselines = [
            f"{name}: {fmt(bits, 3)}"
            for name in ("unigram", "uniform")  # the unigram is the one a prior must beat
            if (bits := number(last.get(f"{name}_bits_per_code"))) is not None
        ]
        detail = ", ".join(baselines) or "best test epoch"
        if top.prior_conditional:
            detail = f"given each image's class; {detail}"
        detail += "; lower is better"
        if top.prior_stale:
            detail = "stale: learned on earlier VQ-VAE weights"
        items.append(("prior bits per code", fmt(top.prior_bits_per_code, 4), detail))
    if top.fid:
        value = " / ".join(_score_text("fid", v) for v in top.fid.values())  # as the demo
        detail = " / ".join(top.fid) + "; lower is better"
        scored = {_count(row) for row in (info.scores or {}).get("rows", [])
                  if row.get("name") in top.fid}  # fmt: skip
        if len(scored) == 1 and None not in scored:  # FIDs at small n run high: say which
            detail += f"; {scored.pop():,} images each"
        if top.scores_stale == EARLIER_WEIGHTS:
            detail = f"stale: scored on earlier weights ({detail})"
        elif top.scores_stale:  # only the prior's row no longer holds
            detail = f"{detail}; the prior's is stale, scored with {top.scores_stale}"
        items.append(("classifier-FID", value, detail))
    # The sections are built first: what they left out is known here, and said at the top
    # (the list itself is at the bottom of the page, where nothing pointed to it).
    left_out = (
        f'<p class="note">{len(info.notes)} {"file is" if len(info.notes) == 1 else "files are"}'
        ' missing, damaged or only partly shown in this report: <a href="#notes">which, and why'
        "</a>.</p>"
        if info.notes
        else ""
    )
    return (
        f"<p class='eyebrow'>vqkit run report</p><h1>{esc(name)}</h1>"
        f"<p class='subtitle'>{esc(subtitle)}</p>" + left_out + (cards(items) if items else "")
    )


def _flatten(data: dict[str, Any]) -> list[tuple[str, str]]:
    return [(key, setting_text(value)) for key, value in flat_settings(data).items()]


def _settings_tables(data: dict[str, Any]) -> list[str]:
    """One small titled table per top-level group of ``data``; top-level scalars form 'run'
    (the dataset is in 'train')."""
    groups: dict[str, list[tuple[str, str]]] = {"run": []}
    for key, value in data.items():
        if isinstance(value, dict):
            groups[key] = _flatten(value)
        else:
            groups["run"].append((key, setting_text(value)))
    return [_settings_tile(name, rows) for name, rows in groups.items() if rows]


def _settings_tile(name: str, rows: list[tuple[str, str]]) -> str:
    return f"<div>{table(['setting', 'value'], rows, numeric_from=2, caption=name)}</div>"


def _configuration(info: RunInfo) -> Section:
    tiles = _settings_tables(active_settings(info.config))
    damaged = ""
    prior_path = info.path(runfiles.PRIOR_CONFIG)
    if prior_path.exists():
        try:
            prior = parse_json(read_file_bytes(prior_path))
            if not isinstance(prior, dict):
                raise ValueError("not an object")
            if prior.get("conditional") is False:
                prior.pop("num_classes", None)  # an unconditional prior uses no labels
            tiles.append(_settings_tile("prior", _flatten(prior)))
        except (OSError, ValueError):
            damaged = note(f"{runfiles.PRIOR_CONFIG} is damaged; its settings are not shown.")
            info.notes[runfiles.PRIOR_CONFIG] = "is damaged; its settings are not shown"
    body = f'<div class="grid">{"".join(tiles)}</div>{damaged}'
    files = runfiles.CONFIG + (f" and {runfiles.PRIOR_CONFIG}" if prior_path.exists() else "")
    lead = (
        f"Settings in {files}: everything needed to rebuild the model (leaving out "
        "those that change nothing for it, such as FSQ levels of a codebook quantizer or a "
        "warm-up fraction without a learning-rate schedule)."
    )
    return Section("configuration", "Configuration", body, lead)


def _training(info: RunInfo) -> Section | None:
    records = info.metrics
    if not records:
        return None
    epochs = [int(r["epoch"]) for r in records]
    num_codes = info.config.model.quantizer.num_codes
    curves = [  # (metric, title, color, ceiling, y-axis label)
        ("train_loss", "training loss", report_plots.COLORS["train"], None, "MSE + VQ loss"),
        ("test_mse", "test MSE", report_plots.COLORS["test"], None, "mean squared error"),
        (
            "codes_used",
            f"codes used {on_test_images(records[-1])}",
            report_plots.COLORS["codes"],
            (num_codes, f"K = {num_codes}"),
            "codes",
        ),
    ]
    plots = [
        image(
            report_plots.epoch_curve_png(
                epochs, [number(r.get(key)) for r in records], title, color, ceiling, ylabel
            ),
            f"{title} per epoch",
        )
        for key, title, color, ceiling, ylabel in curves
    ]
    columns = ["train_loss", "test_mse", "test_psnr", "perplexity", "codes_used"]
    # Perplexity and codes used are the test set's here (the Codebook section's: training's).
    headers = [
        "epoch",
        "train loss",
        "test MSE",
        "test PSNR (dB)",
        "test perplexity",
        "test codes used",
    ]
    if any("train_quantizer_loss" in r for r in records):  # older runs logged the sum only
        columns[1:1] = ["train_reconstruction_mse", "train_quantizer_loss"]
        headers[2:2] = ["train reconstruction MSE", "train quantizer loss"]
    if info.config.model.quantizer.dead_code_restart > 0:  # dead-code restarts so far
        columns.append("codebook_restarts")
        headers.append("code restarts so far")
    rows = [[r["epoch"], *(r.get(c) for c in columns)] for r in records]
    body = f'<div class="grid">{"".join(plots)}</div>' + (
        "<details><summary>per-epoch numbers</summary>"
        f"{table(headers, rows, caption='per-epoch numbers', caption_shown=False)}</details>"
    )
    lead = (
        f"One point per epoch, from {runfiles.METRICS}. Training loss: the reconstruction MSE "
        "plus the quantizer's loss (codebook + β·commitment; β·commitment alone with an EMA "
        "codebook, 0 for FSQ), averaged over the epoch's steps; test MSE: pixels in "
        "[0, 1], lower is better; perplexity: the effective number of codes in use."
    )
    return Section("training", "Training", body, lead)


def _reconstructions(info: RunInfo) -> Section | None:
    path = info.path(runfiles.RECONSTRUCTIONS)
    if not path.is_file():
        return None
    body = _embed(
        info,
        path,
        "test images above their reconstructions",
        "top: test images; bottom: the same images encoded to codes and decoded",
    )
    return Section("reconstructions", "Reconstructions", body) if body else None


def _codebook(info: RunInfo) -> Section | None:
    parts: list[str] = []
    usage, counts = info.code_usage, info.code_counts
    used = None if counts is None else int((counts > 0).sum())
    if usage is not None and counts is not None:
        images = number(usage.get("images"))
        images = None if images is None else int(images)
        spread = perplexity(counts)
        if info.code_usage_stale:
            figures = info.run_dir / runfiles.FIGURES_DIR
            parts.append(
                note(
                    f"Stale: these counts are of earlier VQ-VAE weights than the run holds now; "
                    f"run vqkit codebook {info.run_dir} --out {figures} again."
                )
            )
        parts.append(
            table(
                [
                    "codebook size",
                    "codes used",
                    "dead codes (never chosen)",
                    "perplexity (effective codes in use)",
                    "training images",
                ],
                [[counts.numel(), used, counts.numel() - used, spread, images]],
                numeric_from=0,
                caption="codebook usage on the training set",
                caption_shown=False,
            )
        )
    # Alt texts say what a figure shows in a few words (screen readers read the caption too).
    usage_alt = "bar chart of each code's share of all code choices, most used first"
    if counts is not None:
        usage_alt += f": {used:,} of {counts.numel():,} codes used"
    if "codebook_usage" in info.figures:
        parts.append(
            _embed(
                info,
                info.figures["codebook_usage"],
                usage_alt,
                "code usage",
                pixelated=False,
                density=USAGE_DENSITY,
            )
        )
    elif counts is not None:
        plot = _usage_plot(counts, images)
        parts.append(image(plot, usage_alt, "code usage", density=USAGE_DENSITY))
    many = used is not None and used > MAX_TILED_CODES
    each = f"each of the {MAX_TILED_CODES:,} most used codes" if many else "each used code"
    grid = info.config.model.grid_size
    atlas = [  # (figure, alt, caption)
        (
            "codebook_atlas",
            "code atlas: one decoded tile per code, labelled with its index",
            f"{each}, most used first, decoded from a grid holding only that code"
            + (": black tiles are background codes" if info.config.train.dataset in INFO else ""),
        ),
        (
            "codebook_exemplars",
            "code exemplars: four image patches per code, labelled with its index",
            f"where the encoder chooses {each}, most used first: four test-image patches "
            "around cells holding it (the cell bright in the middle, a dimmed cell of margin "
            "around it; blank where fewer of the images searched hold it)",
        ),
        (
            "codebook_codemap",
            f"code map: test images with a {grid} by {grid} grid of code indices over each",
            "test images with the code of each cell of their grid",
        ),
    ]
    parts += [
        _embed(info, info.figures[key], alt, caption)
        for key, alt, caption in atlas
        if key in info.figures
    ]
    body = "".join(parts)
    if not body:
        return None
    lead = (
        "How the codebook is used over the whole training set (the headline's codes used count "
        "the test set): a collapsed codebook uses few of its codes. The exemplars and the code "
        "map show where codes fall on test images."
    )
    return Section("codebook", "Codebook", body, lead)


def _usage_plot(counts: torch.Tensor, images: int | None) -> bytes:
    """The codebook view's usage histogram of ``counts``, as PNG bytes."""
    with tempfile.TemporaryDirectory() as folder:
        return plot_usage(counts, Path(folder) / "usage.png", images).read_bytes()


def _score_line(info: RunInfo, row_name: str, prefix: bool) -> str:
    """One line of scores under a sample figure (per-class rows are averaged)."""
    rows = [
        row
        for row in (info.scores or {}).get("rows", [])
        if (row["name"].startswith(row_name) if prefix else row["name"] == row_name)
    ]
    parts = []
    for key, label in SCORE_COLUMNS:
        values = [v for row in rows if (v := number(row.get(key))) is not None]
        if values:
            mean = sum(values) / len(values)
            shown = _percent(mean) if key in PERCENT_SCORES else _score_text(key, mean)
            parts.append(f"{label.rstrip(' ↑↓')} {shown}")
    if not parts:
        return ""
    counts = {_count(row) for row in rows}
    # The scores come from samples `vqkit score` drew itself, not from the panel above them.
    n = f"{counts.pop()} images" if len(counts) == 1 and None not in counts else ""
    if len(rows) > 1:  # per-class FIDs compare with that class's test images, at a smaller n
        each = f", {n} each (not the ones shown)" if n else ""
        scope = (
            f"mean over {len(rows)} classes{each}, scored against the test images of their class: "
        )
    else:
        scope = f"scored on {n} (not the ones shown): " if n else ""
    return f'<p class="scores">{esc(scope + " · ".join(parts))}</p>'


def _score_text(key: str, value: float) -> str:
    """A score under a sample panel as the headline card and the demo print it: FIDs to one
    decimal (976.1, not 976), the others to 3 significant figures."""
    return f"{value:.1f}" if key == "fid" else fmt(value, 3)


def _samples(info: RunInfo) -> Section | None:
    keys = [key for key in info.figures if key.startswith("samples_")]
    tiles = []
    for key in keys:
        # A strategy without an entry is titled and scored by its own name.
        strategy = key.removeprefix("samples_")
        title, row_name, prefix = SAMPLE_FIGURES.get(key, (strategy, strategy, False))
        if key == "samples_prior" and info.prior_conditional:
            asked = made_with(info.figures[key]).get("digit")  # vqkit sample --digit D
            title += (
                f", given class {asked}"
                if isinstance(asked, int)
                else ", given the classes 0, 1, 2, ... in turn, in reading order"  # i mod C
            )
        picture = _embed(info, info.figures[key], f"samples: {title}", title)
        if picture:
            tiles.append(f"<div>{picture}{_score_line(info, row_name, prefix)}</div>")
    body = f'<div class="grid">{"".join(tiles)}</div>' if tiles else ""
    if not tiles and info.scores is not None:  # scored, but no panels to look at
        body += note(_how_to_make_samples(info))
    if _used_draws_like_random(info):
        body += note(
            "The used and random rows score alike because every code is in use: drawing "
            "uniformly from the used codes is then drawing from all of them."
        )
    if info.scores is not None:
        if info.scores_stale == EARLIER_WEIGHTS:
            # score refuses a prior of earlier weights: the prior comes first then.
            again = f"run vqkit score {info.run_dir} again"
            if info.prior_stale:
                again = (
                    f"train a new prior (vqkit train-prior {info.run_dir} --restart), then {again}"
                )
            body += note(
                f"Stale: these scores were measured on earlier VQ-VAE weights than the run holds "
                f"now (it trained on after them); {again}."
            )
        elif info.scores_stale:
            body += note(
                f"Stale: the prior rows were scored with {info.scores_stale}; the other rows "
                f"still describe the run's model. Run vqkit score {info.run_dir} again."
            )
        body += _scores_table(info.scores)
    elif runfiles.SCORES in info.notes:
        body += note(f"{runfiles.SCORES} is damaged, so no scores are shown.")
    if not body:
        return None
    lead = "Images decoded from sampled code grids, one panel per sampling strategy."
    return Section("samples", "Samples", body, lead)


def _used_draws_like_random(info: RunInfo) -> bool:
    """Whether 'used' sampled from every code, so that it is the 'random' strategy again."""
    counts = info.code_counts
    rows = {row["name"]: row for row in (info.scores or {}).get("rows", [])}
    if counts is None or info.code_usage_stale or not {"used", "random"} <= set(rows):
        return False
    return bool((counts > 0).all())


def _how_to_make_samples(info: RunInfo) -> str:
    """The commands that add sample panels to a run scored without any: the prior's when the
    run has a prior of its current weights, else the random one's and how to get a prior."""
    run, figures, names = info.run_dir, info.run_dir / runfiles.FIGURES_DIR, runfiles.FIGURE_NAMES
    # The demo trains the named datasets only (it reads no data folder).
    demo = (
        "" if (info.scores or {}).get("dataset") == OWN_DATASET else "; vqkit demo writes them all"
    )
    if has_prior(run) and not info.prior_stale and incomplete_prior(run) is None:
        return (
            f"No sample images yet: vqkit sample {run} --strategy prior --n 64 --out "
            f"{figures / names['samples_prior']} adds the prior's panel (random and used "
            f"likewise, as {names['samples_random']} and {names['samples_used']}){demo}."
        )
    any_prior = has_prior(run) or incomplete_prior(run) is not None  # --restart replaces it
    train_prior = f"vqkit train-prior {run}" + (" --restart" if any_prior else "")
    return (
        f"No sample images yet: vqkit sample {run} --strategy random --n 64 --out "
        f"{figures / names['samples_random']} adds the random panel (used likewise, as "
        f"{names['samples_used']}); the prior's panel needs a prior of the current weights "
        f"first ({train_prior}){demo}."
    )


def _scores_table(scores: dict[str, Any]) -> str:
    headers = ["images", "n"] + [label for _, label in SCORE_COLUMNS]
    rows = [
        [
            row_label(row["name"], scores.get("dataset")),
            _count(row),
            *(_score_cell(key, row.get(key)) for key, _ in SCORE_COLUMNS),
        ]
        for row in scores["rows"]
    ]
    accuracy = number(scores.get("classifier_test_accuracy"))
    detail = [
        "↓: lower is better, ↑: higher is better",
        "n: images scored in the row; FID grows as n shrinks, so compare at equal n",
        "FID is measured against the real test images (a per-class row: those of its class; "
        "0 for them) in a small classifier's "
        "feature space, not Inception's, so its scale is not that of published FIDs",
        "confidence: the classifier's mean top probability (higher: clearer images)",
        "inception score: higher when each image is clearly one class and all classes appear, "
        "at most the number of classes, so a row of one class scores low by design",
        "label accuracy: the share classified as the image's label or requested class "
        "(– where none is known)",
    ]
    if accuracy is not None:
        detail.append(f"the scoring classifier is {accuracy:.1%} accurate on the test set")
    caption = f"<p class='lead'>{esc('; '.join(detail))}.</p>"
    left_out = scores.get("classes_left_out")  # a conditional prior's class with no row of its own
    after = f"<p>{esc(left_out)}</p>" if isinstance(left_out, str) and left_out else ""
    named = table(headers, rows, caption="sample quality", caption_shown=False)
    return f'<div id="scores"><h3>Sample quality</h3>{caption}{named}{after}</div>'


def _score_cell(key: str, value: Any) -> float | str | None:
    value = number(value)
    if value is None:
        return value
    if key == "fid":  # one decimal in every row, as the card and the panels' lines show it
        return _score_text(key, value)
    # Three figures tell these apart (0.991, 8.38) and keep the table narrow.
    return _percent(value) if key in PERCENT_SCORES else f"{value:#.3g}"


def _percent(fraction: float) -> str:
    return f"{fraction:.1%}"


def _count(row: dict[str, Any]) -> int | None:
    """A row's image count (None, shown as a dash, in files that predate the count)."""
    count = number(row.get("images"))
    return None if count is None else int(count)


def _image_name(chosen: str) -> str:
    """An interpolation end as ``--from``/``--to`` gave it, a bare test index as ``test:N``
    (a caption "from 0 to 1" read like t going from 0 to 1)."""
    return f"test:{chosen}" if chosen.isdecimal() else chosen


def _interpolation(info: RunInfo) -> Section | None:
    keys = [key for key in info.figures if key.startswith("interpolation_")]
    captions = {k: INTERPOLATION_CAPTIONS.get(k, k.replace("_", " ")) for k in keys}
    for key in keys:
        ends = made_with(info.figures[key])
        if isinstance(ends.get("from"), str) and isinstance(ends.get("to"), str):
            captions[key] += f" (from {_image_name(ends['from'])} to {_image_name(ends['to'])})"
    strips = [_embed(info, info.figures[k], f"interpolation strip: {captions[k]}", captions[k])
              for k in keys]  # fmt: skip
    body = "".join(strips)
    lead = (
        "Each row walks from one image to another through their code grids: the first image "
        "itself, then decoded steps from t = 0 (its own codes) to t = 1 (the other's), then "
        "the other image itself."
    )
    return Section("interpolation", "Interpolation", body, lead) if body else None


def _prior(info: RunInfo) -> Section | None:
    records = info.prior_metrics
    left_out = incomplete_prior(info.run_dir)
    if not records:
        return Section("prior", "Prior", note(left_out), "") if left_out else None
    last = records[-1]
    baselines = {
        name: bits
        for name in ("uniform", "unigram")
        if (bits := number(last.get(f"{name}_bits_per_code"))) is not None
    }
    plot = report_plots.prior_nll_png(
        [int(r["epoch"]) for r in records],
        [r["train_bits_per_code"] for r in records],
        [r["test_bits_per_code"] for r in records],
        baselines,
    )
    best = min(records, key=lambda r: r["test_bits_per_code"])
    given = ", given each image's class" if info.prior_conditional else ""
    cells_per_grid = info.config.model.grid_size**2
    # Fixed decimals per column, so the decimal points line up (they read 118, 343, 302.1).
    rows = [
        [
            f"PixelCNN prior{given} (epoch {best['epoch']}), on the test grids",
            _decimals(best["test_bits_per_code"], 3),
            _decimals(best.get("test_bits_per_image"), 1),
        ]
    ]
    # The unigram figure is the training grids' entropy, not a measurement on the test grids.
    measured = {"uniform": "any grid", "unigram": "the training grids' entropy"}
    rows += [
        [
            f"{name} baseline, {measured[name]}",
            _decimals(bits, 3),
            _decimals(bits * cells_per_grid, 1),
        ]
        for name, bits in baselines.items()
    ]
    body = image(plot, "prior bits per code per epoch against baselines") + table(
        ["model", "bits per code", "bits per image"],
        rows,
        caption="prior and baselines on the test code grids",
        caption_shown=False,
    )
    counts = [number(last.get(f"{split}_grids")) for split in ("test", "train")]
    grids = (
        f"the {int(counts[0]):,} test code grids under the prior (trained on "
        f"{int(counts[1]):,} training grids)"
        if None not in counts
        else "test code grids under the prior"
    )
    lead = (
        f"Negative log-likelihood of {grids}; lower is better. Uniform assumes every code "
        "equally likely. Unigram is the entropy of the training grids' code frequencies: what "
        "a model that knows neither a code's position nor its neighbours spends. A model of "
        "each position's own frequencies spends no more on those grids, and usually less, so "
        "the prior's gain over unigram need not all come from reading neighbouring codes."
    )
    if info.prior_conditional:
        lead += " This prior is also told each image's class, which the baselines are not."
    lead += (
        " Training bits are averaged over each epoch while the weights still change, with "
        "dropout on; test bits are those of the epoch's end, without it."
    )
    if left_out:
        body += note(left_out)
    if info.prior_stale:
        lead += (
            " Stale: this prior learned the codes of earlier VQ-VAE weights (the model trained "
            f"on after it); train a new one with vqkit train-prior {info.run_dir} --restart."
        )
    return Section("prior", "Prior", body, lead)


def _decimals(value: Any, places: int) -> str | None:
    """A number to a fixed count of decimals (None stays None, shown as a dash)."""
    value = number(value)
    return None if value is None else f"{value:,.{places}f}"


def _timing(info: RunInfo) -> Section | None:
    parts = []
    epochs = [r for r in info.metrics if number(r.get("epoch_seconds")) is not None]
    if epochs:
        rows = [
            [r["epoch"], _decimals(r["epoch_seconds"], 1), _decimals(r.get("images_per_second"), 0)]
            for r in epochs
        ]
        headers = ["epoch", "seconds", "images/s"]
        parts.append(table(headers, rows, caption="training epochs"))
    prior_epochs = [r for r in info.prior_metrics if number(r.get("epoch_seconds")) is not None]
    if prior_epochs:
        rows = [[r["epoch"], _decimals(r["epoch_seconds"], 1)] for r in prior_epochs]
        parts.append(table(["epoch", "seconds"], rows, caption="prior epochs"))
    if info.timings:
        longest = max(info.timings.values()) or 1.0
        total = sum(info.timings.values())
        rows_html = "".join(
            f"<tr><td>{esc(stage)}</td><td class=num>{_decimals(sec, 1)}</td>"
            f'<td><span class="bar" style="width:{STAGE_BAR_PX * sec / longest:.0f}px">'
            "</span></td></tr>"
            for stage, sec in info.timings.items()
        )
        # The demo times its report stage once the report is written: this page's own
        # timings then end before it.
        label = "total" if "report" in info.timings else "total before this report"
        # The total is a row header and its number a data cell; the bars' column is named for
        # screen readers, which read an empty header as nothing.
        rows_html += (
            f'<tr><th scope="row">{label}</th><td class=num><strong>{_decimals(total, 1)}</strong>'
            "</td><td></td></tr>"
        )
        head = (
            '<th scope="col">stage</th><th scope="col" class=num>seconds</th>'
            '<th scope="col"><span class="hidden">share of the total</span></th>'
        )
        parts.append(table_html(head, rows_html, caption="pipeline stages"))
    if info.environment:
        parts.append(_sessions_table(info.environment))
        changed = changed_quantizer_code(info.environment)
        parts.append(note(changed) if changed else "")
    if not parts:
        return None
    lead = f"Wall-clock seconds, and the machine of each session ({runfiles.ENVIRONMENT})."
    return Section("timing", "Timing", "".join(parts), lead)


def _sessions_table(records: list[dict[str, Any]]) -> str:
    """One row per training session: when, what, where, and the quantizer code it ran."""
    rows = []
    for r in records:
        stage = r["stage"]
        if r.get("resumed"):
            step = number(r.get("global_step"))
            stage += " (resumed)" if step is None else f" (resumed after step {step:.0f})"
        # Every field read here is one environment.is_record checked.
        started = r["started"].replace("T", " ").removesuffix("+00:00")
        where = f"{r['device']}: {r['device_name']}"
        workers = f"{r['processes']} × {r['threads']}"
        versions = f"vqkit {r['vqkit']}, torch {r['torch']}"
        source = r.get("vqkit_source_sha256")
        if isinstance(source, str):  # which code, where the version number stays the same
            versions += f" (source {source[:12]})"
        precision = r.get("precision") if isinstance(r.get("precision"), str) else ""
        rows.append([started, stage, where, workers, precision or "–", versions, _code(r) or "–"])
    headers = [
        "started (UTC)", "stage", "device", "processes × threads", "precision", "versions",
        "quantizer",
    ]  # fmt: skip
    return table(headers, rows, numeric_from=len(headers), caption="sessions")


def _code(record: dict[str, Any]) -> str:
    source = record.get("quantizer")
    if not isinstance(source, dict):
        return ""
    if source.get("builtin"):
        return f"{source.get('name')} (built in)"
    file, digest = source.get("file"), source.get("sha256")
    if isinstance(file, str) and isinstance(digest, str):
        return f"{source.get('name')} ({Path(file).name}, sha256 {digest[:12]})"
    return f"{source.get('name')} ({source.get('class', 'own code')})"


def _footer(info: RunInfo) -> str:
    lines = []
    if info.notes:
        items = "".join(
            f"<li><code>{esc(name)}</code> {esc(why)}</li>" for name, why in info.notes.items()
        )
        lines.append(
            f'<div id="notes" class="note"><strong>Left out:</strong><ul>{items}</ul></div>'
        )
    # UTC, as the sessions table's start times.
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines.append(f"<p>Written by vqkit on {esc(stamp)}.</p>")
    return "".join(lines)


# Results first; the settings that made them after them, with the timings.
SECTIONS: tuple[Callable[[RunInfo], Section | None], ...] = (
    _training,
    _reconstructions,
    _codebook,
    _samples,
    _interpolation,
    _prior,
    _timing,
    _configuration,
)
