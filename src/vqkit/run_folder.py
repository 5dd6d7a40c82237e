"""A training run's folder: the checked config, a new or resumed folder, its session log.

Rank 0 alone writes; the other processes of a torchrun job only agree on the folder's name.
A new run never writes over an earlier run's files, and a resumed one keeps only the metrics
its saved state covers.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from vqkit import distributed, environment, runfiles, train_state
from vqkit.checkpoint import (
    load_config,
    require_files_where_files_go,
    require_run_folder,
    run_path,
    save_config,
)
from vqkit.config import RunConfig, settings_differences
from vqkit.constants import RUNS_ROOT, VQVAE_RESUME_FIELDS
from vqkit.data import OWN_DATASET
from vqkit.errors import InvalidValue, VqkitError
from vqkit.fileio import (
    ensure_dir,
    parse_json,
    read_file_bytes,
    read_jsonl,
    temp_file_target,
    write_bytes_atomic,
)
from vqkit.run_lock import LOCK_NAME, RunLock, require_no_writer
from vqkit.train_state import Position


def default_run_dir(config: RunConfig, root: str | Path = RUNS_ROOT) -> Path:
    """A new folder name under ``root`` that says when and what was trained."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{stamp}-{config.train.dataset}-{config.preset}"
    candidate, suffix = base, 1
    while candidate.exists():
        suffix += 1
        candidate = base.with_name(f"{base.name}-{suffix}")
    return candidate


def checked_config(config: RunConfig) -> RunConfig:
    """``config`` checked again as if read from config.json: fields edited in place from Python
    (``cfg.model.quantizer.beta = -1``) skip the checks the constructors ran, and a run trained
    from them could not be loaded afterwards."""
    if not isinstance(config, RunConfig):
        raise VqkitError(
            f"train() takes a RunConfig (for example vqkit.preset_config('efficient')), not a "
            f"{type(config).__name__}; RunConfig.from_dict turns a dict into one."
        )
    return RunConfig.from_dict(config.to_dict())


def record_data_folder(config: RunConfig, data_dir: str | Path | None) -> RunConfig:
    """``config`` with the folder of an own dataset recorded as an absolute path (the run's
    later stages read it from there). A named dataset records none: a folder carried over
    from an own dataset's config (``--config RUN --dataset mnist``) would be read instead."""
    if config.train.dataset != OWN_DATASET:
        folder = None
    elif data_dir is not None:
        folder = str(Path(data_dir).resolve())
    else:
        return config
    return replace(config, train=replace(config.train, data_dir=folder))


def prepare_run_dir(
    config: RunConfig,
    run_dir: str | Path | None,
    resume: bool,
    context: distributed.Context,
    device: torch.device,
    lock: RunLock,
) -> Path:
    """The run folder, created by rank 0 with its config and locked by it (``lock``) against
    other writers; never overwrites an earlier run. (A resumed run's config is saved again
    only once its state has been checked.)"""
    if run_dir is not None and not str(run_dir).strip():
        raise InvalidValue("The run folder name is empty; give a folder (--out or --resume).")
    if resume:
        if run_dir is None:
            raise InvalidValue("A resume needs the run folder to continue (--resume RUN_DIR).")
        path = Path(run_dir)
        require_run_folder(path)
    else:
        chosen = run_dir if run_dir is not None else default_run_dir(config)
        path = Path(distributed.broadcast_text(context, str(chosen), device))
    distributed.barrier(context)
    refusal = ""
    if context.is_main:  # rank 0 decides, and every rank hears it (its folder may be local)
        try:
            if not resume:
                require_no_writer(path)  # a run being trained there: name its trainer
                _refuse_taken_or_unusable(path, context)  # before creating anything
                ensure_dir(path)
            lock.acquire(path, "train")
            require_files_where_files_go(path)
            if not resume:  # again, under the lock: another process may have trained here
                _refuse_taken(path, context)
        except VqkitError as exc:
            refusal = str(exc)
    refusal = distributed.broadcast_text(context, refusal, device)
    if refusal:  # on every rank, so none waits for the others at the next collective
        raise VqkitError(refusal)
    if context.is_main and not resume:
        # A start written over goes whole: its state holds the old settings, its report the
        # old run (the config and the session log are written afresh).
        for name in START_FILES:
            run_path(path, name).unlink(missing_ok=True)
        for entry in path.iterdir():
            if _left_by_a_kill(entry.name) and entry.is_file():
                entry.unlink(missing_ok=True)
        save_config(path, config)
    return path


