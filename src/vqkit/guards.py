"""Watchdogs of the training loop: non-finite losses and a polite Ctrl-C.

Both are built so the fast path costs no host synchronisation: on a GPU the non-finite check
only records a flag on the device and is read when the loop syncs anyway (progress refresh,
checkpoint, epoch end); Ctrl-C only sets a Python flag that the loop reads between steps.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

from vqkit import distributed
from vqkit.errors import VqkitError
from vqkit.train_state import VQVAE_FILES, StateFiles

# The loss terms a VQ-VAE step checks; bit i of the per-step flag says term i was not finite.
VQVAE_TERMS = ("reconstruction loss", "quantizer loss")


def term_names(bits: int, terms: tuple[str, ...] = VQVAE_TERMS) -> str:
    return " and its ".join(name for i, name in enumerate(terms) if bits >> i & 1)


class NonFiniteGuard:
    """Spots NaN/inf losses, skipping up to ``allowed`` bad steps before stopping the run.

    ``eager`` guards look at every step (needed to skip one before the optimizer applies it; free
    on the CPU); lazy guards remember the first bad step on the device and report it at
    :meth:`check`, before anything is saved, so a bad state never reaches disk.
    """

    def __init__(
        self,
        allowed: int,
        device: torch.device,
        context: distributed.Context,
        run_dir: Path,
        eager: bool | None = None,
        *,
        terms: tuple[str, ...] = VQVAE_TERMS,
        files: StateFiles = VQVAE_FILES,
    ) -> None:
        self.allowed = allowed
        self.terms, self.files = terms, files
        self.eager = (allowed > 0 or device.type == "cpu") if eager is None else eager
        self.context = context
        self.run_dir = run_dir
        self.skipped = 0
        self._first_step = torch.full((), -1, dtype=torch.long, device=device)
        self._first_terms = torch.zeros((), dtype=torch.long, device=device)

    @staticmethod
    def _bits(losses: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """() int64: bit i set when the i-th loss term is NaN or infinite."""
        return sum((~torch.isfinite(loss.detach())).long() << i for i, loss in enumerate(losses))

    def _any_rank(self, bits: torch.Tensor) -> int:
        """The OR over all ranks of a () bit mask, as an int. The reduction is a MAX, which
        ORs 0/1 flags but not masks (bits 1 and 2 would give 2), so each term goes as a flag."""
        if not self.context.enabled:
            return int(bits)
        positions = torch.arange(len(self.terms), device=bits.device)
        flags = distributed.any_true(self.context, (bits >> positions) & 1)
        return int((flags << positions).sum())

    def step_is_bad(self, step: int, *losses: torch.Tensor) -> bool:
        """Look at one step's loss terms (in ``terms`` order); True means skip this step (eager
        guards only)."""
        bits = self._bits(losses)
        if not self.eager:  # remember the first bad step without waiting for the device
            fresh = (self._first_step < 0) & (bits > 0)
            self._first_step = torch.where(fresh, step, self._first_step)
            self._first_terms = torch.where(fresh, bits, self._first_terms)
            return False
        bits = self._any_rank(bits)
        if not bits:
            return False
        self.skipped += 1
        if self.skipped > self.allowed:
            raise self._error(step, bits)
        return True

    def check(self) -> None:
        """Raise if a lazily recorded step had a non-finite loss (syncs with the device)."""
        if self.eager:
            return
        first = self._first_step.reshape(1).clone()
        if self.context.enabled:  # any rank's bad step poisoned everyone's averaged gradients
            first = torch.where(first < 0, torch.iinfo(torch.long).max, first)
            torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MIN)
            bits = self._any_rank(self._first_terms)
            if int(first) == torch.iinfo(torch.long).max:
                return
        else:
            bits = self._first_terms
            if int(first) < 0:
                return
        raise self._error(int(first), int(bits))

    def _error(self, step: int, bits: int) -> VqkitError:
        already = (
            f" after {self.allowed} such steps had been skipped (--skip-nonfinite {self.allowed})"
            if self.allowed
            else ""
        )
        if (self.run_dir / self.files.tensors).exists():
            advice = (
                f"the last good state in '{self.run_dir}' is kept, so start again with a lower "
                f"--lr or continue with {self.files.resume_command(self.run_dir)} "
                "--skip-nonfinite N to skip a few bad steps"
            )
        else:
            advice = "nothing was saved, so start again with a lower --lr or --skip-nonfinite N"
        terms = term_names(bits, self.terms)
        verb = "were" if " and " in terms else "was"
        return VqkitError(
            f"Training stopped at step {step} because its {terms} {verb} not finite "
            f"(NaN or infinity){already}; {advice}."
        )


class StopRequest:
    """Turns the first Ctrl-C into a request the loop honours between steps.

    A second Ctrl-C raises KeyboardInterrupt at once. Only the main thread can own signal
    handlers, and a multi-process job must stop every rank at the same step, so elsewhere the
    request stays off and Ctrl-C behaves as usual (the last periodic checkpoint is kept).
    """

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    @contextlib.contextmanager
    def installed(self, enabled: bool = True) -> Iterator[StopRequest]:
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGINT, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)
