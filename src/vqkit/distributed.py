"""Multi-process training: one process per device, started by ``torchrun``.

``torchrun`` sets RANK, WORLD_SIZE and LOCAL_RANK (plus the rendezvous address); a training run
that sees WORLD_SIZE > 1 joins the process group (gloo on CPU, NCCL on CUDA), trains its shard
of every batch, and lets rank 0 alone write files and show progress.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vqkit.errors import VqkitError

if TYPE_CHECKING:  # imported where used: the command line asks prints_refusals before PyTorch
    import torch

# Environment variables torchrun sets for every worker; all must be present to join a group.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Context:
    """Where this process stands in a (possibly one-process) training job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this code started the process group, so it also ends it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and shows progress."""
        return self.rank == 0


def _env_int(name: str) -> int:
    text = os.environ.get(name, "")
    try:
        return int(text)
    except ValueError:
        message = f"The environment variable {name}={text!r} is not a whole number."
        raise VqkitError(message) from None


def setup(device: torch.device) -> Context:
    """Join the process group torchrun describes; a single process gets the trivial context."""
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():  # the caller set the group up itself
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return Context(dist.get_rank(), dist.get_world_size(), local, owns_group=False)
    if "WORLD_SIZE" not in os.environ or _env_int("WORLD_SIZE") <= 1:
        return Context()
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise VqkitError(
            f"WORLD_SIZE is set but {', '.join(missing)} is not; start multi-process training "
            "with torchrun."
        )
    if not dist.is_available():
        raise VqkitError("This PyTorch build has no torch.distributed; train with one process.")
    backend = "nccl" if device.type == "cuda" else "gloo"
    local_rank = _env_int("LOCAL_RANK")
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend)
    global _joined
    _joined = True
    return Context(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=True)


# Whether this process has joined a torchrun job's process group (it stays True once it has).
_joined = False


def prints_refusals(refusal: BaseException | None = None) -> bool:
    """Whether this process prints the sentence of ``refusal``. Until a torchrun job's
    processes join their group, each reads the same command line and files and refuses alike,
    so only the first process on each machine (LOCAL_RANK 0) says it; after that each speaks
    for itself, except for a refusal raised inside :func:`refused_alike`."""
    try:
        several = int(os.environ.get("WORLD_SIZE", "1")) > 1
        later = int(os.environ.get("LOCAL_RANK", "0")) != 0
    except ValueError:  # the refusal may be about that very variable: say it
        return True
    alike = getattr(refusal, ALIKE_MARK, False)
    return (_joined and not alike) or not (several and later)


# The attribute refused_alike sets on the refusals it lets through.
ALIKE_MARK = "vqkit_refused_alike"


@contextlib.contextmanager
def refused_alike() -> Iterator[None]:
    """Marks the refusals raised inside as ones every process on a machine meets alike, after
    joining: checks of the settings, the image count and the run folder's files, and decisions
    rank 0 broadcasts. Their sentence is printed once per machine, not once per process. (Work
    whose outcome can differ between the processes of one machine, such as reading or
    downloading the data or a GPU's free memory, stays outside: a process that failed alone and
    said nothing would leave no sentence at all.)"""
    try:
        yield
    except VqkitError as exc:
        setattr(exc, ALIKE_MARK, True)
        raise


# The commands that train with several processes; every other one runs in a single process.
MULTI_PROCESS_COMMANDS = ("train",)
# What gloo's error says when the process at the other end of a collective is gone.
LOST_PROCESS_SIGNS = ("Connection closed by peer", "Connection reset by peer")


def require_one_process(command: str) -> None:
    """Refuse a command other than train started by torchrun with several processes: every
    process would do the whole job (and race the others for the run folder's lock)."""
    if command in MULTI_PROCESS_COMMANDS or "WORLD_SIZE" not in os.environ:
        return
    if _env_int("WORLD_SIZE") > 1:
        raise VqkitError(
            f"vqkit {command} works in one process; start it without torchrun (only vqkit train "
            "trains with several)."
        )


def is_lost_process(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective's failure because another process of the job is gone."""
    dist = sys.modules.get("torch.distributed")
    if dist is None:  # no collective ran in a process without PyTorch (`vqkit runs`)
        return False

    distributed_error = getattr(dist, "DistError", ())  # NCCL's and the store's errors
    return isinstance(exc, distributed_error) or any(s in str(exc) for s in LOST_PROCESS_SIGNS)


def lost_process_message(exc: BaseException, resume: str | None = None) -> str | None:
    """One sentence for a collective that failed because another process of the job stopped
    or lost its connection, else None. ``resume`` is the command line that continues the run
    from its saved state; None when the run has saved none (or its folder is not known here)."""
    if not is_lost_process(exc):
        return None
    lost = (
        "Another process of this torchrun job stopped or lost its connection (torchrun's report "
        "names it)"
    )
    if resume is None:
        return f"{lost}; whatever the run had saved is kept: run the same torchrun command again."
    return f"{lost}; the run's last saved state is kept, and {resume} continues it."


def under_torchrun(command: str, context: Context) -> str:
    """The command line ``command`` (``vqkit train --resume RUN``) as this torchrun job would
    run it: with as many processes, since a state saved mid-epoch resumes only with those."""
    if not context.enabled:
        return command
    world = str(context.world_size)
    module = command.removeprefix("vqkit ")
    if os.environ.get("LOCAL_WORLD_SIZE", world) == world:  # one machine
        return f"torchrun --nproc-per-node {world} -m vqkit {module}"
    return f"the same torchrun command on every machine with -m vqkit {module}"


def device_for(context: Context, device: torch.device) -> torch.device:
    """Each process of a multi-GPU job uses the GPU of its local rank."""
    import torch

    if context.enabled and device.type == "cuda":
        return torch.device("cuda", context.local_rank)
    return device


def teardown(context: Context, finished: bool = False, peers_lost: bool = False) -> None:
    """Leave the process group this code started.

    After a finished run every rank first waits for the others, and the group's objects are
    freed while the interpreter is still whole. Without both, a rank that was done first
    aborted at its exit ("terminate called without an active exception") in about one two-rank
    torchrun run in ten on a loaded 2-core machine, and torchrun reported a finished run as
    failed; with both, none did in 40 such runs.

    With ``peers_lost`` (a collective failed because another process is gone) the group is not
    left: when the process gone was rank 0, leaving it never returned (seen in a trace of a
    two-process gloo job), and torchrun's SIGTERM ended this process before it said why it
    stopped. The process is about to exit anyway.
    """
    import torch.distributed as dist

    if peers_lost:
        return
    if context.owns_group and dist.is_initialized():
        if finished:
            try:
                dist.barrier()
            except RuntimeError:  # another rank failed after the last step and left; it says why
                pass
            except KeyboardInterrupt:  # the run is complete and saved: there is nothing to stop
                pass
        dist.destroy_process_group()
        gc.collect()  # DDP and the group's threads, if a reference cycle still holds them


def barrier(context: Context) -> None:
    import torch.distributed as dist

    if context.enabled:
        dist.barrier()


def all_max(context: Context, value: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over all ranks (in place, returned)."""
    import torch.distributed as dist

    if context.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value


def any_true(context: Context, flag: torch.Tensor) -> torch.Tensor:
    """Element-wise OR of an integer tensor of 0/1 flags over all ranks (in place, returned)."""
    return all_max(context, flag)


def all_sum(context: Context, value: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if context.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def broadcast_text(context: Context, text: str, device: torch.device) -> str:
    """Rank 0's ``text`` on every rank (as UTF-8 bytes in a tensor: nothing is pickled)."""
    import torch
    import torch.distributed as dist

    if not context.enabled:
        return text
    data = torch.tensor(list(text.encode()), dtype=torch.uint8, device=device)
    length = torch.tensor([data.numel()], dtype=torch.long, device=device)
    dist.broadcast(length, src=0)
    buffer = torch.zeros(int(length), dtype=torch.uint8, device=device)
    if context.is_main:
        buffer.copy_(data)
    dist.broadcast(buffer, src=0)
    return bytes(buffer.cpu().tolist()).decode()


def same_on_all_ranks(context: Context, tensors: list[torch.Tensor]) -> bool:
    """Whether every rank holds bitwise-identical ``tensors`` (a final consistency check)."""
    import torch
    import torch.distributed as dist

    if not context.enabled:
        return True
    flat = torch.cat([t.detach().reshape(-1).float() for t in tensors])
    lowest, highest = flat.clone(), flat.clone()
    dist.all_reduce(lowest, op=dist.ReduceOp.MIN)
    dist.all_reduce(highest, op=dist.ReduceOp.MAX)
    return bool(torch.equal(lowest, highest))
