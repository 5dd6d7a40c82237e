"""Speed settings of a training run: mixed precision, memory layout, compilation, LR schedule.

Each lever is a small function so the training loop only wraps its forward pass in
:func:`autocast` and steps the scheduler from :func:`make_scheduler`. Quantizer distances and
the argmin always stay in fp32 (``nearest_codes`` casts its inputs), so bf16 only touches the
convolutions and their elementwise neighbours.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vqkit.config import PRECISIONS, TrainConfig
from vqkit.errors import VqkitError

if TYPE_CHECKING:
    from vqkit.model import VQVAE

# platform.machine() names of x86-64 CPUs (Linux and macOS, Windows).
X86_MACHINES = ("x86_64", "amd64")


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 convolutions are native on ``device`` (AVX512-BF16/AMX CPUs, Ampere+ GPUs)."""
    if device.type == "cuda":
        # Without including_emulation=False, pre-Ampere GPUs (V100, T4) count as supported: bf16
        # tensors work there, but slowly.
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    if platform.machine().lower() not in X86_MACHINES:
        return True  # on Arm, PyTorch's check asks for the bf16 instructions themselves
    # On x86 PyTorch's check asks only for AVX-512 (BW, VL, DQ), where oneDNN emulates bf16
    # (Skylake-SP, Cascade Lake): native bf16 needs AVX512-BF16 or AMX.
    return any(
        bool(getattr(torch.cpu, check, lambda: False)())
        for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' becomes bf16 where the hardware runs it natively, else fp32."""
    if precision not in PRECISIONS:
        raise VqkitError(f"Unknown precision '{precision}'; use one of: {', '.join(PRECISIONS)}.")
    if precision == "auto":
        return "bf16" if bf16_is_fast(device) else "fp32"
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context the forward pass and loss run in: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def require_compile_toolchain(settings: TrainConfig, device: torch.device) -> None:
    """``torch.compile`` on the CPU writes C++ and builds it with ``$CXX`` (default g++): say so
    in one sentence before anything runs, rather than with a compiler error mid-step."""
    if not settings.compile or device.type != "cpu":
        return
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise VqkitError(
            f"--compile on the CPU needs a C++ compiler and '{compiler}' was not found; "
            "install one (apt-get install -y g++) or train without --compile."
        )


def prepare_model(model: VQVAE, settings: TrainConfig) -> Callable[..., Any]:
    """Move ``model`` to channels-last if asked; return the callable to train with.

    With ``compile`` the returned callable is a :class:`CompiledStep`, while ``model`` itself
    keeps its plain parameter names so its weights save exactly as uncompiled ones. Shapes are
    compiled static: a run has two batch shapes (full and last), and a static graph for each
    is what CUDA-graph replay (``reduce-overhead``) records anyway.
    """
    if settings.channels_last or compiles_channels_last(model, settings):
        model.to(memory_format=torch.channels_last)
    return CompiledStep(model, settings.compile_mode) if settings.compile else model


def compiles_channels_last(model: nn.Module, settings: TrainConfig) -> bool:
    """Compiled training on CUDA runs channels-last whatever ``channels_last`` says.

    Inductor converts the convolutions to channels-last on CUDA by itself, and for a
    contiguous model (torch 2.11) it then mispredicts the layout cuDNN's transposed-convolution
    backward returns and stops with a stride assertion (pytorch/pytorch#184026); a model that is
    channels-last already compiles and trains (bench/gpu.sh, BENCHMARKS.md). Only the layout
    changes, not what is learned.
    """
    return settings.compile and next(model.parameters()).device.type == "cuda"


class CompiledStep(nn.Module):
    """``model`` compiled, as the training loop calls it (a module, so DDP can wrap it).

    Before its first training call it runs the quantizer's one-time set-up (the k-means init)
    eagerly: traced, k-means's host reads split the forward into many graphs and compile it
    twice (10 graphs instead of 1 for the ``fast`` preset). With ``reduce-overhead`` every call
    starts a new CUDA-graph step, so replay may reuse the memory of the last step's outputs,
    which the loop no longer reads.
    """

    def __init__(self, model: VQVAE, mode: str) -> None:
        super().__init__()
        self.compiled = torch.compile(model, mode=mode, dynamic=False)
        self.model = [model]  # in a list: not registered twice as a submodule
        self.mark_steps = mode == "reduce-overhead"
        self.initialized = False

    def forward(self, images: torch.Tensor) -> Any:
        model = self.model[0]
        if not self.initialized and model.training:
            model.initialize(images)
            # Still pending after a batch with a non-finite output: the next step tries again.
            self.initialized = not model.quantizer.needs_initialization()
        if self.mark_steps:
            torch.compiler.cudagraph_mark_step_begin()
        return self.compiled(images)


def make_optimizer(model: nn.Module, settings: TrainConfig) -> torch.optim.Optimizer:
    """Adam at ``settings.lr`` with its fused kernel: one kernel per parameter tensor instead of
    about ten, 0.25 against 0.57 ms per step for the efficient model on a 2-core CPU."""
    return torch.optim.Adam(model.parameters(), lr=settings.lr, fused=True)


def schedule_length(scheduler: torch.optim.lr_scheduler.LRScheduler | None) -> int | None:
    """How many steps a schedule from :func:`make_scheduler` was fitted to (None: constant)."""
    if scheduler is None:
        return None
    if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR):
        return scheduler.total_steps
    warmup, cosine = scheduler._schedulers  # SequentialLR keeps no public view of its parts
    return warmup.total_iters + cosine.T_max


def make_scheduler(
    optimizer: torch.optim.Optimizer, settings: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-step learning-rate schedule (None for a constant rate).

    ``onecycle`` warms up to ``lr`` over ``warmup_fraction`` of the steps then anneals to near
    zero; ``cosine`` warms up linearly the same way then follows a half cosine to zero.
    Both let a large batch use a high peak rate without diverging early.
    """
    if settings.lr_schedule == "constant":
        return None
    if settings.lr_schedule == "onecycle":
        # Each of its two phases needs at least two steps; only tiny test runs are stretched.
        shortest = min(settings.warmup_fraction, 1.0 - settings.warmup_fraction)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=settings.lr,
            total_steps=max(total_steps, math.ceil(2.0 / shortest) + 1),
            pct_start=settings.warmup_fraction,
        )
    warmup = max(1, int(settings.warmup_fraction * total_steps))
    return torch.optim.lr_scheduler.SequentialLR(
        optimizer,
        [
            torch.optim.lr_scheduler.LinearLR(optimizer, 1.0 / warmup, 1.0, total_iters=warmup),
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, total_steps - warmup)),
        ],
        milestones=[warmup],
    )
