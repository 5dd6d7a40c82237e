"""The whole pipeline in one call: train, look at the codebook, fit the prior, sample,
interpolate, score, and write the report. ``vqkit demo`` and ``make demo`` run this.

Each stage is the same library function its own subcommand calls; the demo only chooses
settings small enough to finish in a few minutes on a 2-core laptop CPU, and times each stage.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vqkit import arguments, runfiles
from vqkit.classifier import ClassifierConfig, require_usable_cache
from vqkit.codebook_exemplars import EXEMPLAR_IMAGES
from vqkit.codebook_view import CODEMAP_IMAGES, write_codebook_figures
from vqkit.config import RunConfig, preset_config
from vqkit.data import dataset_classes, load_split
from vqkit.demo_settings import MOST as MOST  # re-exported: the settings live apart, light
from vqkit.demo_settings import DemoSettings
from vqkit.devices import resolve_device
from vqkit.errors import InvalidValue, VqkitError
from vqkit.fileio import ensure_dir, write_json_atomic
from vqkit.generate import SamplingContext, sample_images
from vqkit.images import save_grid
from vqkit.interpolate import MODES, interpolation, interpolation_strip
from vqkit.prior import PriorConfig, sample_grid_columns
from vqkit.prior_training import code_grids, train_prior
from vqkit.provenance import stamp
from vqkit.report import write_report
from vqkit.run_folder import default_run_dir, holds_trained_run
from vqkit.run_lock import RunLock
from vqkit.score import score_run
from vqkit.training import TrainingInterrupted, train
from vqkit.usage import code_usage
from vqkit.wording import on_test_images


class DemoInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the demo in ``stage``: what it finished is in ``run_dir``."""

    def __init__(self, stage: str, run_dir: Path, stop: KeyboardInterrupt) -> None:
        self.stage, self.run_dir = stage, run_dir
        self.signal_number = getattr(stop, "signal_number", int(signal.SIGINT))
        # A training stage saved a state: the command that continues it (None elsewhere, or
        # when there is nothing to continue).
        resumable = isinstance(stop, TrainingInterrupted) and stop.resumable
        self.resume_command = stop.resume_command if resumable else None
        super().__init__(self.sentence())

    def sentence(self) -> str:
        """What the user can do next: the demo starts only in a new folder."""
        saved = f"what it finished is saved in {self.run_dir}"
        then = f"vqkit report {self.run_dir} shows it; a new demo needs another --out"
        if self.resume_command is not None:
            then = f"continue this stage with: {self.resume_command}; {then}"
        return f"in the demo's '{self.stage}' stage; {saved} ({then})."


@dataclass
class DemoResult:
    run_dir: Path
    report: Path
    headline: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


def _run_config(settings: DemoSettings) -> RunConfig:
    """The preset's run configuration with the demo's dataset, seed, length and speed."""
    config = preset_config(settings.preset)
    config.train.dataset = settings.dataset
    config.train.seed = settings.seed
    if settings.epochs is not None:
        config.train.epochs = settings.epochs
    config.train.train_limit = settings.train_limit
    config.train.precision = settings.precision
    config.train.channels_last = settings.channels_last
    return config


