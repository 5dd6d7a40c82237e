"""Training a VQ-VAE: a plain function taking explicit settings, writing one run folder.

A run saves a resumable state (``train_state.safetensors``) after every epoch and every
``checkpoint_every`` steps, so it can continue after a crash, a kill or Ctrl-C; it stops with a
clear message on a non-finite loss; and under ``torchrun`` it trains with several processes
(DistributedDataParallel), rank 0 alone writing files.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from vqkit import arguments, distributed, environment, runfiles, train_state
from vqkit.acceleration import (
    make_optimizer,
    make_scheduler,
    prepare_model,
    require_compile_toolchain,
    resolve_precision,
    schedule_length,
)
from vqkit.checkpoint import run_path, save_config, save_weights, state_dict_bytes
from vqkit.config import RunConfig
from vqkit.cuda_graph import (
    GraphedTrainStep,
    graphed_step_or_none,
    require_cuda_graph_support,
)
from vqkit.data import OWN_DATASET, Split, load_split
from vqkit.devices import callers_random_state_kept, require_trainable_size, resolve_device
from vqkit.errors import VqkitError
from vqkit.fileio import append_jsonl, write_bytes_if_changed
from vqkit.guards import WEIGHTS_NOT_SAVED, NonFiniteGuard, StopRequest
from vqkit.images import COMPARISON_SCALE, comparison_canvas, png_bytes
from vqkit.metrics import evaluate_reconstruction
from vqkit.model import VQVAE
from vqkit.run_folder import (
    STATE_CONFIG_KEY,
    checked_config,
    prepare_run_dir,
    record_data_folder,
    record_environment,
    require_resumable_settings,
    require_same_own_data,
    resumed_history,
)
from vqkit.run_lock import RunLock
from vqkit.step import apply_step, compute_losses
from vqkit.train_state import Position
from vqkit.wording import counted

# What a step adds to the epoch's sums: the training loss and its quantizer term.
LOSS_TERMS = 2

# How many steps between progress-bar refreshes: each refresh reads the loss off the device.
PROGRESS_REFRESH_STEPS = 25
# cuBLAS needs a fixed workspace layout for reproducible matrix products (NVIDIA's value).
CUBLAS_DETERMINISTIC_WORKSPACE = ":4096:8"
DDP_STRIDE_WARNING = "Grad strides do not match bucket view strides"


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a run after saving a state that ``resume_command`` continues
    from; ``signal_number`` says which."""

    def __init__(
        self,
        run_dir: Path,
        files: train_state.StateFiles = train_state.VQVAE_FILES,
        signal_number: int = signal.SIGINT,
        context: distributed.Context | None = None,
    ):
        self.run_dir = run_dir
        self.resume_command = files.resume_command(run_dir, context)
        self.signal_number = int(signal_number)
        # What became of the run, said instead of the resume command (a replacement prior
        # stopped in its first epoch: the earlier prior is back; a run stopped after its last
        # epoch: it is finished; a second Ctrl-C: the state saved before continues it).
        self.outcome: str | None = None
        self.resumable = True  # whether resume_command continues the run
        super().__init__(f"training interrupted; continue with: {self.resume_command}")

    def instead(self, outcome: str, *, resumable: bool = False) -> TrainingInterrupted:
        """This stop, saying ``outcome`` of the run in place of the resume command."""
        self.outcome, self.resumable = outcome, resumable
        return self


def stopped_at_once(
    run_dir: Path,
    files: train_state.StateFiles = train_state.VQVAE_FILES,
    context: distributed.Context | None = None,
) -> TrainingInterrupted:
    """The stop of a second Ctrl-C, which ends training without the first one's save: the
    state saved before (which the caller has checked exists) continues the run."""
    stop = TrainingInterrupted(run_dir, files, context=context)
    outcome = f"stopped at once; its last saved state continues with: {stop.resume_command}"
    return stop.instead(outcome, resumable=True)


def limit(split: Split, count: int | None) -> torch.Tensor:
    """The first ``count`` images of a split (all of them when count is None)."""
    return split.images if count is None else split.images[:count]


@dataclass
class TrainResult:
    """What :func:`train` returns: the run folder it wrote, the trained model (in eval mode,
    on the training device) and the metrics of every epoch the run has trained."""

    run_dir: Path
    model: VQVAE
    history: list[dict[str, Any]] = field(default_factory=list)  # one metrics record per epoch
    epochs_trained: int = 0  # by this call: 0 for a resume of a run that had finished its epochs

    @property
    def final(self) -> dict[str, Any]:
        """The last epoch's metrics record (``test_mse``, ``codes_used``, ...), as in
        ``metrics.jsonl``."""
        return self.history[-1]


