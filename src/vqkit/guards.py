"""Watchdogs of the training loop: non-finite losses and a polite Ctrl-C or SIGTERM.

Both are built so the fast path costs no host synchronisation: on a GPU the non-finite check
only records a flag on the device and is read when the loop syncs anyway (progress refresh,
checkpoint, epoch end); a stop signal only sets a Python flag that the loop reads between steps
(several processes compare their flags every few steps).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

from vqkit import distributed
from vqkit.errors import NonFiniteLoss, VqkitError
from vqkit.train_state import VQVAE_FILES, StateFiles

# How often (in steps) the processes of a multi-process job ask each other whether one of them
# was signalled to stop: each poll is a small collective and a host synchronisation.
STOP_POLL_STEPS = 20
# The loss terms a VQ-VAE step checks; bit i of the per-step flag says term i was not finite.
VQVAE_TERMS = ("reconstruction loss", "quantizer loss")


# What a run stopped for non-finite weights says of them: every save vouches for its weights.
WEIGHTS_NOT_SAVED = (
    "they were not saved (the last saved state holds finite weights), so lower the learning "
    "rate (--lr) and train again."
)


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

    def check_weights(self, module: torch.nn.Module, step: int) -> None:
        """Raise if a weight or buffer went non-finite although every loss stayed finite (one
        no loss reads can: a prior's embedding of a code the batches never held), before a
        save would keep it (one host synchronisation per save)."""
        tensors = [t for t in module.state_dict().values() if t.is_floating_point()]
        if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
            raise VqkitError(f"The weights became non-finite by step {step}; {WEIGHTS_NOT_SAVED}")

    def _error(self, step: int, bits: int) -> VqkitError:
        already = (
            f" after {self.allowed} such steps had been skipped (--skip-nonfinite {self.allowed})"
            if self.allowed
            else ""
        )
        if (self.run_dir / self.files.tensors).exists():
            advice = (
                f"the last good state in '{self.run_dir}' is kept, so start again with a lower "
                f"--lr or continue with {self.files.resume_command(self.run_dir, self.context)} "
                "--skip-nonfinite N to skip a few bad steps"
            )
        else:
            advice = "nothing was saved, so start again with a lower --lr or --skip-nonfinite N"
        terms = term_names(bits, self.terms)
        verb = "were" if " and " in terms else "was"
        cause = (
            f"Training stopped at step {step} because its {terms} {verb} not finite "
            f"(NaN or infinity){already}"
        )
        return NonFiniteLoss(f"{cause}; {advice}.", cause)


class StopRequest:
    """Turns the first Ctrl-C (SIGINT) or SIGTERM into a request the loop honours between steps.

    SIGTERM is what a batch scheduler, ``docker stop`` or ``kill`` sends before killing, and what
    torchrun passes on to its processes when it is stopped (it sends them the signal it got, and
    kills them 30 s later). In a single process a Ctrl-C after the first signal raises
    KeyboardInterrupt at once (the user does not want to wait for the save); a repeated SIGTERM,
    and any repeat under torchrun, where a scheduler may signal every process and torchrun pass
    its own signal on too, leaves the stop to finish its save. Only the main thread can own
    signal handlers, so elsewhere the request stays off and the signals behave as usual.

    A multi-process job must stop every rank after the same step, and the signal reaches each
    process at its own moment, so there the ranks act on :meth:`agreed`, a collective every rank
    calls at the same steps.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(
        self, context: distributed.Context | None = None, device: torch.device | str = "cpu"
    ) -> None:
        self.context = context or distributed.Context()
        self.device = torch.device(device)  # NCCL's collectives need tensors on the GPU
        self.requested = False  # a signal reached this process
        self.signal_number = int(signal.SIGINT)  # the first one that did
        self._agreed = False
        self._held: dict[int, object] = {}  # the handlers release_signals() puts back

    def _handle(self, signum, frame) -> None:
        if self.requested:
            if signum == signal.SIGINT and not self.context.enabled:
                raise KeyboardInterrupt
            return
        self.requested = True
        self.signal_number = int(signum)

    def agreed(self, step: int | None = None) -> bool:
        """Whether to stop now. With several processes it is a collective: True once any rank
        was asked to stop, polled every ``STOP_POLL_STEPS`` steps, and at every call without a
        step (the ends of epochs); a single process answers at once, without a collective."""
        if not self.context.enabled:
            return self.requested
        if not self._agreed and (step is None or step % STOP_POLL_STEPS == 0):
            flag = torch.tensor([int(self.requested), self.signal_number], device=self.device)
            distributed.all_max(self.context, flag)  # a signalled rank's 1; SIGTERM over SIGINT
            self._agreed = bool(flag[0])
            self.signal_number = int(flag[1]) if self._agreed else self.signal_number
        return self._agreed

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {number: signal.signal(number, self._handle) for number in self.SIGNALS}
        peers_lost = False
        try:
            yield self
        except BaseException as exc:
            peers_lost = self.context.enabled and distributed.is_lost_process(exc)
            raise
        finally:
            if self.requested and self.context.enabled and not peers_lost:
                # A job's stop is under way: every process still releases the run's lock and
                # leaves the process group (a collective), and a repeated signal there (torchrun
                # passes its own on; a scheduler signals every process) would end rank 0 in a
                # bare KeyboardInterrupt, without the sentence that says how to resume. Repeats
                # stay requests until the caller's release_signals().
                self._held = previous
            for number, handler in previous.items():
                # When another process of the job is gone, torchrun sends this one SIGTERM a
                # moment later; with the default handler back it died before it said why it
                # stopped. The process is about to exit (torchrun kills it 30 s after that
                # signal), so SIGTERM stays a request no one acts on.
                if not (self._held or (peers_lost and number == signal.SIGTERM)):
                    signal.signal(number, handler)

    def release_signals(self) -> None:
        """Put back the handlers :meth:`installed` kept in place for a job's stop."""
        held, self._held = self._held, {}
        for number, handler in held.items():
            signal.signal(number, handler)
