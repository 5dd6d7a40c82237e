"""Which device a command runs on: a user's device name checked into a torch.device."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
from torch import nn

from vqkit.errors import SIZE_OVERFLOW, InvalidValue, VqkitError

Module = TypeVar("Module", bound=nn.Module)


@contextlib.contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode inside the block and back in its own mode after it, also when
    the block raises (an interrupted sample in a notebook once left dropout off for training)."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@contextlib.contextmanager
def channels_last_on_cpu(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` with channels-last (NHWC) weights inside the block when they are on the CPU,
    and in their own layout again after it, also when the block raises.

    oneDNN's CPU convolutions run vqkit's encoders about 1.6-2x faster on channels-last weights
    than on the default layout (10,000 MNIST images on 2 cores: 0.44 s against 0.71 s for the
    efficient model, 1.86 s against 2.97 s for the default one), with the same codes; a model
    trained with --channels-last is already so. Weights already channels-last, on a GPU, or in
    any layout but the default are left as they are.
    """
    tensors = [t for t in itertools.chain(module.parameters(), module.buffers()) if t.dim() == 4]
    convert = (
        bool(tensors)
        and all(t.device.type == "cpu" and t.is_contiguous() for t in tensors)
        and not all(t.is_contiguous(memory_format=torch.channels_last) for t in tensors)
    )
    if not convert:
        yield module
        return
    module.to(memory_format=torch.channels_last)
    try:
        yield module
    finally:
        module.to(memory_format=torch.contiguous_format)


# Bytes a trained parameter holds at least: fp32 weight, its gradient and Adam's two moments.
TRAINING_BYTES_PER_PARAMETER = 16


def memory_bytes(device: torch.device) -> int | None:
    """The device's whole memory (the machine's RAM for the CPU); None when unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        return None


def require_trainable_size(
    build: Callable[[], nn.Module], device: torch.device, what: str, flags: str
) -> None:
    """Refuse, before anything is allocated, a model whose weights, gradients and Adam moments
    alone exceed the device's memory: on the CPU the kernel would kill the process without a
    word. ``build`` makes the model; it runs on the meta device, which allocates nothing (a
    quantizer of one's own that reads a tensor's value while it is built cannot run there: then
    nothing is checked)."""
    try:
        with torch.device("meta"):
            model = build()
    except Exception as exc:  # any other failure only costs the check, never the training
        if SIZE_OVERFLOW in str(exc):  # a tensor of more than 2**63 bytes, even without data
            raise VqkitError(
                f"The {what} would hold tensors larger than any memory (their sizes overflow "
                f"64-bit counts); choose a smaller {flags}."
            ) from None
        return
    count = sum(t.numel() for t in itertools.chain(model.parameters(), model.buffers()))
    need, have = count * TRAINING_BYTES_PER_PARAMETER, memory_bytes(device)
    if have is not None and need > have:
        raise VqkitError(
            f"The {what} would have {count:,} parameters, and training them needs at least "
            f"{need / 2**30:,.1f} GiB ({TRAINING_BYTES_PER_PARAMETER} bytes each), more than the "
            f"{have / 2**30:,.1f} GiB of this {device.type.upper()}'s memory; choose a smaller "
            f"{flags}."
        )


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA when present, else the CPU; asking for missing CUDA is an error."""
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):
        raise InvalidValue(
            f"A device is named by a string (auto, cpu, cuda or cuda:N), not {name!r}."
        )
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise VqkitError("CUDA was requested (--device cuda) but no CUDA GPU is available.")
    if name != "cpu" and not name.startswith("cuda"):
        raise InvalidValue(f"Unknown device '{name}'; use auto, cpu or cuda.")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InvalidValue(f"Unknown device '{name}'; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise InvalidValue(
                f"There is no GPU {device.index} (--device {name}); this machine has {count}, "
                f"numbered 0 to {count - 1}."
            )
    return device


@contextlib.contextmanager
def callers_random_state_kept(device: torch.device) -> Iterator[None]:
    """Work that seeds PyTorch's global generators (a training run seeds them for its model and
    draws) with their state put back afterwards, the CPU's and on CUDA ``device``'s: a script
    calling vqkit in a loop then draws its own numbers, not ones following vqkit's seed. (Other
    GPUs' generators stay reseeded, as torch.manual_seed leaves them: forking them all would
    open a context on every GPU from every torchrun process.)"""
    cuda = []
    if device.type == "cuda":
        cuda = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda):
        yield


def built_for_saved_weights(build: Callable[[], Module]) -> Module:
    """``build()``, a module whose weights are read from a file next, made without moving the
    caller's random numbers: its layers draw initial weights from the global CPU generator that
    the saved ones then replace, and a notebook loading a run between two draws of its own got
    other numbers from the second one."""
    with callers_random_state_kept(torch.device("cpu")):
        return build()