def run_epoch(
    model: nn.Module | Any,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    batch_size: int,
    order_generator: torch.Generator,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    precision: str = "fp32",
    graphed: GraphedTrainStep | None = None,
) -> float:
    """One plain pass over uint8 ``images`` (N, H, W) in a seeded order; mean training loss.

    The same steps as ``train`` without its run folder, checkpoints, guards or processes: the
    building block benchmarks use to time training with the clock stopped for evaluation.
    ``graphed`` (built on the same model, optimizer and scheduler) takes the steps instead.
    """
    batches = epoch_batches(
        images.shape[0], batch_size, order_generator, distributed.Context(), images.device
    )
    total, steps = torch.zeros((), device=images.device), 0
    for index in batches:
        if graphed is not None:
            total += graphed(images[index])[2]
        else:
            reconstruction, quantizer = compute_losses(model, images[index], precision)
            total += apply_step(optimizer, reconstruction, quantizer, scheduler)
        steps += 1
    return float(total) / max(steps, 1)


def loss_terms(loss: float, quantizer: float) -> dict[str, float]:
    """An epoch's mean training loss split into its two terms, for metrics.jsonl; nothing
    when the quantizer's share is unknown (an epoch resumed from a state saved before it was
    kept)."""
    if not math.isfinite(quantizer):
        return {}
    return {"train_reconstruction_mse": loss - quantizer, "train_quantizer_loss": quantizer}


def require_batch_divides(batch_size: int, world_size: int) -> None:
    """Refuse a global batch that the ``world_size`` processes cannot split evenly."""
    if batch_size % world_size:
        raise VqkitError(
            f"The batch size {batch_size} must be a multiple of the {world_size} processes "
            "(--batch-size is the total over all of them)."
        )


def require_images_for_processes(count: int, world_size: int) -> None:
    """Refuse fewer training images than processes."""
    if count < world_size:  # some process would get no image to train on
        raise VqkitError(
            f"{counted(count, 'training image')} cannot be shared among {world_size} "
            "processes; train on more images or with fewer processes."
        )


