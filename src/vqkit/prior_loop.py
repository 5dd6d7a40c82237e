"""The resumable training loop of the PixelCNN prior (see :func:`vqkit.train_prior`).

Like VQ-VAE training it saves a resumable state (``prior_state.safetensors``, through
:mod:`vqkit.train_state`) after every epoch and every ``checkpoint_every`` steps, honours Ctrl-C
after saving, and stops on a non-finite loss (:mod:`vqkit.guards`). The state also holds what
the early stopping decides on (best test NLL, epochs without improvement), so a resumed run
makes the same decisions as an uninterrupted one.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from vqkit import runfiles, train_state
from vqkit.acceleration import autocast, resolve_precision
from vqkit.checkpoint import PRIOR_LEARNED_FROM, run_path, save_weights
from vqkit.devices import require_trainable_size
from vqkit.distributed import Context
from vqkit.errors import VqkitError
from vqkit.fileio import append_jsonl
from vqkit.guards import WEIGHTS_NOT_SAVED, NonFiniteGuard, StopRequest
from vqkit.prior import PixelCNNPrior, PriorConfig, save_prior_config
from vqkit.run_folder import resumed_history
from vqkit.train_state import Position
from vqkit.training import (
    TrainingInterrupted,
    epoch_batches,
    steps_per_epoch,
    stopped_at_once,
)

PRIOR_TERMS = ("prior loss",)  # the one loss term the non-finite guard watches


def code_nll(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Logits (B, K, H, W) and codes (B, H, W) int64 -> NLL (B, H, W) in nats of each code.

    log_softmax and gather rather than cross_entropy: CUDA has no deterministic kernel for the
    2-D NLL loss, so cross_entropy would refuse to run under --deterministic. The log_softmax
    runs in at least fp32: CPU autocast leaves it in bf16, which would round every batch's loss
    (and the train bits per code) by up to 0.02 bits.
    """
    log_probs = F.log_softmax(logits, dim=1, dtype=torch.promote_types(logits.dtype, torch.float32))
    return -log_probs.gather(1, codes.unsqueeze(1)).squeeze(1)


def prior_loss(
    prior: PixelCNNPrior, codes: torch.Tensor, labels: torch.Tensor | None
) -> torch.Tensor:
    """() mean negative log-likelihood in nats of code grids (B, H, W) int64 under the prior."""
    return code_nll(prior(codes, labels), codes).mean()


def damaged_state(run_dir: Path) -> VqkitError:
    return VqkitError(
        f"The prior state in '{run_dir}' is damaged or incomplete; train a new prior with "
        f"vqkit {train_state.PRIOR_FILES.command} {run_dir} --restart."
    )


