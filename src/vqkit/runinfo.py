"""Read everything a run folder holds, tolerating missing and damaged optional files.

The report and ``vqkit runs`` both start here. Only ``config.json`` is required: without it the
folder is not a run and a VqkitError says so. Every other file is optional; a damaged one is
left out with a note (file name -> reason) instead of stopping the caller.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vqkit import runfiles
from vqkit.config import PRESETS, RunConfig, preset_config
from vqkit.data.catalog import split_size
from vqkit.environment import read_records
from vqkit.errors import VqkitError
from vqkit.fileio import parse_json, read_file_bytes, read_jsonl
from vqkit.provenance import PRIOR_KEY, WEIGHTS_KEY, current_stamp, figure_staleness, staleness
from vqkit.run_reading import load_config, prior_is_stale, require_readable_tensors, run_folder
from vqkit.usage_record import MAX_COUNT, counts_match_weights, record_size

if TYPE_CHECKING:
    import torch

# Figures found by prefix as well as by their FIGURE_NAMES entry, so a new sampling strategy or
# interpolation kind shows up in the report without a change here.
FIGURE_PREFIXES = ("samples_", "interpolation_")

# Score rows that stand for one sampling strategy each (the FIDs in the headline).
HEADLINE_SCORE_ROWS = ("prior", "used", "random")


@dataclass
class RunInfo:
    """The readable contents of one run folder."""

    run_dir: Path
    config: RunConfig
    metrics: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    code_usage: dict[str, Any] | None = None
    prior_metrics: list[dict[str, Any]] = field(default_factory=list)
    prior_stale: bool = False  # the prior learned the codes of earlier VQ-VAE weights
    prior_conditional: bool | None = None  # its bits are given each image's class (None: unknown)
    scores: dict[str, Any] | None = None
    scores_stale: str | None = None  # what scores.json was made from that the run lost, if any
    code_usage_stale: bool = False  # code_usage.json counted earlier VQ-VAE weights
    timings: dict[str, float] | None = None
    environment: list[dict[str, Any]] = field(default_factory=list)  # one per training session
    figures: dict[str, Path] = field(default_factory=dict)  # figure key -> existing PNG path
    stale_figures: dict[str, str] = field(default_factory=dict)  # figure key -> staleness
    notes: dict[str, str] = field(default_factory=dict)  # file name -> why it was left out

    def path(self, name: str) -> Path:
        return self.run_dir / name

    def holds(self, path: Path) -> bool:
        """Whether ``path`` (a link followed) lies inside the run folder. A link planted in a
        received run folder points at a file of one's own that is not the run's to read."""
        return path.resolve().is_relative_to(self.run_dir.resolve())

    @property
    def code_counts(self) -> torch.Tensor | None:
        """code_usage.json's (K,) counts, when it is valid: made when read (from code_usage as
        it is then), so that only the report, which draws them, imports PyTorch (``vqkit runs``
        never reads them)."""
        from vqkit.usage import record_counts

        return None if self.code_usage is None else record_counts(self.code_usage)

    @property
    def final(self) -> dict[str, Any] | None:
        """The last epoch's metrics record, if any epoch finished."""
        return self.metrics[-1] if self.metrics else None

    def score_row(self, name: str) -> dict[str, Any] | None:
        """The scores.json row called ``name``, if present."""
        for row in (self.scores or {}).get("rows", []):
            if row["name"] == name:
                return row
        return None


@dataclass
class Headline:
    """The few numbers that summarise a run (None where the run lacks them)."""

    dataset: str
    preset: str
    epochs_done: int
    epochs_planned: int
    test_mse: float | None = None
    codes_used: int | None = None
    num_codes: int | None = None
    prior_bits_per_code: float | None = None  # best test NLL, the epoch whose weights are kept
    prior_stale: bool = False  # that prior learned the codes of earlier VQ-VAE weights
    prior_conditional: bool | None = None  # its bits per code are given each image's class
    fid: dict[str, float] = field(default_factory=dict)  # strategy -> classifier-FID
    scores_stale: str | None = None  # what those FIDs were measured on that the run lost