def steps_per_epoch(count: int, batch_size: int, world_size: int) -> int:
    """How many steps each process takes in one epoch (see ``epoch_batches``)."""
    per_rank = (count - count % world_size) // world_size if world_size > 1 else count
    return -(-per_rank // (batch_size // world_size))


def epoch_batches(
    count: int,
    batch_size: int,
    generator: torch.Generator,
    context: distributed.Context,
    device: torch.device | None = None,
) -> list[torch.Tensor]:
    """This process's batches of one epoch, as index tensors into the training images.

    Every rank draws the same seeded permutation and takes positions rank, rank + W, ...; the W
    shards of one step are then exactly the one-process batch of ``batch_size`` images.
    """
    order = torch.randperm(count, generator=generator)
    if context.enabled:
        usable = count - count % context.world_size
        order = order[:usable][context.rank :: context.world_size]
    # One copy to the device per epoch, not one per step.
    return list(order.to(device).split(batch_size // context.world_size))


@contextlib.contextmanager
def deterministic_mode(enabled: bool, device: torch.device) -> Iterator[None]:
    """Reproducible kernels while training (restored afterwards; on CUDA the cuBLAS workspace
    variable it sets stays set for the process); a no-op when not enabled."""
    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    previous_cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = previous_cudnn


def train(
    config: RunConfig,
    run_dir: str | Path | None = None,
    *,
    device: str = "auto",
    data_dir: str | Path | None = None,
    progress: bool | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train the model ``config`` describes and write its run folder: ``run_dir``, or with
    None a new ``runs/DATE-TIME-DATASET-PRESET`` under the current folder.

    Returns the trained model (eval mode) and the per-epoch metrics also written to
    ``metrics.jsonl``. ``progress=None`` shows a bar only when stderr is a terminal.
    ``resume=True`` continues the run in ``run_dir`` from its last saved state. Under torchrun
    every process calls this; each returns the same model. Ctrl-C or SIGTERM raises
    TrainingInterrupted after saving (under torchrun, every process after the same step).
    """
    arguments.path_or_none(run_dir, "A run folder")
    arguments.path_or_none(data_dir, "The data folder (--data-dir)")
    progress = arguments.switch(progress, "progress", allow_none=True)
    resume = arguments.switch(resume, "resume")
    config = record_data_folder(checked_config(config), data_dir)
    target = resolve_device(device)
    context = distributed.setup(target)
    finished = peers_lost = False
    lock = RunLock()  # held by rank 0 from the run folder's checks to the end
    run = None
    try:
        target = distributed.device_for(context, target)
        with (
            deterministic_mode(config.train.deterministic, target),
            callers_random_state_kept(target),
            warnings.catch_warnings(),
        ):
            # DDP compares gradient strides even along the size-1 channel axis of a grayscale
            # input convolution, where they mean nothing; the warning would repeat every run.
            warnings.filterwarnings("ignore", message=DDP_STRIDE_WARNING)
            run = _Run(config, run_dir, target, context, data_dir, progress, resume, lock)
            result = run.train()
        finished = True
        return result
    except RuntimeError as exc:
        saved = run is not None and train_state.exists(run.run_dir, train_state.VQVAE_FILES)
        hint = train_state.VQVAE_FILES.resume_command(run.run_dir, context) if saved else None
        message = distributed.lost_process_message(exc, hint)
        if message is None:
            raise
        peers_lost = True
        raise VqkitError(message) from exc
    except TrainingInterrupted:
        raise
    except KeyboardInterrupt as exc:  # a second Ctrl-C: at once, without the stop's own save
        if run is None or not train_state.exists(run.run_dir, train_state.VQVAE_FILES):
            raise
        raise stopped_at_once(run.run_dir, context=context) from exc
    finally:
        try:
            lock.release()
            distributed.teardown(context, finished, peers_lost)
        finally:
            if run is not None:  # a stop's repeated signals were requests until now
                run.stop.release_signals()


class _Run:
    """The live objects of one training run and the small steps that move it forward."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: str | Path | None,
        device: torch.device,
        context: distributed.Context,
        data_dir: str | Path | None,
        progress: bool | None,
        resume: bool,
        lock: RunLock,
    ) -> None:
        self.config = config
        settings = self.settings = config.train
        self.context, self.device = context, device
        data_dir = settings.data_folder(data_dir)
        with distributed.refused_alike():
            if not resume:  # a saved run keeps the settings it was trained with
                config.model.quantizer.require_new_run_bounds()
            require_compile_toolchain(settings, device)
            require_cuda_graph_support(settings, device, context)
            require_batch_divides(settings.batch_size, context.world_size)
        self._load_data(data_dir)
        # The model is built before the run folder exists, so that a quantizer of one's own
        # that breaks the contract leaves no folder behind. (prepare_run_dir draws no numbers.)
        require_trainable_size(
            lambda: VQVAE(config.model),
            device,
            "VQ-VAE",
            "--hidden-dim, --fsq-levels or --residual-blocks"
            if config.model.quantizer.quantizer == "fsq"
            else "--hidden-dim, --num-embeddings, --embedding-dim or --residual-blocks",
        )
        torch.manual_seed(settings.seed)
        self.model = VQVAE(config.model).to(device)
        with distributed.refused_alike():  # rank 0's refusal, broadcast
            self.run_dir = prepare_run_dir(config, run_dir, resume, context, device, lock)
        self.optimizer = make_optimizer(self.model, settings)
        epoch_steps = steps_per_epoch(self.images.shape[0], settings.batch_size, context.world_size)
        total_steps = settings.epochs * epoch_steps
        self.scheduler = make_scheduler(self.optimizer, settings, total_steps)
        self.precision = resolve_precision(settings.precision, device)
        self.order_generator = torch.Generator().manual_seed(settings.seed)
        self.position = Position(world_size=context.world_size)
        # The epoch's sums so far of the training loss and of its quantizer term: (2,).
        self.loss_sums = torch.zeros(LOSS_TERMS, device=device)
        self.history: list[dict[str, Any]] = []
        # Channels-last / compiled view of the model; DDP wraps that view when distributed.
        # Before restoring: the restored optimizer moments take the parameters' final layout.
        self.step_model = prepare_model(self.model, settings)
        own_data = None
        if settings.dataset == OWN_DATASET:
            own_data = environment.images_digest(self.images, self.test_images)
        if resume:
            self._restore(own_data, data_dir, epoch_steps)
        self.resumed = resume
        self.epochs_at_start = self.position.epochs_done
        if self.epochs_at_start < settings.epochs:  # a finished run resumed is no new session
            self._record_session(own_data)
        self._prepare_steps(progress)

    def _load_data(self, data_dir: str | Path | None) -> None:
        """The training split resident on the device (uint8; batches are gathered by index)
        and the test split, each cut to its limit."""
        settings = self.settings
        # Not alike: a download may fail in one process alone, which must then say so itself.
        train_split = load_split(settings.dataset, "train", data_dir)
        self.images = limit(train_split, settings.train_limit).to(self.device)
        test_split = load_split(settings.dataset, "test", data_dir)
        self.test_images = limit(test_split, settings.test_limit)
        self.test_split_images = len(test_split)  # recorded: says whether a limit cut it
        with distributed.refused_alike():
            require_images_for_processes(self.images.shape[0], self.context.world_size)

    def _record_session(self, own_data: str | None) -> None:
        """Log this training session in environment.jsonl; a resume also records its settings."""
        resumed_at = self.position if self.resumed else None
        record_environment(
            self.run_dir, self.config, self.device, self.context, resumed_at, self.precision,
            own_data,
        )  # fmt: skip
        # Checked, its metrics and session log readable: now a resume records the new --epochs
        # (and data folder, checkpoint and guard settings). A finished run resumed changes no
        # file (this is not called for it).
        if self.resumed and self.context.is_main:
            save_config(self.run_dir, self.config)

    def _prepare_steps(self, progress: bool | None) -> None:
        """What takes and watches the steps: DDP around the step model when distributed, the
        CUDA graph when asked, the non-finite and stop guards, the progress bar."""
        settings, context, device = self.settings, self.context, self.device
        if context.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.step_model = nn.parallel.DistributedDataParallel(self.step_model, device_ids=ids)
        self.graphed = graphed_step_or_none(
            settings, self.step_model, self.optimizer, self.scheduler, self.precision
        )
        self.guard = NonFiniteGuard(settings.skip_nonfinite, device, context, self.run_dir)
        self.guard.skipped = self.position.skipped_nonfinite
        self.stop = StopRequest(context, device)
        show = sys.stderr.isatty() if progress is None else progress
        self.show = show and context.is_main

    def _restore(self, own_data: str | None, data_dir: str | Path | None, epoch_steps: int) -> None:
        """Load the run's saved state into the live objects, after checking that it fits
        these settings, this data and this many processes. The checks read the same run folder
        in every process; loading the state is left out, as its memory is each process's own."""
        with distributed.refused_alike():
            require_resumable_settings(self.run_dir, self.config)
            if own_data is not None:  # before anything is saved: a refusal changes no file
                require_same_own_data(self.run_dir, own_data, data_dir)
        planned = schedule_length(self.scheduler)
        self.position, loss_sums = train_state.load(
            self.run_dir, self.model, self.optimizer, self.order_generator, self.scheduler
        )
        if loss_sums.numel() < LOSS_TERMS:  # saved before the quantizer term was kept
            known = 0.0 if self.position.step == 0 else math.nan  # none yet at an epoch's start
            loss_sums = torch.cat([loss_sums, torch.full((1,), known)])
        self.loss_sums = loss_sums.to(self.device)
        with distributed.refused_alike():
            self._require_resumable_here(planned, epoch_steps)
        self.position.world_size = self.context.world_size
        self.history = resumed_history(self.run_dir, self.position.epochs_done, self.context)

    def _require_resumable_here(self, planned: int | None, epoch_steps: int) -> None:
        """Refuse a restored position this many processes, epochs and images cannot continue:
        ``planned`` is the length of the schedule they would need."""
        saved, now = self.position.world_size, self.context.world_size
        if self.position.step and saved != now:
            raise VqkitError(
                f"The run in '{self.run_dir}' stopped mid-epoch with "
                f"{counted(saved, 'process', 'processes')}; resume it with that many."
            )
        fitted = schedule_length(self.scheduler)
        batch, count = self.settings.batch_size, self.images.shape[0]
        fits_saved = self.settings.epochs * steps_per_epoch(count, batch, saved) == fitted
        if fitted != planned and fits_saved:  # only the number of processes changed the length
            raise VqkitError(
                f"The run in '{self.run_dir}' follows a {self.settings.lr_schedule} "
                f"learning-rate schedule fitted to {fitted} steps with "
                f"{counted(saved, 'process', 'processes')}; with "
                f"{counted(now, 'process', 'processes')} the same epochs take {planned} steps "
                "(each process trains on an equal share of the images), so resume it with "
                f"{saved}."
            )
        if fitted != planned:
            raise VqkitError(
                f"The run in '{self.run_dir}' follows a {self.settings.lr_schedule} learning-rate "
                f"schedule fitted to the length it started with ({fitted} steps), so it cannot "
                f"be resumed with --epochs {self.settings.epochs} on these images ({planned} "
                "steps; the length also changes with the dataset); train a new run instead."
            )
        # Now with as many processes as saved it: their epoch's steps are these.
        train_state.require_step_in_epoch(self.run_dir, self.position.step, epoch_steps)
        train_state.require_epochs_not_below(
            "run", self.run_dir, self.position.epochs_done, self.settings.epochs
        )

    def train(self) -> TrainResult:
        # Each epoch's end writes the weights file; a resume of a finished run trains none.
        trains_an_epoch = self.epochs_at_start < self.settings.epochs
        if not self.resumed:
            # A new run saves its starting state before its first step: the end of epoch 1
            # writes the weights before the state, and a kill or a full disk between the two
            # would otherwise leave weights with no state, which --resume cannot continue and
            # a new train --out refuses to write over.
            self.checkpoint(self.order_generator.get_state())
        with self.stop.installed():
            for epoch in range(self.position.epochs_done + 1, self.settings.epochs + 1):
                self.run_epoch(epoch)
                if self.stop.agreed() and epoch < self.settings.epochs:
                    raise self.interrupted()
            # A stop in the last epoch's evaluation or save, or in the lines below, finds the
            # run finished: it ends the command once the run's last figure is written.
            result = self._finish(trains_an_epoch)
            if self.stop.agreed():
                raise self.interrupted().instead(
                    f"the run had already finished its {counted(self.settings.epochs, 'epoch')} "
                    "and is saved."
                )
        return result

    def _finish(self, trains_an_epoch: bool) -> TrainResult:
        """After the last epoch: the weights checked alike on every process, the comparison
        figure written, the result."""
        if not distributed.same_on_all_ranks(self.context, list(self.model.state_dict().values())):
            raise VqkitError("The training processes ended with different weights; train again.")
        self.model.eval()
        if self.context.is_main:
            if not trains_an_epoch:
                # A resume of a finished run trains nothing: the weights file is written again
                # only if it no longer holds the state's weights (damaged or missing).
                weights = run_path(self.run_dir, runfiles.WEIGHTS)
                write_bytes_if_changed(weights, state_dict_bytes(self.model))
            path = run_path(self.run_dir, runfiles.RECONSTRUCTIONS)
            write_reconstructions(self.model, self.test_images[:8], path)
        distributed.barrier(self.context)
        trained = self.settings.epochs - self.epochs_at_start
        return TrainResult(self.run_dir, self.model, self.history, epochs_trained=trained)

    def run_epoch(self, epoch: int) -> None:
        """Train one epoch (or its rest, after a resume), then evaluate and save it."""
        started = time.perf_counter()
        epoch_start_order = self.order_generator.get_state()  # a mid-epoch save replays from it
        batches = epoch_batches(
            self.images.shape[0],
            self.settings.batch_size,
            self.order_generator,
            self.context,
            self.device,
        )
        self.model.train()
        position = self.position
        description = f"epoch {epoch}/{self.settings.epochs}"
        bar = tqdm(
            total=len(batches),
            initial=position.step,
            desc=description,
            unit="step",
            disable=not self.show,
            leave=False,
        )
        loss = torch.zeros(())
        first_step = position.step  # a resumed epoch starts mid-way: rate over this session only
        try:
            for index in range(position.step, len(batches)):
                batch = self.images[batches[index]]
                position.global_step += 1
                stepped = self.train_step(batch, position.global_step)
                if stepped is not None:
                    loss = stepped[0]
                    self.loss_sums += stepped
                    position.stepped += 1
                position.step = index + 1
                bar.update(1)
                if self.show and position.step % PROGRESS_REFRESH_STEPS == 0:
                    # Only rank 0 shows a bar, and a lazy guard's check is a collective: with
                    # several processes it waits for the checkpoints and the epoch's end.
                    if not self.context.enabled:
                        self.guard.check()
                    steps_here = position.step - first_step
                    rate = steps_here * self.settings.batch_size / (time.perf_counter() - started)
                    bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{rate:.0f}")
                if position.step == len(batches):
                    break  # the end-of-epoch save below covers the last step
                every = self.settings.checkpoint_every
                stopping = self.stop.agreed(position.global_step)
                if (every and position.global_step % every == 0) or stopping:
                    self.checkpoint(epoch_start_order)
                if stopping:
                    raise self.interrupted()
        finally:  # also when a guard or Ctrl-C stops the epoch: no bar left on the terminal
            bar.close()
        if self.device.type == "cuda":  # the host runs ahead of the GPU: stop its clock too
            torch.cuda.synchronize(self.device)
        # Images all processes trained in this session (a resumed epoch: only its rest).
        trained = sum(int(part.numel()) for part in batches[first_step:]) * self.context.world_size
        self.finish_epoch(epoch, time.perf_counter() - started, trained)

    def interrupted(self) -> TrainingInterrupted:
        return TrainingInterrupted(
            self.run_dir, signal_number=self.stop.signal_number, context=self.context
        )

    def train_step(self, batch: torch.Tensor, global_step: int) -> torch.Tensor | None:
        """One optimizer step on ``batch``; its detached loss and quantizer term (2,), or None
        when the guard skipped it. A replayed step's guard is lazy (--skip-nonfinite is refused
        with --cuda-graph)."""
        if self.graphed is not None:
            reconstruction, quantizer, loss = self.graphed(batch)
            self.guard.step_is_bad(global_step, reconstruction, quantizer)
        else:
            reconstruction, quantizer = compute_losses(self.step_model, batch, self.precision)
            if self.guard.step_is_bad(global_step, reconstruction, quantizer):
                return None
            loss = apply_step(self.optimizer, reconstruction, quantizer, self.scheduler)
        return torch.stack([loss, quantizer.detach().float()])

    def finish_epoch(self, epoch: int, seconds: float, trained: int) -> None:
        """Evaluate, then write weights, the metrics line and the epoch-boundary state;
        ``seconds`` and ``trained`` (images) cover this session's part of the epoch."""
        self.guard.check()
        steps = torch.tensor(float(self.position.stepped), dtype=torch.float64, device=self.device)
        sums = torch.cat([self.loss_sums.double(), steps.reshape(1)])
        totals = distributed.all_sum(self.context, sums)
        means = (totals[:LOSS_TERMS] / totals[LOSS_TERMS].clamp(min=1)).tolist()
        record: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": means[0],
            **loss_terms(*means),
            **evaluate_reconstruction(self.model, self.test_images, self.settings.eval_batch_size),
            "test_split_images": self.test_split_images,
            **self.model.quantizer.training_stats(),
            "epoch_seconds": seconds,
            "images_per_second": trained / seconds,
        }
        if not math.isfinite(record["test_mse"]):  # every step's loss was finite, the weights not
            raise VqkitError(
                f"The weights became non-finite in epoch {epoch} (test MSE {record['test_mse']}); "
                f"{WEIGHTS_NOT_SAVED}"
            )
        if self.guard.skipped:
            record["skipped_nonfinite_steps"] = self.guard.skipped
        self.history.append(record)
        if self.context.is_main:
            save_weights(run_path(self.run_dir, runfiles.WEIGHTS), self.model)
            append_jsonl(run_path(self.run_dir, runfiles.METRICS), record)
        self.position = Position(
            epochs_done=epoch,
            global_step=self.position.global_step,
            world_size=self.context.world_size,
        )
        self.loss_sums.zero_()
        self.checkpoint(self.order_generator.get_state())

    def checkpoint(self, order_state: torch.Tensor) -> None:
        """Save the resumable state (rank 0), once the guard has vouched for it."""
        self.guard.check()
        self.guard.check_weights(self.model, self.position.global_step)
        self.position.skipped_nonfinite = self.guard.skipped
        # Rank 0 saves for all: the ranks' mean loss sum, which every rank restores, so the
        # epoch's all-rank total comes out right after a mid-epoch resume.
        loss_sums = distributed.all_sum(self.context, self.loss_sums.clone())
        loss_sums /= self.context.world_size
        if self.context.is_main:
            train_state.save(
                self.run_dir,
                self.position,
                self.model,
                self.optimizer,
                order_state,
                loss_sums,
                self.scheduler,
                extra={STATE_CONFIG_KEY: self.config.to_dict()},  # what a resume must match
            )
        distributed.barrier(self.context)


@torch.no_grad()
def write_reconstructions(model: VQVAE, images: torch.Tensor, path: Path) -> Path:
    """Save originals (top row) above the model's reconstructions (bottom row); a figure that
    is already the same (a finished run resumed) is left untouched."""
    device = next(model.parameters()).device
    reconstructions = model(images.to(device)).reconstruction
    canvas = comparison_canvas(images, reconstructions)
    write_bytes_if_changed(path, png_bytes(canvas, COMPARISON_SCALE))
    return path