def run_demo(
    out_dir: str | Path | None = None,
    settings: DemoSettings | None = None,
    *,
    device: str = "auto",
    progress: bool | None = None,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> DemoResult:
    """Run every stage into one run folder; returns the report path and headline numbers."""
    settings = DemoSettings() if settings is None else settings
    arguments.instance(settings, DemoSettings, "The demo settings", "DemoSettings(epochs=1)")
    arguments.path_or_none(out_dir, "The demo's run folder")
    progress = arguments.switch(progress, "progress", allow_none=True)
    arguments.callable_or_none(log, "log")
    config = _run_config(settings)
    if out_dir is not None and not str(out_dir).strip():  # Path("") is the current folder
        raise InvalidValue("The demo's run folder name is empty; give a folder (--out).")
    resolve_device(device)  # a bad --device is refused before the first stage is announced
    classes = len(dataset_classes(settings.dataset))
    # A VQKIT_CACHE the classifier cannot be kept in is refused before minutes of training too.
    require_usable_cache(
        settings.classifier or ClassifierConfig(dataset=settings.dataset, num_classes=classes)
    )
    # Created by train, once it has checked everything: a refused demo leaves no folder behind.
    run_dir = Path(out_dir) if out_dir is not None else default_run_dir(config)
    if holds_trained_run(run_dir):
        raise VqkitError(
            f"The folder '{run_dir}' already holds a run (finished or not), and the demo trains "
            "its own; choose another --out."
        )
    figures = run_dir / runfiles.FIGURES_DIR
    timings: dict[str, float] = {}

    def stage(name: str, work: Callable[[], Any]) -> Any:
        log(f"[demo] {name} ...")
        started = time.perf_counter()
        try:
            result = work()
        except KeyboardInterrupt as stop:
            raise DemoInterrupted(name, run_dir, stop) from stop
        timings[name] = time.perf_counter() - started
        write_json_atomic(run_dir / runfiles.TIMINGS, timings)
        return result

    trained = stage(
        "train VQ-VAE", lambda: train(config, run_dir, device=device, progress=progress)
    )
    # From here to the report this demo is the folder's one writer (train-prior inside is
    # nested in its lock), so no other train or train-prior mixes into the run meanwhile.
    with RunLock() as lock:
        lock.acquire(run_dir, "demo")
        model = trained.model.eval()
        ensure_dir(figures)
        test = load_split(settings.dataset, "test")
        stage(
            "codebook figures",
            lambda: write_codebook_figures(
                model,
                _code_usage(run_dir, model),
                test.images[:CODEMAP_IMAGES],
                figures,
                stamp(model),
                exemplar_images=test.images[:EXEMPLAR_IMAGES],
            ),
        )
        prior_settings = PriorConfig(
            epochs=settings.prior_epochs,
            conditional=settings.prior_conditional,
            seed=settings.seed,
            train_limit=settings.prior_train_limit,
        )
        prior = stage(
            "train prior",
            lambda: train_prior(run_dir, prior_settings, device=device, progress=progress),
        )
        context = SamplingContext(model, run_dir)
        stage("samples", lambda: _write_samples(context, settings, figures))
        stage("interpolations", lambda: _write_interpolations(model, test, settings, run_dir))
        scores = stage(
            "score",
            lambda: score_run(
                run_dir,
                settings.score_samples,
                seed=settings.seed,
                device=device,
                classifier_config=settings.classifier,
                log=log,
            ),
        )
        report = stage("report", lambda: write_report(run_dir))
        headline = _headline(trained.final, prior.best, scores)
        headline["prior_conditional"] = settings.prior_conditional
        return DemoResult(run_dir, report, headline, timings)


def _code_usage(run_dir: Path, model) -> torch.Tensor:
    """The code usage over the training set, counted from the code grids of both splits, which
    are cached for the prior stage next: the training set is encoded once, not once for the
    counts and again for the prior."""
    code_grids(run_dir, model)
    return code_usage(run_dir, model)


def _write_samples(context: SamplingContext, settings: DemoSettings, figures: Path) -> None:
    names = runfiles.FIGURE_NAMES
    count = settings.samples_per_figure
    for strategy in ("random", "used", "prior"):
        _, images = sample_images(context, strategy, count, settings.seed)
        made_with = {"command": "demo", "strategy": strategy, "n": count, "seed": settings.seed}
        made_by = stamp(
            context.model,
            prior_sha256=context.prior_sha256 if strategy == "prior" else None,
            made_with=made_with,
        )
        columns = sample_grid_columns(context.run_dir, strategy)
        save_grid(images, figures / names[f"samples_{strategy}"], columns, stamp=made_by)
    if settings.prior_conditional:
        classes = len(dataset_classes(settings.dataset))
        rows = [
            sample_images(context, "prior", classes, settings.seed + label, digit=label)[1]
            for label in range(classes)
        ]
        # Row d: as many samples of class d as there are classes, drawn with seed + d (as
        # `vqkit sample --digit d` would).
        made_with = {"command": "demo", "strategy": "prior", "n": classes, "seed": settings.seed}
        made_with["rows"] = "class d with seed + d"
        save_grid(
            torch.cat(rows),
            figures / names["samples_prior_conditional"],
            columns=classes,
            stamp=stamp(
                context.model,
                prior_sha256=context.prior_sha256,
                made_with=made_with,
            ),
        )


def _write_interpolations(model, test, settings: DemoSettings, run_dir: Path) -> None:
    first, second = (
        int(torch.nonzero(test.labels == label)[0]) for label in settings.interpolation_pair
    )
    image_a, image_b = test.images[first], test.images[second]
    for mode in MODES:
        made_with = {"command": "demo", "from": f"test:{first}", "to": f"test:{second}"}
        made_with |= {"mode": mode, "steps": settings.interpolation_steps, "seed": settings.seed}
        made_by = stamp(model, made_with=made_with)
        codes = interpolation(
            model, image_a, image_b, settings.interpolation_steps, mode, settings.seed
        )
        strip = interpolation_strip(model, image_a, image_b, codes)
        save_grid(
            strip,
            run_dir / runfiles.FIGURES_DIR / runfiles.FIGURE_NAMES[f"interpolation_{mode}"],
            columns=strip.shape[0],
            stamp=made_by,
        )


def _headline(vq: dict[str, Any], prior: dict[str, Any], scores: dict[str, Any]) -> dict[str, Any]:
    fid = {row["name"]: row["fid"] for row in scores.get("rows", [])}
    return {
        "test_mse": vq["test_mse"],
        "test_images": vq.get("test_images"),
        "codes_used": vq["codes_used"],
        "num_codes": vq["num_codes"],
        "prior_bits_per_code": prior["test_bits_per_code"],
        "uniform_bits_per_code": prior["uniform_bits_per_code"],
        "fid_prior": fid.get("prior"),
        "fid_used": fid.get("used"),
        "fid_random": fid.get("random"),
    }


def format_headline(result: DemoResult) -> str:
    """The demo's closing lines: where the report is and the numbers that matter."""
    h = result.headline
    lines = [
        f"test MSE:           {h['test_mse']:.5f}",
        f"codes used:         {h['codes_used']} of {h['num_codes']} {on_test_images(h)}",
        f"prior bits/code:    {h['prior_bits_per_code']:.3f} "
        + ("given the class " if h.get("prior_conditional") else "")
        + f"(uniform {h['uniform_bits_per_code']:.3f})",
    ]
    if h["fid_prior"] is not None:
        lines.append(
            f"classifier-FID:     prior {h['fid_prior']:.1f}, used {h['fid_used']:.1f}, "
            f"random {h['fid_random']:.1f} (lower is better)"
        )
        if h["fid_used"] == h["fid_random"]:  # the same grids: no code is unused in training
            lines.append(
                "                    (every code is used on the training set, so 'used' draws "
                "exactly as 'random' does)"
            )
    total = sum(result.timings.values())
    lines += [f"total time:         {total:.0f} s", f"report:             {result.report}"]
    return "\n".join(lines)