def number(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is not a real number (bools excluded)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` looks like a run folder (it has a config.json); False for a folder
    this user may not look into."""
    try:
        return path.is_dir() and (path / runfiles.CONFIG).is_file()
    except OSError:
        return False


def load_run_info(run_dir: str | Path) -> RunInfo:
    """Read a run folder; VqkitError when it is missing or its config.json is unusable."""
    run_dir = run_folder(run_dir)
    info = RunInfo(run_dir=run_dir, config=load_config(run_dir))
    info.metrics = _with_test_images(
        _epoch_records(info, runfiles.METRICS, required=("test_mse",)), info.config
    )
    info.prior_metrics = _epoch_records(
        info, runfiles.PRIOR_METRICS, required=("train_bits_per_code", "test_bits_per_code")
    )
    info.prior_stale = bool(info.prior_metrics) and prior_is_stale(run_dir)
    info.prior_conditional = _prior_is_conditional(run_dir) if info.prior_metrics else None
    info.code_usage = _optional_json(info, runfiles.CODE_USAGE, _valid_code_usage)
    info.scores = _optional_json(info, runfiles.SCORES, _valid_scores)
    info.timings = _optional_json(info, runfiles.TIMINGS, _valid_timings)
    info.environment = _session_records(info)
    info.figures = _find_figures(run_dir / runfiles.FIGURES_DIR)
    # Scores and figures record the weights (and prior) they came from: compare with now.
    # Against unreadable weights nothing can be called stale: the digests would only differ.
    weights_readable = _weights_readable(info)
    measured = info.scores is not None or info.figures
    current = current_stamp(run_dir) if measured and weights_readable else None
    if current is not None:
        if info.scores is not None:
            info.scores_stale = staleness(_scores_stamp(info.scores), current)
        figures = {
            key: figure_staleness(path, current)
            for key, path in info.figures.items()
            if info.holds(path)
        }
        info.stale_figures = {k: why for k, why in figures.items() if why is not None}
    if info.code_usage is not None and weights_readable:
        info.code_usage_stale = not counts_match_weights(run_dir, info.code_usage)
    return info


def headline(info: RunInfo) -> Headline:
    """The summary numbers of a run, from whatever files it has."""
    final = info.final or {}
    result = Headline(
        dataset=info.config.train.dataset,
        preset=preset_label(info.config),
        # The last epoch recorded, not the count of readable records: a line damaged by hand
        # or cut short does not make a finished run look unfinished.
        epochs_done=info.metrics[-1]["epoch"] if info.metrics else 0,
        epochs_planned=info.config.train.epochs,
        test_mse=number(final.get("test_mse")),
        num_codes=info.config.model.quantizer.num_codes,
    )
    used = number(final.get("codes_used"))
    result.codes_used = None if used is None else int(used)
    test_bits = [record["test_bits_per_code"] for record in info.prior_metrics]
    result.prior_bits_per_code = min(test_bits) if test_bits else None
    result.prior_stale = info.prior_stale
    result.prior_conditional = info.prior_conditional
    result.scores_stale = info.scores_stale
    for name in HEADLINE_SCORE_ROWS:
        row = info.score_row(name)
        fid = number(row.get("fid")) if row else None
        if fid is not None:
            result.fid[name] = fid
    return result


def preset_label(config: RunConfig) -> str:
    """The preset a run started from, marked "(changed)" when flags or --config changed its
    model from that preset's (two runs of one label then really are the same model)."""
    if config.preset not in PRESETS:
        return config.preset
    changed = preset_config(config.preset).model != config.model
    return f"{config.preset} (changed)" if changed else config.preset


def _session_records(info: RunInfo) -> list[dict[str, Any]]:
    """environment.jsonl's records; damaged lines are left out with a note."""
    path = info.path(runfiles.ENVIRONMENT)
    try:
        records = read_records(info.run_dir)
        lines = sum(1 for line in read_file_bytes(path).splitlines() if line.strip())
    except (OSError, VqkitError):
        lines, records = 0, []
    if len(records) < lines:
        info.notes[runfiles.ENVIRONMENT] = "has damaged lines; the sessions table leaves them out"
    return records


def _weights_readable(info: RunInfo) -> bool:
    """Whether the run's weights file loads; a missing or damaged one is noted as left out."""
    path = info.path(runfiles.WEIGHTS)
    if not path.exists():
        info.notes[runfiles.WEIGHTS] = "is missing (the run has no trained weights yet)"
        return False
    try:
        require_readable_tensors(path, "model weights")
    except VqkitError:
        info.notes[runfiles.WEIGHTS] = "is damaged; every command that loads the model will say so"
        return False
    return True


def _scores_stamp(scores: dict[str, Any]) -> dict[str, str | None]:
    """The digests scores.json recorded, as a figure's stamp holds them (none in older files)."""
    return {WEIGHTS_KEY: scores.get("weights_sha256"), PRIOR_KEY: scores.get("prior_sha256")}


def _epoch_records(info: RunInfo, name: str, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """Per-epoch JSON lines with a numeric epoch and ``required`` fields, in epoch order.

    A resumed run may log an epoch twice; the later record wins.
    """
    path = info.path(name)
    if not path.exists():
        return []
    by_epoch: dict[int, dict[str, Any]] = {}
    try:
        records = read_jsonl(path)
    except VqkitError:  # unreadable: the run is listed without its curve
        records = []
    for record in records:
        epoch = number(record.get("epoch"))
        if epoch is None or any(number(record.get(key)) is None for key in required):
            continue
        if not 0 <= epoch < MAX_COUNT:
            continue
        by_epoch[int(epoch)] = {**record, "epoch": int(epoch)}
    if not by_epoch:
        info.notes[name] = "has no readable epoch records"
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def _with_test_images(records: list[dict[str, Any]], config: RunConfig) -> list[dict[str, Any]]:
    """Records written before they counted their test images (test_images), given that count
    where the settings tell it: a named dataset's test split, or its first --test-limit images
    (a run of 200 test images was shown as if measured on the whole split)."""
    whole = split_size(config.train.dataset, "test")
    if whole is None:  # one's own data: its size is not known here
        return records
    limit = config.train.test_limit
    tested = whole if limit is None else min(limit, whole)
    return [
        record if "test_images" in record else {**record, "test_images": tested}
        for record in records
    ]


def _prior_is_conditional(run_dir: Path) -> bool | None:
    """prior_config.json's ``conditional``, or None when it cannot be read (the report's
    configuration section says so already)."""
    try:
        data = parse_json(read_file_bytes(run_dir / runfiles.PRIOR_CONFIG))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    value = data.get("conditional") if isinstance(data, dict) else None
    return value if isinstance(value, bool) else None


def _optional_json(info: RunInfo, name: str, validate) -> Any:
    """A JSON file passed through ``validate`` (which returns None if it is malformed)."""
    path = info.path(name)
    if not path.exists():
        return None
    try:
        data = validate(parse_json(read_file_bytes(path)))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = None
    if data is None:
        info.notes[name] = "is damaged or not in the expected format"
    return data


def _valid_code_usage(data: Any) -> dict[str, Any] | None:
    """``data`` when it holds valid counts (``RunInfo.code_counts``). Of any length: a
    quantizer of one's own may count its codes otherwise than its num_embeddings."""
    return None if record_size(data) is None else data


def _valid_scores(data: Any) -> dict[str, Any] | None:
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        return None
    if not all(isinstance(row, dict) and isinstance(row.get("name"), str) for row in rows):
        return None
    return data


def _valid_timings(data: Any) -> dict[str, float] | None:
    if not isinstance(data, dict) or not data:
        return None
    seconds = {str(stage): number(value) for stage, value in data.items()}
    if any(value is None or value < 0 for value in seconds.values()):
        return None
    return seconds


def _find_figures(folder: Path) -> dict[str, Path]:
    """Existing figure files: the FIGURE_NAMES entries first, then other prefixed PNGs by name."""
    if not folder.is_dir():
        return {}
    found = {key: folder / name for key, name in runfiles.FIGURE_NAMES.items()}
    found = {key: path for key, path in found.items() if path.is_file()}
    known = {path.name for path in found.values()}
    for path in sorted(folder.glob("*.png")):
        if path.name not in known and path.name.startswith(FIGURE_PREFIXES) and path.is_file():
            found[path.stem] = path
    return found