# The key of the run's settings (RunConfig.to_dict()) among a VQ-VAE state's own counters.
STATE_CONFIG_KEY = "config"


def require_resumable_settings(run_dir: Path, config: RunConfig) -> None:
    """Refuse to resume ``run_dir`` with settings other than its stored ones (apart from
    VQVAE_RESUME_FIELDS): the run would go on learning something else under its old name. The
    settings its resumable state was saved with count too (config.json may have been edited
    since: an edited rate would be recorded but never used, the state's own rate winning)."""
    allowed = {f"train.{name}" for name in VQVAE_RESUME_FIELDS}
    stored = load_config(run_dir).to_dict()
    saved = train_state.peek(run_dir)[1].get(STATE_CONFIG_KEY)  # None: saved before vqkit kept it
    if isinstance(saved, dict):
        edited = settings_differences(saved, stored, allowed)
        if edited:
            raise VqkitError(
                f"The run in '{run_dir}' was saved with other settings than its "
                f"{runfiles.CONFIG} holds now ({'; '.join(edited[:3])}: 'there' is the saved "
                f"state, 'here' {runfiles.CONFIG}); put the edited values back, or train a new "
                "run."
            )
    differ = settings_differences(stored, config.to_dict(), allowed)
    if differ:
        changeable = ", ".join(VQVAE_RESUME_FIELDS)
        raise VqkitError(
            f"The run in '{run_dir}' was trained with other settings ({'; '.join(differ[:3])}); "
            f"a resume keeps them, changing only {changeable} (pass the run's own settings, "
            "vqkit.checkpoint.load_config(run), or train a new run)."
        )


def _refuse_taken_or_unusable(path: Path, context: distributed.Context) -> None:
    try:
        _refuse_taken(path, context)
    except OSError as exc:  # a name longer than the file system allows, ...
        raise VqkitError(f"Cannot use '{path}' as a run folder: {exc.strerror}.") from exc


def holds_trained_run(path: Path) -> bool:
    """Whether a folder holds a run that has saved weights, or a state past the one a new run
    saves before its first step (a damaged state counts: it is not written over unread)."""
    if run_path(path, runfiles.WEIGHTS).exists():
        return True
    if not train_state.exists(path):
        return False
    position = train_state.saved_position(path)
    return position is None or position.global_step > 0


STATE_NAMES = (train_state.VQVAE_FILES.tensors, train_state.VQVAE_FILES.counters)
# What a start cut off before its first step leaves, which a new run may write over: a new run
# appended to old metrics, or paired with an old prior, would mix two runs.
START_FILES = (runfiles.CONFIG, runfiles.ENVIRONMENT, runfiles.REPORT, *STATE_NAMES)


def _left_by_a_kill(name: str) -> bool:
    """A temp file of a run file's atomic write, left by a process killed in mid-write."""
    return temp_file_target(name) in runfiles.FILE_NAMES