@dataclass
class _Counters:
    """The prior's own counters, saved with the resumable state so a resumed run decides alike."""

    best: float = math.inf  # lowest test NLL so far, bits per code
    stale: int = 0  # epochs since the test NLL last improved (early stopping)
    images: int = 0  # grids of the epoch in progress whose loss was applied
    finished: bool = False  # the run ended normally (all epochs, or stopped early)

    def to_extra(
        self, settings: PriorConfig, digest: str, data_digest: str | None
    ) -> dict[str, Any]:
        # JSON has no infinity: no best yet is null. Floats round-trip exactly through JSON.
        best = self.best if math.isfinite(self.best) else None
        return {
            "best_test_bits_per_code": best,
            "epochs_without_improvement": self.stale,
            "epoch_grids": self.images,
            "finished": self.finished,
            "weights_sha256": digest,
            "data_sha256": data_digest,  # one's own data's (None for a named dataset)
            "config": settings.to_dict(),
        }

    @classmethod
    def from_extra(cls, extra: dict[str, Any], run_dir: Path) -> _Counters:
        try:
            best = extra["best_test_bits_per_code"]
            return cls(
                best=math.inf if best is None else float(best),
                stale=int(extra["epochs_without_improvement"]),
                images=int(extra["epoch_grids"]),
                finished=bool(extra["finished"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise damaged_state(run_dir) from exc


class PriorLoop:
    """The live objects of one prior training run and the small steps that move it forward."""

    def __init__(
        self,
        run_dir: Path,
        settings: PriorConfig,
        device: torch.device,
        *,
        codes: torch.Tensor,
        labels: torch.Tensor,
        evaluate: Callable[[PixelCNNPrior], float],
        constants: dict[str, float | int],
        digest: str,
        data_digest: str | None = None,
        resume: bool,
        show: bool,
    ) -> None:
        """``codes`` (N, H, W) and ``labels`` (N,) are the training set; ``evaluate`` gives the
        test NLL in bits per code; ``constants`` (baselines, grid counts) go into every metrics
        record; ``digest`` names the VQ-VAE weights the codes came from, ``data_digest`` one's
        own images and labels they encode (None for a named dataset)."""
        self.run_dir, self.settings, self.device = run_dir, settings, device
        self.digest, self.show, self.evaluate, self.constants = digest, show, evaluate, constants
        self.data_digest = data_digest
        self.codes, self.labels = codes.to(device), labels.to(device)
        self.metrics_path = run_path(run_dir, runfiles.PRIOR_METRICS)
        files = self.files = train_state.PRIOR_FILES
        build = functools.partial(PixelCNNPrior, settings)
        require_trainable_size(build, device, "prior", "--channels or --layers")
        torch.manual_seed(settings.seed)
        self.prior = build().to(device, memory_format=torch.channels_last)
        self.precision = resolve_precision(settings.precision, device)
        # Fused: one kernel per tensor, and its step counters live on the device, so a step
        # never reads one back to the host (the unfused CPU path reads each tensor's counter).
        self.optimizer = torch.optim.AdamW(
            self.prior.parameters(),
            lr=settings.lr,
            weight_decay=settings.weight_decay,
            fused=True,
        )
        self.order_generator = torch.Generator().manual_seed(settings.seed)
        self.position = Position()
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.counters = _Counters()
        self.history: list[dict[str, Any]] = []
        context = Context()
        if resume:
            self._restore(context)
        # A new prior starts in a run folder whose earlier prior files were set aside
        # (vqkit.prior_replacement), so nothing of them is appended to or kept. A finished prior
        # resumed (its epochs, or its patience) trains nothing and changes no file.
        if not resume or self.epochs_left > 0:
            save_prior_config(run_dir, settings)
        self.guard = NonFiniteGuard(
            settings.skip_nonfinite, device, context, run_dir, terms=PRIOR_TERMS, files=files
        )
        self.guard.skipped = self.position.skipped_nonfinite
        self.stop = StopRequest()

    def _restore(self, context: Context) -> None:
        """Load the saved state into the live objects, after checking that it fits these
        settings (its step inside an epoch of these codes, no more epochs done than asked)."""
        run_dir, settings, files = self.run_dir, self.settings, self.files
        restored = train_state.restore(
            run_dir, self.prior, self.optimizer, self.order_generator, files=files
        )
        self.position = restored.position
        self.loss_sum = restored.loss_sum.to(self.device).reshape(())
        self.counters = _Counters.from_extra(restored.extra, run_dir)
        epoch_steps = steps_per_epoch(self.codes.shape[0], settings.batch_size, 1)
        train_state.require_step_in_epoch(run_dir, self.position.step, epoch_steps, files)
        done = self.position.epochs_done
        train_state.require_epochs_not_below("prior", run_dir, done, settings.epochs)
        self.history = resumed_history(run_dir, done, context, runfiles.PRIOR_METRICS)

    @property
    def epochs_left(self) -> int:
        """Epochs this call may train: none once the prior finished (its epochs, or patience)."""
        if self.counters.stale >= self.settings.patience:
            return 0
        return self.settings.epochs - self.position.epochs_done

    def train(self) -> list[dict[str, Any]]:
        """Train the remaining epochs; the per-epoch records of the whole run."""
        try:
            with self.stop.installed():
                self._train_epochs()
        except TrainingInterrupted:
            raise
        except KeyboardInterrupt as exc:  # a second Ctrl-C: at once, without the stop's own save
            if not train_state.exists(self.run_dir, self.files):
                raise
            raise stopped_at_once(self.run_dir, self.files) from exc
        return self.history

    def _train_epochs(self) -> None:
        for epoch in range(self.position.epochs_done + 1, self.settings.epochs + 1):
            if self.counters.stale >= self.settings.patience:
                break
            self.run_epoch(epoch)
            if self.stop.requested:
                stop = self.interrupted()
                if epoch == self.settings.epochs or self.counters.stale >= self.settings.patience:
                    # The stop came in the last epoch's evaluation or save: nothing is left.
                    stop.instead("the prior had already finished its training and is saved.")
                raise stop

    def run_epoch(self, epoch: int) -> None:
        """One pass (or its rest, after a resume) in a seeded random order, then evaluate and
        save it."""
        started = time.perf_counter()
        epoch_start_order = self.order_generator.get_state()  # a mid-epoch save replays from it
        count, every = self.codes.shape[0], self.settings.checkpoint_every
        batches = epoch_batches(
            count, self.settings.batch_size, self.order_generator, Context(), self.device
        )
        self.prior.train()
        position = self.position
        done = sum(int(index.numel()) for index in batches[: position.step])
        bar = tqdm(
            total=count,
            initial=done,
            desc=f"prior epoch {epoch}",
            unit="grid",
            disable=not self.show,
            leave=False,
        )
        try:
            for number in range(position.step, len(batches)):
                self.step(batches[number])
                position.step = number + 1
                bar.update(batches[number].numel())
                last = position.step == len(batches)  # the end-of-epoch save covers the last step
                periodic = every is not None and position.global_step % every == 0
                if not last and (periodic or self.stop.requested):
                    self.checkpoint(epoch_start_order)
                    if self.stop.requested:
                        raise self.interrupted()
        finally:  # also when a guard or Ctrl-C stops the epoch: no bar left on the terminal
            bar.close()
        self.finish_epoch(epoch, time.perf_counter() - started)

    def interrupted(self) -> TrainingInterrupted:
        return TrainingInterrupted(self.run_dir, self.files, self.stop.signal_number)

    def step(self, index: torch.Tensor) -> None:
        """One batch of grids (indices into the training set); no update when its loss is not
        finite and the guard allows skipping it."""
        self.position.global_step += 1
        batch = self.codes[index]
        labels = self.labels[index] if self.settings.conditional else None
        with autocast(device=self.device, precision=self.precision):
            loss = prior_loss(self.prior, batch, labels)
        if self.guard.step_is_bad(self.position.global_step, loss):
            return
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.loss_sum += loss.detach().double() * index.numel()
        self.counters.images += index.numel()
        self.position.stepped += 1

    def finish_epoch(self, epoch: int, seconds: float) -> None:
        """Evaluate, then write the metrics line, the best weights and the epoch-boundary state.

        The training figure is the mean NLL over the epoch's applied batches, with dropout
        active, so it can sit above the test NLL early on.
        """
        self.guard.check()
        counters, cells = self.counters, self.settings.grid_size**2
        train_bits = float(self.loss_sum) / max(counters.images, 1) / math.log(2)
        test_bits = self.evaluate(self.prior)
        if not math.isfinite(test_bits):  # every step's loss was finite, the weights not
            raise VqkitError(
                f"The prior's weights became non-finite in epoch {epoch} (test NLL {test_bits} "
                f"bits per code); {WEIGHTS_NOT_SAVED}"
            )
        record: dict[str, Any] = {
            "epoch": epoch,
            "train_bits_per_code": train_bits,
            "test_bits_per_code": test_bits,
            "train_bits_per_image": train_bits * cells,
            "test_bits_per_image": test_bits * cells,
            **self.constants,
            "epoch_seconds": seconds,
        }
        if self.guard.skipped:
            record["skipped_nonfinite_steps"] = self.guard.skipped
        self.history.append(record)
        append_jsonl(self.metrics_path, record)
        if test_bits < counters.best:
            counters.best, counters.stale = test_bits, 0
            save_weights(
                run_path(self.run_dir, runfiles.PRIOR_WEIGHTS),
                self.prior,
                {PRIOR_LEARNED_FROM: self.digest},
            )
        else:
            counters.stale += 1
        counters.images = 0
        counters.finished = (
            counters.stale >= self.settings.patience or epoch >= self.settings.epochs
        )
        self.position = Position(epochs_done=epoch, global_step=self.position.global_step)
        self.loss_sum.zero_()
        self.checkpoint(self.order_generator.get_state())

    def checkpoint(self, order_state: torch.Tensor) -> None:
        """Save the resumable state, once the guard has vouched for it."""
        self.guard.check()
        self.guard.check_weights(self.prior, self.position.global_step)
        self.position.skipped_nonfinite = self.guard.skipped
        train_state.save(
            self.run_dir,
            self.position,
            self.prior,
            self.optimizer,
            order_state,
            self.loss_sum,
            files=self.files,
            extra=self.counters.to_extra(self.settings, self.digest, self.data_digest),
        )