def _refuse_taken(path: Path, context: distributed.Context) -> None:
    """Refuse a new run's folder that holds another run's files or lies inside another run."""
    if holds_trained_run(path):
        raise VqkitError(
            f"The folder '{path}' already holds a run (finished or not); continue it with "
            f"{train_state.VQVAE_FILES.resume_command(path, context)} or choose another --out."
        )
    others = [
        n for n in runfiles.FILE_NAMES if n not in START_FILES and run_path(path, n).is_file()
    ]
    if others:
        raise VqkitError(
            f"The folder '{path}' already holds files of another run ({others[0]}); "
            "choose another --out or move them away."
        )
    # Nor are a run's files mixed in among a user's own, which no command would then tell apart.
    # A start's files are written over only beside the vqkit config.json it writes first: a
    # project's own config.json or report.html is not a start of ours.
    ours = (*START_FILES, LOCK_NAME) if _holds_a_run(path) else (LOCK_NAME,)
    foreign = sorted(
        entry.name
        for entry in (path.iterdir() if path.is_dir() else ())
        if entry.name not in ours and not _left_by_a_kill(entry.name)
    )
    if foreign:
        raise VqkitError(
            f"The folder '{path}' already holds files that are not a run's ('{foreign[0]}'); "
            "choose an empty or new folder for --out."
        )
    # A run inside another is hidden from `vqkit runs` and mixed into that run's folder.
    enclosing = next((p for p in path.resolve().parents if _holds_a_run(p)), None)
    if enclosing is not None:
        raise VqkitError(
            f"The folder '{path}' lies inside the run '{enclosing}'; choose an --out outside it."
        )


def _holds_a_run(folder: Path) -> bool:
    """Whether ``folder`` holds a vqkit run: a config.json with vqkit's sections (the name
    alone is common to many tools, a project folder's own config.json included)."""
    try:
        config = parse_json(read_file_bytes(folder / runfiles.CONFIG))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and {"model", "train", "version"} <= set(config)


def record_environment(
    run_dir: Path,
    config: RunConfig,
    device: torch.device,
    context: distributed.Context,
    resumed_at: Position | None,
    precision: str,
    data_sha256: str | None = None,
) -> None:
    """Rank 0 logs this session's versions, machine, precision (resolved) and quantizer code
    (environment.jsonl); ``resumed_at`` is where a resumed run continues from (None for a new
    run)."""
    if context.is_main:
        quantizer = config.model.quantizer.quantizer
        entry = environment.describe("train", device, context.world_size, quantizer, precision)
        if data_sha256 is not None:  # one's own images: which ones (see require_same_own_data)
            entry["data_sha256"] = data_sha256
        entry["resumed"] = resumed_at is not None
        if resumed_at is not None:
            entry["global_step"] = resumed_at.global_step
        environment.record(run_dir, entry, fresh=resumed_at is None)


def require_same_own_data(run_dir: Path, data_sha256: str, data_dir: str | Path | None) -> None:
    """Refuse to resume a run of one's own images when the images differ from those it
    trained on (the named datasets are checked by checksum when read)."""
    recorded = environment.recorded_data_digest(run_dir)
    if recorded is not None and recorded != data_sha256:
        raise VqkitError(
            f"The images in '{data_dir}' differ from those the run in '{run_dir}' trained on "
            "(their digest changed); resume with the same images, or train a new run on these "
            f"with vqkit train --config {run_dir} --out NEW."
        )


def resumed_history(
    run_dir: Path,
    epochs_done: int,
    context: distributed.Context,
    metrics_name: str = runfiles.METRICS,
) -> list[dict[str, Any]]:
    """Metrics of the epochs the saved state includes; lines of later epochs (written before
    a kill but not covered by the state) are dropped so they are not duplicated. Every other
    line stays as it is, damaged ones included: the file is the run's record, not ours to tidy."""
    path = run_path(run_dir, metrics_name)
    kept = [r for r in read_jsonl(path) if _epoch_of(r) is not None and r["epoch"] <= epochs_done]
    if not context.is_main or not path.exists():
        return kept
    lines = read_file_bytes(path).splitlines(keepends=True)
    staying = [line for line in lines if (_epoch_of(_parsed(line)) or 0) <= epochs_done]
    if len(staying) != len(lines):
        write_bytes_atomic(path, b"".join(staying))
    return kept


def _parsed(line: bytes) -> Any:
    try:
        return parse_json(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def _epoch_of(record: Any) -> int | None:
    """A metrics record's epoch number, None for anything that is not one."""
    epoch = record.get("epoch") if isinstance(record, dict) else None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None
